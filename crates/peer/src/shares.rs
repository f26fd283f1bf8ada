//! What this peer can serve: its complete files and the verified chunks of its partial downloads.
//! Shared by the upload server (lookups), the tracker session (re-registration) and downloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chunkstore::Partial;
use proto::tracker::{RegisterFile, RejectReason};
use proto::{FileMeta, Hash, Have};
use tokio::sync::broadcast;

/// Chunk announcements an upload connection may fall behind by before it re-reads the bitmap.
pub(crate) const NEWS_BACKLOG: usize = 1024;

/// One served file.
#[derive(Clone)]
pub enum Shared {
    /// A complete, verified file in the share folder.
    Complete(Arc<FileMeta>),
    /// A download in progress: its verified chunks are served.
    Partial {
        /// The download's chunks on disk.
        partial: Partial,
        /// Every newly stored chunk's index, for upload connections to announce (see
        /// [`proto::peer::PeerResponse::Have`]).
        news: broadcast::Sender<u32>,
    },
}

impl Shared {
    /// Its metadata.
    pub fn meta(&self) -> &FileMeta {
        match self {
            Shared::Complete(m) => m,
            Shared::Partial { partial, .. } => partial.meta(),
        }
    }

    /// The chunks held now.
    pub fn have(&self) -> Have {
        match self {
            Shared::Complete(_) => Have::Complete,
            Shared::Partial { partial, .. } => Have::Partial(partial.have()),
        }
    }

    /// A partial download with a fresh news channel.
    pub fn partial(partial: Partial) -> Shared {
        Shared::Partial { partial, news: broadcast::channel(NEWS_BACKLOG).0 }
    }
}

/// A served file a tracker refused to register: other peers cannot find it there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// The file.
    pub name: String,
    /// Its root here.
    pub root: Hash,
    /// Why it was refused: for a name registered with other content, the holders' root.
    pub reason: RejectReason,
}

/// The set of served files, by name, and the ones trackers refused. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shares {
    inner: Arc<RwLock<HashMap<String, Shared>>>,
    refused: Arc<Mutex<BTreeMap<String, Refusal>>>,
}

impl Shares {
    /// The file of that name, if served.
    pub fn get(&self, name: &str) -> Option<Shared> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Adds or replaces a served file.
    pub fn insert(&self, shared: Shared) {
        let name = shared.meta().name.clone();
        self.inner.write().unwrap_or_else(PoisonError::into_inner).insert(name, shared);
    }

    /// Serves the complete file `meta` unless a download of that name is in progress (its
    /// partial belongs to the downloader), in one step under the lock: the watcher's insert, which
    /// a download starting meanwhile must win. Returns whether it was inserted.
    pub(crate) fn insert_complete_unless_partial(&self, meta: Arc<FileMeta>) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if matches!(inner.get(&meta.name), Some(Shared::Partial { .. })) {
            return false;
        }
        inner.insert(meta.name.clone(), Shared::Complete(meta));
        true
    }

    /// Stops serving the file `name` if it is a complete file (a partial download belongs to its
    /// downloader, which alone may drop it), forgetting any refusal of it. Returns its metadata
    /// if it was served, for the caller to unregister it.
    pub(crate) fn remove_complete(&self, name: &str) -> Option<Arc<FileMeta>> {
        let removed = {
            let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            match inner.get(name) {
                Some(Shared::Complete(_)) => match inner.remove(name) {
                    Some(Shared::Complete(meta)) => Some(meta),
                    _ => None,
                },
                _ => None,
            }
        };
        if removed.is_some() {
            self.refused.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        }
        removed
    }

    /// Every served file with the chunks held, for a Register request.
    pub fn snapshot(&self) -> Vec<RegisterFile> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.values().map(|s| RegisterFile { meta: s.meta().clone(), have: s.have() }).collect()
    }

    /// The names of every served file.
    pub fn names(&self) -> Vec<String> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// Number of served files.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when nothing is served.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a Register reply: files refused are remembered (to be tried again, and reported),
    /// files accepted are forgotten from the refusals.
    pub(crate) fn record_results(&self, sent: &[(String, Hash)], results: &[Result<(), RejectReason>]) {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        for ((name, root), result) in sent.iter().zip(results) {
            match result {
                Ok(()) => {
                    refused.remove(name);
                }
                Err(reason) => {
                    refused.insert(name.clone(), Refusal { name: name.clone(), root: *root, reason: reason.clone() });
                }
            }
        }
    }

    /// The files refused and still served with the content that was refused, by name.
    pub fn refused(&self) -> Vec<Refusal> {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        // A file since removed, replaced or registered elsewhere is no longer refused here.
        refused.retain(|name, r| self.get(name).is_some_and(|s| s.meta().root == r.root));
        refused.values().cloned().collect()
    }

    /// The refused files `accept` takes, as a Register request would carry them: a name refused
    /// because another content held it is accepted once that content's last holder leaves.
    pub(crate) fn refused_files(&self, accept: impl Fn(&str) -> bool) -> Vec<RegisterFile> {
        let names: Vec<String> = self.refused().into_iter().map(|r| r.name).filter(|n| accept(n)).collect();
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .filter_map(|n| inner.get(n))
            .map(|s| RegisterFile { meta: s.meta().clone(), have: s.have() })
            .collect()
    }
}

/// The (name, root) of each file in a Register request, to pair with the reply's results.
pub(crate) fn sent(files: &[RegisterFile]) -> Vec<(String, Hash)> {
    files.iter().map(|f| (f.meta.name.clone(), f.meta.root)).collect()
}
