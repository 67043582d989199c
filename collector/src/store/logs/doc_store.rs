//! A guard against the one kind of damage in a partition's document store
//! that costs far more than the records it hits.
//!
//! Tantivy's document store is a run of blocks, each its uncompressed length
//! (four bytes) followed by a zstd frame. To read a record, tantivy allocates
//! and zero-fills a buffer of that length before it decompresses — and again
//! for every record of the block, as failures are not cached. A damaged
//! length (up to 4 GiB) turns each record read into seconds of work and
//! gigabytes of memory, so one flipped byte could time out every search
//! touching the block.
//!
//! On open, [`untrusted_blocks`] checks every block's length against the
//! content size its zstd frame records, reading only frame headers. A
//! partition with a block that does not check out is opened through
//! [`GuardedDirectory`], which reads those lengths as zero: reading such a
//! block then fails at once and costs only its own records.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, OwnedBytes, WatchCallback,
    WatchHandle, WritePtr,
};
use tantivy::{HasLen, Searcher};

/// The zstd frame magic number as it appears on disk (little endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Bytes before each block's zstd frame: its uncompressed length.
const LENGTH_BYTES: usize = 4;

/// For each segment's store file (named relative to the partition) whose
/// blocks do not all check out, the offsets of the untrusted lengths.
pub type UntrustedBlocks = HashMap<PathBuf, Vec<usize>>;

/// Checks the blocks of every segment's document store in `searcher`,
/// reading the files through `directory`. A store tantivy cannot open at
/// all is left out: every read from it fails at once anyway, and the
/// queries that meet it report it.
pub fn untrusted_blocks(searcher: &Searcher, directory: &MmapDirectory) -> UntrustedBlocks {
    let mut untrusted = UntrustedBlocks::new();
    for segment in searcher.segment_readers() {
        let Ok(store) = segment.get_store_reader(0) else {
            continue;
        };
        let blocks_end = store.space_usage().data_usage().get_bytes() as usize;
        let path = PathBuf::from(format!("{}.store", segment.segment_id().uuid_string()));
        let Ok(file) = directory.get_file_handle(&path) else {
            continue;
        };
        let Ok(blocks) = file.read_bytes(0..blocks_end.min(file.len())) else {
            continue;
        };
        let offsets = untrusted_lengths(&blocks);
        // SAFETY: `blocks` is a region of the MmapDirectory's read-only
        // mapping of the store file. Queries fault in only what they read.
        unsafe { crate::memory::drop_file_pages(&blocks) };
        if !offsets.is_empty() {
            untrusted.insert(path, offsets);
        }
    }
    untrusted
}

/// Offsets of the lengths in `blocks` (a store's block region) that cannot
/// be trusted: the start of each run of blocks that do not check out, and
/// every frame start inside such a run.
fn untrusted_lengths(blocks: &[u8]) -> Vec<usize> {
    let mut untrusted = Vec::new();
    let mut at = 0;
    while at < blocks.len() {
        if let Some(len) = block_len(blocks, at) {
            at += len;
            continue;
        }
        untrusted.push(at);
        // Resynchronise at the next block that checks out; lengths in front
        // of frames between here and there are untrusted too.
        at = loop {
            let Some(next) = next_frame_start(blocks, at + 1) else {
                break blocks.len();
            };
            if block_len(blocks, next).is_some() {
                break next;
            }
            untrusted.push(next);
            at = next;
        };
    }
    untrusted
}

/// The whole length of the block at `at` (length prefix and frame) if its
/// length matches its frame's content size and the frame is complete.
fn block_len(blocks: &[u8], at: usize) -> Option<usize> {
    let prefix = blocks.get(at..at + LENGTH_BYTES)?;
    let length = u32::from_le_bytes(prefix.try_into().ok()?);
    let frame = &blocks[at + LENGTH_BYTES..];
    let content = zstd::zstd_safe::get_frame_content_size(frame).ok()??;
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(frame).ok()?;
    (content == u64::from(length) && frame_len <= frame.len()).then_some(LENGTH_BYTES + frame_len)
}

/// Where the next block would start whose frame begins at or after
/// `from + LENGTH_BYTES`.
fn next_frame_start(blocks: &[u8], from: usize) -> Option<usize> {
    let search = blocks.get(from + LENGTH_BYTES..)?;
    let found = search
        .windows(ZSTD_MAGIC.len())
        .position(|w| w == ZSTD_MAGIC)?;
    Some(from + found)
}

/// A partition's directory that reads the untrusted block lengths of its
/// store files as zero and is otherwise the directory itself.
#[derive(Clone, Debug)]
pub struct GuardedDirectory {
    inner: MmapDirectory,
    untrusted: Arc<UntrustedBlocks>,
}

impl GuardedDirectory {
    pub fn new(inner: MmapDirectory, untrusted: UntrustedBlocks) -> GuardedDirectory {
        GuardedDirectory {
            inner,
            untrusted: Arc::new(untrusted),
        }
    }
}

impl Directory for GuardedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        let file = self.inner.get_file_handle(path)?;
        Ok(match self.untrusted.get(path) {
            Some(offsets) => Arc::new(ZeroedLengths {
                file,
                offsets: offsets.clone(),
            }),
            None => file,
        })
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.inner.open_write(path)
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.atomic_write(path, data)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

/// A store file whose untrusted block lengths read as zero.
#[derive(Debug)]
struct ZeroedLengths {
    file: Arc<dyn FileHandle>,
    offsets: Vec<usize>,
}

impl HasLen for ZeroedLengths {
    fn len(&self) -> usize {
        self.file.len()
    }
}

impl FileHandle for ZeroedLengths {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        let bytes = self.file.read_bytes(range.clone())?;
        let overlapping =
            |offset: &&usize| **offset < range.end && **offset + LENGTH_BYTES > range.start;
        if !self.offsets.iter().any(|o| overlapping(&o)) {
            return Ok(bytes);
        }
        let mut patched = bytes.as_slice().to_vec();
        for &offset in self.offsets.iter().filter(overlapping) {
            let from = offset.max(range.start) - range.start;
            let to = (offset + LENGTH_BYTES).min(range.end) - range.start;
            patched[from..to].fill(0);
        }
        Ok(OwnedBytes::new(patched))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three blocks as tantivy writes them, and their offsets.
    fn store_blocks() -> (Vec<u8>, Vec<usize>) {
        let mut blocks = Vec::new();
        let mut starts = Vec::new();
        for text in ["first block ", "second block, longer ", "third"] {
            let uncompressed = text.repeat(200);
            starts.push(blocks.len());
            blocks.extend_from_slice(&(uncompressed.len() as u32).to_le_bytes());
            blocks.extend(zstd::bulk::compress(uncompressed.as_bytes(), 3).unwrap());
        }
        (blocks, starts)
    }

    #[test]
    fn intact_blocks_are_all_trusted() {
        let (blocks, _) = store_blocks();
        assert!(untrusted_lengths(&blocks).is_empty());
        assert!(untrusted_lengths(&[]).is_empty());
    }

    #[test]
    fn a_flipped_length_is_untrusted_and_the_blocks_after_it_are_not() {
        let (mut blocks, starts) = store_blocks();
        blocks[starts[1] + 2] ^= 0xff;
        assert_eq!(untrusted_lengths(&blocks), vec![starts[1]]);
    }

    #[test]
    fn a_damaged_frame_is_skipped_up_to_the_next_block_that_checks_out() {
        let (mut blocks, starts) = store_blocks();
        // The magic number and the frame header of the first block.
        blocks[4..12].iter_mut().for_each(|b| *b ^= 0xff);
        assert_eq!(untrusted_lengths(&blocks), vec![starts[0]]);
        // A damaged tail is one untrusted run to the end.
        let (mut blocks, starts) = store_blocks();
        let len = blocks.len();
        blocks[starts[2] + 4..len]
            .iter_mut()
            .for_each(|b| *b ^= 0xff);
        assert_eq!(untrusted_lengths(&blocks), vec![starts[2]]);
    }

    #[test]
    fn untrusted_lengths_read_as_zero_in_any_range_that_covers_them() {
        let (blocks, starts) = store_blocks();
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("s.store"), &blocks).unwrap();
        let mmap = MmapDirectory::open(directory.path()).unwrap();
        let guarded = GuardedDirectory::new(
            mmap,
            UntrustedBlocks::from([(PathBuf::from("s.store"), vec![starts[1]])]),
        );
        let file = guarded.get_file_handle(Path::new("s.store")).unwrap();
        let whole = file.read_bytes(0..blocks.len()).unwrap();
        assert_eq!(&whole[starts[1]..starts[1] + 4], &[0; 4]);
        assert_eq!(&whole[..starts[1]], &blocks[..starts[1]]);
        assert_eq!(&whole[starts[1] + 4..], &blocks[starts[1] + 4..]);
        let straddling = file.read_bytes(starts[1] + 2..starts[1] + 6).unwrap();
        assert_eq!(
            straddling.as_slice(),
            &[0, 0, blocks[starts[1] + 4], blocks[starts[1] + 5]]
        );
        let untouched = file.read_bytes(0..starts[1]).unwrap();
        assert_eq!(untouched.as_slice(), &blocks[..starts[1]]);
    }
}
