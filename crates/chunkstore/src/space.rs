//! Disk space: how much a file system has free for this process, and what a failed reservation
//! of a download's space means.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::io::Errno;

use crate::error::{io_err, StoreError};

/// Bytes free for an unprivileged writer on the file system holding `fd` (`f_bavail × f_frsize`):
/// what a download can count on, since the blocks reserved for root may not be there for it.
pub(crate) fn free_bytes(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::fstatvfs(fd)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// What the `fallocate` of a download that still needs `needed` bytes came to (`result`): the
/// file system's word when it has one; where it cannot preallocate (`EOPNOTSUPP`), a comparison
/// of `needed` with the free space `free` tells instead. `dest` names the download in
/// [`StoreError::NoSpace`]; `data` names its data file in other errors.
pub(crate) fn judge_reservation(
    result: Result<(), Errno>,
    needed: u64,
    free: impl FnOnce() -> io::Result<u64>,
    dest: &Path,
    data: &Path,
) -> Result<(), StoreError> {
    let no_space = |free| StoreError::NoSpace { path: dest.to_path_buf(), needed, free };
    match result {
        Ok(()) => Ok(()),
        Err(Errno::NOSPC) => Err(no_space(free().map_err(io_err("check free space of", data))?)),
        Err(Errno::OPNOTSUPP) => {
            let free = free().map_err(io_err("check free space of", data))?;
            if needed > free {
                Err(no_space(free))
            } else {
                Ok(())
            }
        }
        Err(e) => Err(io_err("reserve space for", data)(e.into())),
    }
}
