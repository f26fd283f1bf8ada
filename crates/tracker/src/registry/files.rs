//! The registry's files: by name, and indexed by root hash for Find Root.
//!
//! [`Files`] owns both, and the only ways to add or remove a file ([`Files::insert`],
//! [`Files::remove`]) update both, so the index cannot fall out of step with the map whichever
//! path a file enters or leaves by (Register; Leave, Unregister, session end or expiry, all
//! through `end_holding` in the registry's module). Reads go straight to the map (`Deref`); a file's entry is changed in
//! place through [`Files::get_mut`], which cannot change its name or root (a name's root never
//! changes while it is registered: other content under it is a `ContentConflict`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, Deref};
use std::sync::Arc;

use proto::{FileMeta, Hash, RootPrefix};

use super::FileEntry;

/// The files by name, with their index by root (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Files {
    by_name: BTreeMap<Arc<str>, FileEntry>,
    /// Every file as (root, name), the name shared with `by_name`'s key: the files whose root
    /// starts with a prefix are one range of it, in (root, name) order. A set of pairs rather than
    /// a map of roots to sets of names: one 48-byte element per file, not a set per root.
    by_root: BTreeSet<(Hash, Arc<str>)>,
}

impl Deref for Files {
    type Target = BTreeMap<Arc<str>, FileEntry>;

    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

impl Files {
    /// The entry of the file `name`, to change in place.
    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut FileEntry> {
        self.by_name.get_mut(name)
    }

    /// The map's own key of the file `name` (shared, not copied, by the sessions' sets of names)
    /// with its entry, to change in place.
    pub(super) fn get_key_value_mut(&mut self, name: &str) -> Option<(&Arc<str>, &mut FileEntry)> {
        self.by_name.range_mut::<str, _>((Bound::Included(name), Bound::Included(name))).next()
    }

    /// The key of the file named by `meta`, whose entry is created from `meta` if there is none.
    /// The request's own copy becomes the registry's: metadata is never copied.
    pub(super) fn insert(&mut self, meta: FileMeta) -> Arc<str> {
        if let Some((k, _)) = self.by_name.get_key_value(meta.name.as_str()) {
            return k.clone();
        }
        let key: Arc<str> = Arc::from(meta.name.as_str());
        self.by_root.insert((meta.root, key.clone()));
        self.by_name.insert(key.clone(), FileEntry::new(Arc::new(meta)));
        key
    }

    /// Drops the file `name`, if present.
    pub(super) fn remove(&mut self, name: &str) {
        if let Some((key, file)) = self.by_name.remove_entry(name) {
            self.by_root.remove(&(file.meta.root, key));
        }
    }

    /// The files whose root starts with `prefix`, in (root, name) order: one range of the index
    /// from the lowest root with that prefix, so O(log n) to find plus O(log n) per file taken
    /// (its entry looked up by name); the caller takes as few as it needs.
    pub(super) fn with_root(&self, prefix: RootPrefix) -> impl Iterator<Item = (&Arc<str>, &FileEntry)> + '_ {
        // The lowest key with that root: every name sorts at or after the empty one.
        let from = (prefix.lowest(), Arc::<str>::from(""));
        self.by_root
            .range((Bound::Included(from), Bound::Unbounded))
            .take_while(move |(root, _)| prefix.matches(root))
            .filter_map(|(_, name)| self.by_name.get_key_value(name))
    }

    /// Checks that the index holds exactly every file's (root, name), panicking if not. For tests
    /// and fuzzing: it walks every file.
    pub(super) fn check_invariants(&self) {
        let scan: BTreeSet<(Hash, Arc<str>)> = self.by_name.iter().map(|(n, f)| (f.meta.root, n.clone())).collect();
        assert_eq!(self.by_root, scan, "the index by root is the files' (root, name)");
    }
}
