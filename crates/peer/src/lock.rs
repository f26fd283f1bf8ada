//! One process per share folder: a node holds an exclusive `flock` on its share folder and on its
//! state folder for as long as it runs, so a second `peer` on either refuses with a clear message
//! instead of both downloading the same file into the same place. The locks are taken on the
//! folders themselves (opened read-only), so a read-only share can be locked too, and the kernel
//! drops them when the process dies, however it dies: there is no stale lock file to clean up.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};

use crate::error::Error;

/// The held locks; released when dropped.
#[derive(Debug)]
pub(crate) struct FolderLock {
    _held: Vec<OwnedFd>,
}

impl FolderLock {
    /// Locks every folder in `folders` (skipping repeats), or fails with [`Error::InUse`] naming
    /// the first one another process holds.
    pub(crate) fn acquire(folders: &[&Path]) -> Result<FolderLock, Error> {
        let mut held = Vec::new();
        let mut seen: Vec<PathBuf> = Vec::new();
        for folder in folders {
            let canonical = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
            if seen.contains(&canonical) {
                continue;
            }
            let fd = open(&canonical, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| Error::Io { action: "open the folder to lock it", source: io::Error::from(e) })?;
            match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Err(Error::InUse(canonical)),
                Err(e) => return Err(Error::Io { action: "lock the folder", source: io::Error::from(e) }),
            }
            held.push(fd);
            seen.push(canonical);
        }
        Ok(FolderLock { _held: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_is_refused_until_the_first_is_dropped() {
        let (a, b) = (tempfile::tempdir(), tempfile::tempdir());
        let (Ok(a), Ok(b)) = (a, b) else { panic!("temporary folders") };
        let first = FolderLock::acquire(&[a.path(), b.path(), a.path()]);
        assert!(first.is_ok(), "the same folder twice in one lock is fine: {first:?}");
        match FolderLock::acquire(&[b.path()]) {
            Err(Error::InUse(p)) => assert_eq!(Some(p), std::fs::canonicalize(b.path()).ok()),
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert!(FolderLock::acquire(&[b.path()]).is_ok(), "free again once dropped");
    }
}
