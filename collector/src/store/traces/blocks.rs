//! Span blocks: zstd-compressed groups of whole traces, appended to segment
//! files that are never rewritten (search tables, see `search`, share them).
//!
//! A block decompresses to a directory `[count u32]` + `count x [trace id
//! (16), offset u32, len u32]` followed by one span table (see `codec`) per
//! trace, so reading one trace decompresses its block but decodes only its own
//! table. On disk a block is `[compressed len u32][crc32 u32][zstd frame]`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::codec;
use crate::model::{Span, TraceId};
use crate::store::{Result, StoreError};

const BLOCK_HEADER_LEN: usize = 8;
const DIRECTORY_ENTRY_LEN: usize = 16 + 4 + 4;
/// A new segment file starts once the current one is this large.
const SEGMENT_TARGET_BYTES: u64 = 1 << 30;
const ZSTD_LEVEL: i32 = 3;
/// Blocks larger than this cannot have been written by this code.
const MAX_BLOCK_LEN: u32 = 256 << 20;

/// Where a block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl BlockRef {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.segment.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<BlockRef> {
        let bytes: &[u8; 16] = bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("block reference has the wrong length".into()))?;
        Ok(BlockRef {
            segment: u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")),
            offset: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")),
        })
    }
}

/// Encodes whole traces into one compressed block (header included).
pub fn encode_block(traces: &[(&TraceId, &[Span])]) -> Vec<u8> {
    let mut directory = Vec::with_capacity(4 + traces.len() * DIRECTORY_ENTRY_LEN);
    directory.extend_from_slice(&(traces.len() as u32).to_le_bytes());
    let mut tables = Vec::new();
    for (trace_id, spans) in traces {
        let table = codec::encode_spans(spans.iter());
        directory.extend_from_slice(trace_id.as_slice());
        directory.extend_from_slice(&(tables.len() as u32).to_le_bytes());
        directory.extend_from_slice(&(table.len() as u32).to_le_bytes());
        tables.extend_from_slice(&table);
    }
    directory.extend_from_slice(&tables);
    seal(&directory)
}

/// Compresses and checksums bytes for a segment file.
pub fn seal(raw: &[u8]) -> Vec<u8> {
    // Compressing an in-memory buffer only fails on invalid parameters.
    let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL).unwrap_or_default();
    let mut block = Vec::with_capacity(BLOCK_HEADER_LEN + compressed.len());
    block.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    block.extend_from_slice(&crc32fast::hash(&compressed).to_le_bytes());
    block.extend_from_slice(&compressed);
    block
}

/// Checks and decompresses what [`seal`] made.
pub fn unseal(block: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("segment block: {what}"));
    if block.len() < BLOCK_HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    let len = u32::from_le_bytes(block[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(block[4..8].try_into().expect("4 bytes"));
    let compressed = &block[BLOCK_HEADER_LEN..];
    if len as usize != compressed.len() || crc32fast::hash(compressed) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    zstd::stream::decode_all(compressed).map_err(|_| corrupt("bad zstd frame"))
}

/// Decodes the spans of one trace from a block read from disk.
pub fn decode_trace(block: &[u8], trace_id: &TraceId) -> Result<Vec<Span>> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("span block: {what}"));
    let raw = unseal(block)?;
    let count = raw
        .get(0..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| corrupt("missing directory"))?;
    let directory_end = count
        .checked_mul(DIRECTORY_ENTRY_LEN)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= raw.len())
        .ok_or_else(|| corrupt("directory out of range"))?;
    let entries = &raw[4..directory_end];
    let tables = &raw[directory_end..];
    // Traces are written in id order: binary search the directory.
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = (low + high) / 2;
        let entry = &entries[mid * DIRECTORY_ENTRY_LEN..(mid + 1) * DIRECTORY_ENTRY_LEN];
        match entry[0..16].cmp(trace_id.as_slice()) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => {
                let offset = u32::from_le_bytes(entry[16..20].try_into().expect("4")) as usize;
                let len = u32::from_le_bytes(entry[20..24].try_into().expect("4")) as usize;
                let table = offset
                    .checked_add(len)
                    .and_then(|end| tables.get(offset..end))
                    .ok_or_else(|| corrupt("table out of range"))?;
                return Ok(codec::decode_spans(table, Some(trace_id))?);
            }
        }
    }
    Ok(Vec::new())
}

/// The append-only segment files of one store.
pub struct Segments {
    dir: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// The segment being appended to: id, file, length.
    writer: Mutex<Option<(u32, File, u64)>>,
}

impl Segments {
    /// Opens the segment directory, cutting every segment back to the length
    /// the index knows (`committed`): bytes after it were written by a flush
    /// that crashed before committing, and are replayed from the WAL instead.
    pub fn open(dir: &Path, committed: &HashMap<u32, u64>) -> Result<Segments> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(id) = segment_id(&entry.path()) else {
                continue;
            };
            match committed.get(&id) {
                Some(&len) if entry.metadata()?.len() > len => {
                    tracing::warn!(segment = id, len, "SpanSegmentUncommittedTailTruncated");
                    OpenOptions::new()
                        .write(true)
                        .open(entry.path())?
                        .set_len(len)?;
                }
                Some(_) => {}
                None => fs::remove_file(entry.path())?,
            }
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            readers: RwLock::new(HashMap::new()),
            writer: Mutex::new(None),
        })
    }

    /// Appends blocks to the current segment and fsyncs it; returns the refs,
    /// and the segment and its new length (to be committed to the index).
    pub fn append(&self, blocks: &[Vec<u8>]) -> Result<(Vec<BlockRef>, u32, u64)> {
        let mut writer = self.writer.lock().expect("not poisoned");
        let full = writer
            .as_ref()
            .is_some_and(|(_, _, len)| *len >= SEGMENT_TARGET_BYTES);
        if writer.is_none() || full {
            let id = match (&*writer, self.latest_segment()?) {
                (Some((id, _, _)), _) => id + 1,
                (None, Some(latest)) => latest,
                (None, None) => 0,
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(id))?;
            let len = file.metadata()?.len();
            File::open(&self.dir)?.sync_all()?;
            *writer = Some((id, file, len));
        }
        let (segment, file, len) = writer.as_mut().expect("opened above");
        let mut refs = Vec::with_capacity(blocks.len());
        let mut buffer = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
        for block in blocks {
            refs.push(BlockRef {
                segment: *segment,
                offset: *len + buffer.len() as u64,
                len: block.len() as u32,
            });
            buffer.extend_from_slice(block);
        }
        file.write_all(&buffer)?;
        file.sync_data()?;
        *len += buffer.len() as u64;
        Ok((refs, *segment, *len))
    }

    /// Reads one block's bytes.
    pub fn read(&self, block: BlockRef) -> Result<Vec<u8>> {
        if block.len > MAX_BLOCK_LEN {
            return Err(StoreError::Corrupt("block reference too long".into()));
        }
        let file = self.reader(block.segment)?;
        let mut bytes = vec![0u8; block.len as usize];
        file.read_exact_at(&mut bytes, block.offset)?;
        Ok(bytes)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn reader(&self, segment: u32) -> Result<Arc<File>> {
        if let Some(file) = self.readers.read().expect("not poisoned").get(&segment) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(segment))?);
        self.readers
            .write()
            .expect("not poisoned")
            .insert(segment, file.clone());
        Ok(file)
    }

    fn latest_segment(&self) -> io::Result<Option<u32>> {
        Ok(fs::read_dir(&self.dir)?
            .filter_map(|e| segment_id(&e.ok()?.path()))
            .max())
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.blocks"))
    }
}

fn segment_id(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".blocks")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;

    #[test]
    fn finds_each_trace_in_a_block() {
        let a = vec![sample_span(1, 1, "a"), sample_span(1, 2, "a")];
        let b = vec![sample_span(5, 1, "b")];
        let block = encode_block(&[(&[1; 16], &a), (&[5; 16], &b)]);
        assert_eq!(decode_trace(&block, &[1; 16]).unwrap(), a);
        assert_eq!(decode_trace(&block, &[5; 16]).unwrap(), b);
        assert!(decode_trace(&block, &[3; 16]).unwrap().is_empty());
    }

    #[test]
    fn detects_corruption() {
        let mut block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]);
        let last = block.len() - 1;
        block[last] ^= 1;
        assert!(matches!(
            decode_trace(&block, &[1; 16]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(decode_trace(&[1, 2], &[1; 16]).is_err());
    }

    #[test]
    fn appends_and_reads_back_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), &HashMap::new()).unwrap();
        let block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]);
        let (refs, segment, len) = segments.append(&[block.clone(), block.clone()]).unwrap();
        assert_eq!(refs[1].offset, block.len() as u64);
        assert_eq!(len, 2 * block.len() as u64);
        assert_eq!(segments.read(refs[1]).unwrap(), block);

        // Only the first block was committed: the second is cut on reopen.
        let committed = HashMap::from([(segment, block.len() as u64)]);
        let segments = Segments::open(dir.path(), &committed).unwrap();
        assert_eq!(segments.disk_bytes(), block.len() as u64);
        assert!(segments.read(refs[1]).is_err());
    }
}
