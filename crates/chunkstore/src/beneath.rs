//! Race-free file access below a folder: every open, create, link, rename and removal is resolved
//! relative to an open handle of a folder, never through a path checked first and used later.
//!
//! A path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so the kernel itself
//! refuses a symbolic link in any component (`ELOOP`, reported as [`StoreError::Symlink`]) and any
//! escape from the folder, atomically with the open. Where `openat2` is missing (Linux < 5.6, or a
//! seccomp filter that refuses it) the same is done one component at a time with
//! `openat(O_NOFOLLOW)` and a folder check: each step holds the folder it reached, so swapping a
//! component for a link between two steps cannot redirect the next one.
//!
//! Paths here are relative, `/`-separated names whose components are never empty, `.` or `..`
//! (names are validated before they get here; [`Dir`] refuses such components again anyway).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// Set once `openat2` was found missing, so later opens go straight to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// How paths are resolved: the kernel's `openat2`, or component by component. Tests run both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolve {
    /// `openat2` where the kernel has it, else the walk.
    Auto,
    /// Always the component-by-component walk.
    #[cfg_attr(not(test), allow(dead_code))]
    Walk,
}

/// Permissions of files and folders the store creates (before the umask).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// An open folder. Paths given to its methods are resolved below it; its own path is kept only to
/// name things in errors and logs.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    resolve: Resolve,
}

/// What an open is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    /// Read an existing file.
    Read,
    /// Read and write an existing file.
    ReadWrite,
    /// Read and write a new file that must not exist yet.
    ReadWriteNew,
}

impl Access {
    fn flags(self) -> OFlags {
        match self {
            // Non-blocking so that a FIFO planted under a shared name cannot hang the opener
            // (regular files ignore the flag).
            Access::Read => OFlags::RDONLY | OFlags::NONBLOCK,
            Access::ReadWrite => OFlags::RDWR,
            Access::ReadWriteNew => OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        }
    }
}

fn invalid(rel: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("unsafe relative path {rel:?}"))
}

/// Splits `rel` into components, refusing empty, `.` and `..` ones.
fn components(rel: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains('\0')) {
        return Err(invalid(rel));
    }
    Ok(parts)
}

/// Checks that `name` is one component (no `/`), as the methods that act on an entry of the
/// folder itself require: a deeper path would be resolved by the kernel without our checks.
fn single(name: &str) -> io::Result<()> {
    match components(name)?.len() {
        1 => Ok(()),
        _ => Err(invalid(name)),
    }
}

/// Whether `e` says a component was a symbolic link that was not followed.
pub(crate) fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

/// Flags of an open of a folder. Not `O_DIRECTORY`: with it, a link in the last place fails as
/// "not a folder" rather than as a link; without it, `O_NOFOLLOW` reliably says `ELOOP`, and
/// [`check_dir`] rejects anything else that is not a folder (`O_NONBLOCK`, so a FIFO cannot hang
/// the open).
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::NONBLOCK);

/// `fd` if it is a folder, else `ENOTDIR`.
fn check_dir(fd: OwnedFd) -> Result<OwnedFd, Errno> {
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        Ok(fd)
    } else {
        Err(Errno::NOTDIR)
    }
}

impl Dir {
    /// Opens the folder at `path` (an absolute or working-directory-relative path chosen by the
    /// user, so links in it are followed: this is the anchor everything else is resolved below).
    pub(crate) fn open_anchor(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Dir { fd, path: path.to_path_buf(), resolve: Resolve::Auto })
    }

    /// The same folder with another resolution strategy (for tests of the fallback).
    #[cfg(test)]
    pub(crate) fn with_resolve(mut self, resolve: Resolve) -> Dir {
        self.resolve = resolve;
        self
    }

    /// The folder's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` below this folder, for messages.
    pub(crate) fn display(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` below this folder with `flags`, refusing links in every component.
    fn resolve(&self, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let parts = components(rel)?;
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        // openat2 refuses a mode when nothing is created.
        let mode = if flags.contains(OFlags::CREATE) { mode } else { Mode::empty() };
        if self.resolve == Resolve::Auto && !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.fd, rel, flags, mode, how) {
                Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // A seccomp filter may refuse the call itself; the walk then decides.
                Err(Errno::PERM) => {}
                // The kernel retries on a concurrent rename elsewhere; if it gives up, so may we.
                other => return other.map_err(io::Error::from),
            }
        }
        let (last, dirs) = parts.split_last().ok_or_else(|| invalid(rel))?;
        let mut held: Option<OwnedFd> = None;
        for comp in dirs {
            let at = held.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let next = rustix::fs::openat(at, *comp, DIR_FLAGS | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
            held = Some(check_dir(next)?);
        }
        let at = held.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
        Ok(rustix::fs::openat(at, *last, flags, mode)?)
    }

    /// Opens the file `rel` below this folder.
    pub(crate) fn open_file(&self, rel: &str, access: Access) -> io::Result<File> {
        let fd = self.resolve(rel, access.flags(), Mode::from_raw_mode(FILE_MODE))?;
        Ok(File::from(fd))
    }

    /// Creates a file in this folder that has no name (`O_TMPFILE`): it disappears when closed
    /// unless linked somewhere first. Fails on file systems without unnamed files.
    pub(crate) fn create_unnamed(&self) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.fd, ".", flags, Mode::from_raw_mode(FILE_MODE))?))
    }

    /// Opens the folder `rel` below this one.
    pub(crate) fn open_dir(&self, rel: &str) -> io::Result<Dir> {
        let fd = check_dir(self.resolve(rel, DIR_FLAGS, Mode::empty())?)?;
        Ok(Dir { fd, path: self.display(rel), resolve: self.resolve })
    }

    /// Opens the folder `rel` below this one, creating it and its missing parents. Every
    /// component is created and then opened without following links, so a link planted at any
    /// step is refused rather than followed.
    pub(crate) fn create_dir_all(&self, rel: &str) -> io::Result<Dir> {
        let parts = components(rel)?;
        let mut cur: Option<Dir> = None;
        for comp in parts {
            let at = cur.as_ref().unwrap_or(self);
            match rustix::fs::mkdirat(&at.fd, comp, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            cur = Some(at.open_dir(comp)?);
        }
        let mut dir = cur.ok_or_else(|| invalid(rel))?;
        dir.path = self.display(rel);
        Ok(dir)
    }

    /// The entries of this folder (not `.` and `..`), with their types as the folder reports
    /// them; a type of [`FileType::Unknown`] needs [`Dir::kind`] to tell.
    pub(crate) fn entries(&self) -> io::Result<Vec<(std::ffi::OsString, FileType)>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            out.push((name.to_owned(), entry.file_type()));
        }
        Ok(out)
    }

    /// The type and status of the entry `name` in this folder, not following a link.
    pub(crate) fn stat(&self, name: &str) -> io::Result<rustix::fs::Stat> {
        single(name)?;
        Ok(rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// Links the file `src` of folder `from` under the name `dst` here: an atomic "create unless
    /// the name exists" that never replaces a file (`AlreadyExists` then). Links are not followed.
    pub(crate) fn link_from(&self, from: &Dir, src: &str, dst: &str) -> io::Result<()> {
        single(src)?;
        single(dst)?;
        Ok(rustix::fs::linkat(&from.fd, src, &self.fd, dst, AtFlags::empty())?)
    }

    /// Renames `src` of folder `from` to `dst` here without replacing anything (`AlreadyExists`
    /// if `dst` exists), for file systems without hard links. Where the file system cannot say
    /// "no replace" (`EINVAL`: a few network and FUSE file systems), the name is checked first,
    /// which is not atomic: there a local writer racing the rename can lose their file to it.
    pub(crate) fn rename_from_noreplace(&self, from: &Dir, src: &str, dst: &str) -> io::Result<()> {
        single(src)?;
        single(dst)?;
        match rustix::fs::renameat_with(&from.fd, src, &self.fd, dst, RenameFlags::NOREPLACE) {
            Err(Errno::INVAL) | Err(Errno::NOSYS) => match self.stat(dst) {
                Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Ok(rustix::fs::renameat(&from.fd, src, &self.fd, dst)?)
                }
                Err(e) => Err(e),
            },
            other => Ok(other?),
        }
    }

    /// Renames `src` to `dst` within this folder, replacing `dst`.
    pub(crate) fn rename(&self, src: &str, dst: &str) -> io::Result<()> {
        single(src)?;
        single(dst)?;
        Ok(rustix::fs::renameat(&self.fd, src, &self.fd, dst)?)
    }

    /// Removes the file `name` of this folder; a missing file is not an error.
    pub(crate) fn remove_file(&self, name: &str) -> io::Result<()> {
        single(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the open `file` the name `dst` in this folder, never replacing a file. The name is
    /// made for the file the handle holds, not for whatever some path names by then: `linkat` of
    /// `/proc/self/fd/N`, following that one magic link (as `open(2)` documents for `O_TMPFILE`).
    /// `Unsupported` where `/proc` is not mounted.
    pub(crate) fn link_open_file(&self, file: &File, dst: &str) -> io::Result<()> {
        single(dst)?;
        let handle = format!("/proc/self/fd/{}", file.as_raw_fd());
        match rustix::fs::linkat(CWD, handle.as_str(), &self.fd, dst, AtFlags::SYMLINK_FOLLOW) {
            Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Err(io::ErrorKind::Unsupported.into()),
            other => Ok(other?),
        }
    }

    /// Whether the entry `name` of this folder is the file `file` holds (same device and inode).
    // `Stat`'s field types differ across architectures, so some conversions are no-ops here.
    #[allow(clippy::useless_conversion)]
    pub(crate) fn is_same_file(&self, name: &str, file: &File) -> io::Result<bool> {
        let st = self.stat(name)?;
        let md = file.metadata()?;
        Ok(u64::from(st.st_dev) == md.dev() && u64::from(st.st_ino) == md.ino())
    }

    /// Flushes the folder's entries to disk (after creating, linking or removing in it).
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

/// The folder's descriptor, for queries about it that need no path (its free space).
impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Splits a relative name into its parent folder (None at the top) and its last component.
pub(crate) fn split_parent(rel: &str) -> (Option<&str>, &str) {
    match rel.rsplit_once('/') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    fn both(root: &Path) -> [Dir; 2] {
        [Dir::open_anchor(root).unwrap(), Dir::open_anchor(root).unwrap().with_resolve(Resolve::Walk)]
    }

    #[test]
    fn refuses_links_in_every_component() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::fs::write(root.join("real/file"), b"inside").unwrap();
        symlink(&outside, root.join("linkdir")).unwrap();
        symlink(outside.join("secret"), root.join("linkfile")).unwrap();
        symlink("file", root.join("real/inner-link")).unwrap();
        for dir in both(&root) {
            let mut s = String::new();
            dir.open_file("real/file", Access::Read).unwrap().read_to_string(&mut s).unwrap();
            assert_eq!(s, "inside");
            for rel in ["linkdir/secret", "linkfile", "real/inner-link"] {
                let e = dir.open_file(rel, Access::Read).unwrap_err();
                assert!(is_symlink_refusal(&e), "{rel} via {:?}: {e}", dir.resolve);
            }
            assert!(is_symlink_refusal(&dir.open_dir("linkdir").unwrap_err()));
            assert!(is_symlink_refusal(&dir.create_dir_all("linkdir/sub").unwrap_err()));
            for rel in ["../root/real/file", "real/../real/file", "/etc/passwd", "", "real//file", "./real/file"] {
                let e = dir.open_file(rel, Access::Read).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{rel}");
            }
            // Nothing was created through the link.
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        }
    }

    #[test]
    fn create_link_rename_remove() {
        let tmp = tempfile::tempdir().unwrap();
        for (k, dir) in both(tmp.path()).into_iter().enumerate() {
            let base = format!("t{k}");
            let sub = dir.create_dir_all(&format!("{base}/a/b")).unwrap();
            assert_eq!(sub.path(), tmp.path().join(&base).join("a/b"));
            dir.create_dir_all(&format!("{base}/a/b")).unwrap();
            sub.open_file("x", Access::ReadWriteNew).unwrap().write_all(b"x").unwrap();
            assert_eq!(sub.open_file("x", Access::ReadWriteNew).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            sub.link_from(&sub, "x", "y").unwrap();
            let x = sub.open_file("x", Access::Read).unwrap();
            sub.link_open_file(&x, "v").unwrap();
            assert!(sub.is_same_file("v", &x).unwrap() && sub.is_same_file("y", &x).unwrap());
            assert_eq!(sub.link_open_file(&x, "y").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            sub.remove_file("v").unwrap();
            for deep in ["a/b", "../x"] {
                assert_eq!(dir.stat(deep).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{deep}");
                assert_eq!(dir.remove_file(deep).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{deep}");
            }
            assert_eq!(sub.link_from(&sub, "x", "y").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(sub.rename_from_noreplace(&sub, "x", "y").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            sub.rename_from_noreplace(&sub, "x", "z").unwrap();
            sub.rename("z", "w").unwrap();
            sub.remove_file("y").unwrap();
            sub.remove_file("y").unwrap();
            sub.sync().unwrap();
            let mut names: Vec<_> = sub.entries().unwrap().into_iter().map(|(n, _)| n).collect();
            names.sort();
            assert_eq!(names, ["w"]);
            assert!(sub.stat("w").is_ok());
            assert_eq!(split_parent("a/b/c"), (Some("a/b"), "c"));
            assert_eq!(split_parent("c"), (None, "c"));
        }
    }
}
