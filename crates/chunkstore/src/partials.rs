//! The registry of a store's partial downloads: the one owner of which downloads are open, and of
//! the `.p2p/partial` folder they live in (which it opens, or creates when a download needs it,
//! and shares with the downloads).
//!
//! Invariant: while any handle to a download is alive, every open of its metadata returns that
//! handle, so there is one bitmap and one lock per download (two handles would overwrite each
//! other's bookkeeping). Each download has a slot in the registry; whoever creates or resumes the
//! download holds the slot's lock meanwhile, so a second open of the same download waits for the
//! first and gets its handle. The registry's own lock is held only to find or insert a slot, never
//! while a download is created or re-hashed (seconds to minutes for a large one), so opening one
//! download never delays opening or finishing another. Finishing does not touch the registry at
//! all: a finished download's slot counts as empty.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use proto::name::RESERVED_DIR;
use proto::FileMeta;
use tracing::{debug, warn};

use crate::beneath::Dir;
use crate::error::{io_err, StoreError};
use crate::files::{self, partial_id, read_meta, Names};
use crate::info::{self, PartialInfo};
use crate::partial::{Home, Partial, WeakPartial};
use crate::sync::lock;

/// The partial folder below the share folder.
const PARTIAL_DIR: &str = "partial";

/// When the partial folder is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// At once, when the store opens (a store keeping its state in the share's `.p2p`).
    Now,
    /// When the first download is created, so merely opening a share writes nothing in it.
    Lazily,
}

/// One download's place in the registry: a reference to its handle, empty until the download is
/// opened. Its lock is held by the caller creating or resuming the download.
type Slot = Arc<Mutex<WeakPartial>>;

/// The partial downloads of one store: the registry of open ones and their folder.
pub(crate) struct Partials {
    /// The share folder and hash cache every download of this store works with.
    home: Arc<Home>,
    /// `.p2p/partial` below the share folder, once opened or created: the downloads' files are
    /// opened and removed by name in it.
    dir: OnceLock<Arc<Dir>>,
    /// A slot per download open or being opened, by id. Locked only to find, insert or drop
    /// slots (see the module docs for why).
    slots: Mutex<HashMap<String, Slot>>,
    /// Called at the points where an open waits, so tests can hold an open there.
    #[cfg(test)]
    hook: Mutex<Option<Hook>>,
}

/// A point in [`Partials::open`] a test can stop at (see [`Partials::set_hook`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// The download of this name is about to be created or resumed, its slot locked.
    Opening(&'a str),
    /// An open of this name found another open of the same download under way and waits for it.
    Waiting(&'a str),
}

/// What a test runs at each [`Event`].
#[cfg(test)]
pub(crate) type Hook = Arc<dyn Fn(Event<'_>) + Send + Sync>;

impl Partials {
    /// The registry of the downloads in the partial folder of `home`'s share folder, after
    /// sweeping bookkeeping left behind by a crash from it. The folder is created now or when
    /// the first download needs it, as `create` says; a folder that cannot be opened (unreadable,
    /// say) is left for the calls that need it to report, so the store still opens and serves.
    pub(crate) fn new(home: Arc<Home>, create: Create) -> Result<Partials, StoreError> {
        let partials = Partials {
            home,
            dir: OnceLock::new(),
            slots: Mutex::new(HashMap::new()),
            #[cfg(test)]
            hook: Mutex::new(None),
        };
        let dir = match create {
            Create::Now => Some(partials.make_dir()?),
            Create::Lazily => partials.find_dir().unwrap_or_else(|e| {
                warn!(error = %e, "cannot open the partial downloads folder");
                None
            }),
        };
        if let Some(dir) = dir {
            sweep_orphans(dir)?;
        }
        Ok(partials)
    }

    /// The partial folder, `None` if it does not exist (yet).
    fn find_dir(&self) -> Result<Option<&Arc<Dir>>, StoreError> {
        if let Some(dir) = self.dir.get() {
            return Ok(Some(dir));
        }
        let (root, rel) = (&self.home.root, partial_rel());
        // Below the share folder's handle, refusing links: a linked bookkeeping folder would let
        // writes land outside the share.
        match root.open_dir(&rel) {
            Ok(dir) => Ok(Some(self.dir.get_or_init(|| Arc::new(dir)))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open folder", &root.display(&rel))(e)),
        }
    }

    /// The partial folder, created (with `.p2p`) if it does not exist.
    fn make_dir(&self) -> Result<&Arc<Dir>, StoreError> {
        if let Some(dir) = self.dir.get() {
            return Ok(dir);
        }
        let (root, rel) = (&self.home.root, partial_rel());
        // As in `find_dir`; two threads may both get here, and both get the first one's handle.
        let dir = root.create_dir_all(&rel).map_err(io_err("create folder", &root.display(&rel)))?;
        Ok(self.dir.get_or_init(|| Arc::new(dir)))
    }

    /// See [`crate::Store::open_partial`].
    pub(crate) fn open(&self, meta: &FileMeta) -> Result<Partial, StoreError> {
        meta.validate()?;
        let id = partial_id(meta);
        let slot = {
            let mut slots = lock(&self.slots);
            // Forget downloads nobody holds or is opening. Only this lock hands out slots, so a
            // slot the map alone holds is locked by no one, and locking it here cannot wait.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1 || lock(slot).is_alive());
            slots.entry(id.clone()).or_default().clone()
        };
        let mut held = match slot.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                debug!(name = meta.name, "waiting for another open of the same download");
                #[cfg(test)]
                self.event(Event::Waiting(&meta.name));
                lock(&slot)
            }
        };
        if let Some(partial) = held.upgrade().filter(|p| !p.is_finished()) {
            if partial.meta() == meta {
                return Ok(partial);
            }
            // Same id, different metadata: only a BLAKE3 collision could get here.
            return Err(StoreError::AlreadyExists { name: meta.name.clone() });
        }
        // Empty (or finished, its files gone): this caller creates or resumes the download while
        // holding the slot, so others of this id wait and others of other ids do not. If it fails
        // the slot stays empty and the next caller tries again.
        #[cfg(test)]
        self.event(Event::Opening(&meta.name));
        let dir = self.make_dir()?.clone();
        let partial = Partial::open(self.home.clone(), dir, meta, id)?;
        *held = partial.downgrade();
        Ok(partial)
    }

    /// See [`crate::Store::partials`].
    pub(crate) fn on_disk(&self) -> Result<Vec<FileMeta>, StoreError> {
        Ok(self.listed()?.into_iter().map(|(_, meta)| meta).collect())
    }

    /// See [`crate::Store::partial_infos`].
    pub(crate) fn infos(&self) -> Result<Vec<PartialInfo>, StoreError> {
        let Some(dir) = self.find_dir()? else { return Ok(Vec::new()) };
        let open = |id: &str| {
            let slot = lock(&self.slots).get(id).cloned()?;
            // A slot busy opening or removing the download: its files tell.
            let held = slot.try_lock().ok()?.upgrade();
            held.map(|p| p.have())
        };
        // An open download's bitmap in memory is ahead of its file (saved every few chunks).
        Ok(self.listed()?.into_iter().map(|(id, meta)| info::read(dir, &id, meta, open(&id))).collect())
    }

    /// The downloads whose `.meta` reads and is filed under its id, as (id, metadata), sorted by
    /// name; none if the partial folder does not exist. Others are skipped with a warning.
    fn listed(&self) -> Result<Vec<(String, FileMeta)>, StoreError> {
        let Some(dir) = self.find_dir()? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (name, _) in dir.entries().map_err(io_err("read folder", dir.path()))? {
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else { continue };
            let path = dir.display(&format!("{stem}.meta"));
            match read_meta(dir, &format!("{stem}.meta")) {
                Ok(meta) if stem == partial_id(&meta) => out.push((stem.to_owned(), meta)),
                Ok(_) => warn!(path = %path.display(), "skipping partial download filed under the wrong id"),
                Err(e) => warn!(path = %path.display(), error = %e, "skipping unreadable partial download"),
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    /// See [`crate::Store::remove_partial`]. Holds the download's slot while removing, so an
    /// open of it meanwhile waits, then starts it over.
    pub(crate) fn remove(&self, meta: &FileMeta) -> Result<(), StoreError> {
        meta.validate()?;
        let id = partial_id(meta);
        let in_use = || StoreError::PartialInUse { name: meta.name.clone() };
        let slot = lock(&self.slots).entry(id.clone()).or_default().clone();
        let held = match slot.try_lock() {
            Ok(held) => held,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Being created or resumed by another thread right now.
            Err(TryLockError::WouldBlock) => return Err(in_use()),
        };
        if held.upgrade().is_some_and(|p| !p.is_finished()) {
            return Err(in_use());
        }
        let missing = || StoreError::NoPartial { name: meta.name.clone() };
        let dir = self.find_dir()?.ok_or_else(missing)?;
        let names = Names::of(&id);
        match dir.stat(&names.meta) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err("examine", &dir.display(&names.meta))(e)),
        }
        // The meta goes first (see `files::remove_all`): a crash part way leaves orphans that the
        // next open sweeps, never a download that looks resumable but has lost its data.
        files::remove_all(dir, &id)?;
        debug!(name = meta.name, "removed partial download");
        Ok(())
    }
}

/// `.p2p/partial`, relative to the share folder.
fn partial_rel() -> String {
    format!("{RESERVED_DIR}/{PARTIAL_DIR}")
}

/// Removes bookkeeping a crash can leave behind in the partial folder `dir`: temporaries of atomic
/// writes, and data or bitmap files whose `.meta` is gone (`finish` deletes the `.meta` first).
/// Where the folder cannot be written (a read-only share), they are left, with one warning.
fn sweep_orphans(dir: &Dir) -> Result<(), StoreError> {
    let mut orphans = Vec::new();
    for (name, _) in dir.entries().map_err(io_err("read folder", dir.path()))? {
        let Some(name) = name.to_str() else { continue };
        let orphan = match name.rsplit_once('.') {
            Some((_, "tmp")) => true,
            Some((stem, "data" | "have")) => dir.stat(&format!("{stem}.meta")).is_err(),
            _ => false,
        };
        if orphan {
            orphans.push(name.to_owned());
        }
    }
    for name in orphans {
        let path = dir.display(&name);
        debug!(path = %path.display(), "removing stale bookkeeping file");
        match dir.remove_file(&name) {
            Ok(()) => {}
            // A read-only share (or one this process may not write): the rest would fail alike.
            Err(e) if matches!(e.kind(), ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied) => {
                warn!(path = %dir.path().display(), error = %e, "cannot sweep stale bookkeeping; leaving it");
                break;
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot remove stale bookkeeping file"),
        }
    }
    Ok(())
}

#[cfg(test)]
impl Partials {
    /// Runs `hook` at every [`Event`] of later opens.
    pub(crate) fn set_hook(&self, hook: Hook) {
        *lock(&self.hook) = Some(hook);
    }

    /// Runs the hook, if any, without holding its lock (it may block, and other opens need it).
    fn event(&self, event: Event<'_>) {
        let hook = lock(&self.hook).clone();
        if let Some(hook) = hook {
            hook(event);
        }
    }
}
