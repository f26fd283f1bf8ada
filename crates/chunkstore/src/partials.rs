//! The registry of a store's partial downloads: the one owner of which downloads are open, and of
//! the `.p2p/partial` folder they live in (through the [`Home`] it shares with them).
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
use std::sync::{Arc, Mutex, TryLockError};

use proto::FileMeta;
use tracing::{debug, warn};

use crate::error::{io_err, StoreError};
use crate::files::{partial_id, read_meta};
use crate::partial::{Home, Partial, WeakPartial};
use crate::sync::lock;

/// One download's place in the registry: a reference to its handle, empty until the download is
/// opened. Its lock is held by the caller creating or resuming the download.
type Slot = Arc<Mutex<WeakPartial>>;

/// The partial downloads of one store: the registry of open ones and their folder.
pub(crate) struct Partials {
    /// The folders and hash cache every download of this store works with.
    home: Arc<Home>,
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
    /// The registry of the downloads in `home`'s partial folder, after sweeping bookkeeping left
    /// behind by a crash from it.
    pub(crate) fn new(home: Arc<Home>) -> Result<Partials, StoreError> {
        let partials = Partials {
            home,
            slots: Mutex::new(HashMap::new()),
            #[cfg(test)]
            hook: Mutex::new(None),
        };
        partials.sweep_orphans()?;
        Ok(partials)
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
        let partial = Partial::open(self.home.clone(), meta, id)?;
        *held = partial.downgrade();
        Ok(partial)
    }

    /// See [`crate::Store::partials`].
    pub(crate) fn on_disk(&self) -> Result<Vec<FileMeta>, StoreError> {
        let dir = &self.home.dir;
        let mut out = Vec::new();
        for (name, _) in dir.entries().map_err(io_err("read folder", dir.path()))? {
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else { continue };
            let path = dir.display(&format!("{stem}.meta"));
            match read_meta(dir, &format!("{stem}.meta")) {
                Ok(meta) if stem == partial_id(&meta) => out.push(meta),
                Ok(_) => warn!(path = %path.display(), "skipping partial download filed under the wrong id"),
                Err(e) => warn!(path = %path.display(), error = %e, "skipping unreadable partial download"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes bookkeeping a crash can leave behind: temporaries of atomic writes, and data or
    /// bitmap files whose `.meta` is gone (`finish` deletes the `.meta` first).
    fn sweep_orphans(&self) -> Result<(), StoreError> {
        let dir = &self.home.dir;
        for (name, _) in dir.entries().map_err(io_err("read folder", dir.path()))? {
            let Some(name) = name.to_str() else { continue };
            let orphan = match name.rsplit_once('.') {
                Some((_, "tmp")) => true,
                Some((stem, "data" | "have")) => dir.stat(&format!("{stem}.meta")).is_err(),
                _ => false,
            };
            if orphan {
                debug!(path = %dir.display(name).display(), "removing stale bookkeeping file");
                if let Err(e) = dir.remove_file(name) {
                    warn!(path = %dir.display(name).display(), error = %e, "cannot remove stale bookkeeping file");
                }
            }
        }
        Ok(())
    }
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
