//! Filling a directory with a copy of store files that a daemon can open:
//! what the stores use to write their part of a data directory snapshot.
//!
//! A file that is never written again (a sealed WAL segment, span segment,
//! chunk file or tantivy segment file; a file only ever replaced whole by a
//! rename) is hard-linked: the snapshot costs no space for it and the daemon
//! deleting its own name later leaves the snapshot's. Where the filesystem
//! refuses the link (another filesystem, too many links, no link support),
//! it is copied instead. A file still appended to, or cut on open, is copied
//! up to the length that is consistent with the rest of the snapshot — a
//! link would share later appends, and the snapshot's own open cutting it
//! would cut the daemon's file too.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A directory being filled with linked and copied files; counts what went
/// which way. Paths given to it are relative to its root.
pub struct BackupDir {
    root: PathBuf,
    /// Files hard-linked, and their bytes.
    pub linked_files: u64,
    pub linked_bytes: u64,
    /// Files copied (whole or a prefix, including links that fell back to
    /// a copy), and their bytes.
    pub copied_files: u64,
    pub copied_bytes: u64,
}

impl BackupDir {
    /// Fills `root`, which must exist.
    pub fn new(root: PathBuf) -> BackupDir {
        BackupDir {
            root,
            linked_files: 0,
            linked_bytes: 0,
            copied_files: 0,
            copied_bytes: 0,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory `relative` (and its parents).
    pub fn create_dir(&self, relative: &Path) -> io::Result<PathBuf> {
        let path = self.root.join(relative);
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// Hard-links `source`, a file never written again, as `relative`;
    /// copies it when the filesystem refuses the link. Fails with
    /// `NotFound` when `source` is gone.
    pub fn link(&mut self, source: &Path, relative: &Path) -> io::Result<()> {
        let target = self.target(relative)?;
        let bytes = fs::metadata(source)?.len();
        match fs::hard_link(source, &target) {
            Ok(()) => {
                self.linked_files += 1;
                self.linked_bytes += bytes;
                Ok(())
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(error),
            Err(error) => {
                tracing::debug!(source = %source.display(), %error, "SnapshotLinkRefused: copying");
                let copied = copy_file(&mut File::open(source)?, None, &target)?;
                self.copied_files += 1;
                self.copied_bytes += copied;
                Ok(())
            }
        }
    }

    /// Copies the first `len` bytes of `source` as `relative`; fails with
    /// `UnexpectedEof` when it is shorter.
    pub fn copy_prefix(&mut self, source: &mut File, len: u64, relative: &Path) -> io::Result<()> {
        let target = self.target(relative)?;
        let copied = copy_file(source, Some(len), &target)?;
        self.copied_files += 1;
        self.copied_bytes += copied;
        Ok(())
    }

    /// Copies the whole of `source` as `relative`.
    pub fn copy(&mut self, source: &Path, relative: &Path) -> io::Result<()> {
        let target = self.target(relative)?;
        let copied = copy_file(&mut File::open(source)?, None, &target)?;
        self.copied_files += 1;
        self.copied_bytes += copied;
        Ok(())
    }

    /// Writes `bytes` as `relative`.
    pub fn write(&mut self, relative: &Path, bytes: &[u8]) -> io::Result<()> {
        let target = self.target(relative)?;
        let mut file = File::create(&target)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        self.copied_files += 1;
        self.copied_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Counts as copied the files something else wrote under `relative`
    /// (a database that copies itself).
    pub fn count_written(&mut self, relative: &Path) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join(relative))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                self.count_written(&relative.join(entry.file_name()))?;
            } else {
                self.copied_files += 1;
                self.copied_bytes += entry.metadata()?.len();
            }
        }
        Ok(())
    }

    /// Makes every directory entry under the root durable (file contents
    /// are synced as they are written).
    pub fn sync_dirs(&self) -> io::Result<()> {
        sync_dir_tree(&self.root)
    }

    /// The absolute path of `relative`, its parent created.
    fn target(&self, relative: &Path) -> io::Result<PathBuf> {
        let target = self.root.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(target)
    }
}

/// Copies `source` from its start (all of it, or exactly `len` bytes) into
/// a new file `target` and syncs it; returns the bytes copied.
fn copy_file(source: &mut File, len: Option<u64>, target: &Path) -> io::Result<u64> {
    use std::io::Seek;
    source.seek(io::SeekFrom::Start(0))?;
    let mut out = File::create_new(target)?;
    let copied = match len {
        Some(len) => {
            let copied = io::copy(&mut source.take(len), &mut out)?;
            if copied < len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} bytes to copy, the file holds {copied}", len),
                ));
            }
            copied
        }
        None => io::copy(source, &mut out)?,
    };
    out.sync_all()?;
    Ok(copied)
}

fn sync_dir_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_dir_tree(&entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn inode(path: &Path) -> (u64, u64) {
        let metadata = fs::metadata(path).unwrap();
        (metadata.dev(), metadata.ino())
    }

    #[test]
    fn links_on_the_same_filesystem_and_the_link_outlives_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("00000001.blocks");
        fs::write(&source, b"sealed bytes").unwrap();
        let mut backup = BackupDir::new(dir.path().join("snapshot"));
        backup
            .link(&source, Path::new("traces/blocks/00000001.blocks"))
            .unwrap();
        let linked = dir.path().join("snapshot/traces/blocks/00000001.blocks");
        assert_eq!(inode(&linked), inode(&source));
        assert_eq!((backup.linked_files, backup.linked_bytes), (1, 12));
        assert_eq!(backup.copied_files, 0);
        fs::remove_file(&source).unwrap();
        assert_eq!(fs::read(&linked).unwrap(), b"sealed bytes");
    }

    #[test]
    fn copies_when_the_filesystem_refuses_the_link() {
        // /proc cannot hold a link to a file elsewhere: linking it fails
        // (EXDEV), as a snapshot directory on another mount would.
        let dir = tempfile::tempdir().unwrap();
        let mut backup = BackupDir::new(dir.path().to_path_buf());
        let source = Path::new("/proc/self/cmdline");
        backup.link(source, Path::new("cmdline")).unwrap();
        assert_eq!((backup.linked_files, backup.copied_files), (0, 1));
        assert_eq!(
            fs::read(dir.path().join("cmdline")).unwrap(),
            fs::read(source).unwrap()
        );
        assert_ne!(inode(&dir.path().join("cmdline")).0, inode(source).0);
    }

    #[test]
    fn a_missing_source_is_not_found_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut backup = BackupDir::new(dir.path().join("snapshot"));
        let error = backup
            .link(&dir.path().join("gone.wal2"), Path::new("wal/gone.wal2"))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("snapshot/wal/gone.wal2").exists());
    }

    #[test]
    fn a_prefix_copy_takes_exactly_the_consistent_length() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("active.wal2");
        fs::write(&source, b"durable|appended later").unwrap();
        let mut backup = BackupDir::new(dir.path().join("snapshot"));
        let mut file = File::open(&source).unwrap();
        backup
            .copy_prefix(&mut file, 7, Path::new("wal/active.wal2"))
            .unwrap();
        let copy = dir.path().join("snapshot/wal/active.wal2");
        assert_eq!(fs::read(&copy).unwrap(), b"durable");
        assert_ne!(inode(&copy), inode(&source));
        assert_eq!((backup.copied_files, backup.copied_bytes), (1, 7));

        // A file shorter than what must be copied is an error, not a
        // snapshot silently missing data.
        let error = backup
            .copy_prefix(&mut file, 100, Path::new("wal/short.wal2"))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
