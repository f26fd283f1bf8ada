//! Test helpers that change the system for one test and undo it even when the test fails: a mount
//! (a small tmpfs, a read-only bind mount) and an immutable file. Each needs root; where it cannot
//! be had the helper says why on stderr and returns `None`, and the test skips what needs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd args`, returning its error output if it fails.
fn run(cmd: &str, args: &[&str], path: &Path) -> Result<(), String> {
    match Command::new(cmd).args(args).arg(path).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether this process is root (what the helpers below need).
fn root_or_skip(what: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipping {what}: needs root");
    }
    root
}

/// A mount, unmounted when dropped (lazily if it is still busy, so a failing test that kept a
/// handle open does not leave it behind).
pub(crate) struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (as `mount -o size=` takes it, e.g. "2m") mounted on the folder `dir`.
    pub(crate) fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        if !root_or_skip("the tmpfs part of this test") {
            return None;
        }
        match run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], dir) {
            Ok(()) => Some(Mount(dir.to_path_buf())),
            Err(e) => {
                eprintln!("skipping the tmpfs part of this test: cannot mount one: {e}");
                None
            }
        }
    }

    /// The folder `dir` bind-mounted onto itself read-only, so that even root cannot write in it.
    pub(crate) fn read_only(dir: &Path) -> Option<Mount> {
        if !root_or_skip("the read-only mount part of this test") {
            return None;
        }
        let bind = match run("mount", &["--bind", &dir.to_string_lossy()], dir) {
            Ok(()) => Mount(dir.to_path_buf()),
            Err(e) => {
                eprintln!("skipping the read-only mount part of this test: cannot bind-mount: {e}");
                return None;
            }
        };
        match run("mount", &["-o", "remount,bind,ro"], dir) {
            Ok(()) => Some(bind),
            Err(e) => {
                eprintln!("skipping the read-only mount part of this test: cannot remount read-only: {e}");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if run("umount", &[], &self.0).is_err() {
            let _ = run("umount", &["-l"], &self.0);
        }
    }
}

/// A file made immutable (`chattr +i`: not even root may rename over it), made mutable again
/// when dropped.
pub(crate) struct Immutable(PathBuf);

impl Immutable {
    /// Makes `path` immutable, or says why it cannot.
    pub(crate) fn new(path: &Path) -> Option<Immutable> {
        if !root_or_skip("the immutable-file part of this test") {
            return None;
        }
        match run("chattr", &["+i"], path) {
            Ok(()) => Some(Immutable(path.to_path_buf())),
            Err(e) => {
                eprintln!("skipping the immutable-file part of this test: {e}");
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = run("chattr", &["-i"], &self.0);
    }
}
