//! What this peer can serve: its complete files and the verified chunks of its partial downloads.
//! Shared by the upload server (lookups), the tracker session (re-registration) and downloads.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use chunkstore::Partial;
use proto::tracker::RegisterFile;
use proto::{FileMeta, Have};
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

/// The set of served files, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Shares {
    inner: Arc<RwLock<HashMap<String, Shared>>>,
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
}
