//! Watched shares: files added to the share folder while the node runs are hashed and
//! registered, changed ones re-registered under their new content, and removed ones withdrawn
//! (Unregister), without a restart.
//!
//! The folder is watched recursively with `notify` (inotify on Linux). Events only say which names
//! to look at; what is shared is always decided from the disk, through the chunk store:
//!
//! 1. An event for a name makes it *pending*. Once no event came for it for the settle time, its
//!    state on disk (length, modification time, inode) is read; one settle time later it is
//!    read again, and only if nothing changed between the two (and no event came) is the file
//!    hashed. A file written slowly keeps changing, so it is never hashed half-written as long
//!    as its writer pauses for less than the settle time.
//! 2. Hashing goes through the store's hash cache (`Store::hash_files`, the scan's per-file
//!    hashing), on a blocking thread; the store checks the file's state before and after, and
//!    a file that changed meanwhile (or got an event) starts over.
//! 3. New content is shared and registered with the file's tracker; content that replaces a
//!    served file is registered after an Unregister of the old (a tracker refuses a name's
//!    second content while it is held); the same content (a finished download, which its
//!    downloader registered, or a file touched) changes nothing.
//! 4. A name that is gone (deleted, renamed away, replaced by a link) is withdrawn, with every
//!    served file under it if it was a folder. A folder that appears, a queue overflow or a
//!    watcher's request to rescan makes the whole folder reconciled: listed (no hashing), every
//!    served file that is gone withdrawn, every file new or changed made pending.
//!
//! Ignored: the `.p2p` folder (partial downloads), a download's temporary `.p2p-*.tmp` copies,
//! and names a download of this node is filling (served as partial). A watcher that cannot be
//! set up, or that fails later (the inotify watch limit, say), is a warning: the node keeps
//! serving what it has.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chunkstore::{Entry, FileState, Store};
use futures::StreamExt;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use proto::tracker::RegisterFile;
use proto::{FileMeta, Have};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::shares::{Shared, Shares};
use crate::trackers::Trackers;

/// How long a file must go without changing before it is looked at, and again before it is
/// hashed (`NodeConfig::watch_settle`).
pub(crate) const DEFAULT_SETTLE: Duration = Duration::from_millis(500);

/// Notices the watcher's thread queues for the watch task. When the task falls this far behind,
/// further events are dropped and the folder is reconciled instead: a burst (a large folder
/// copied in) costs one listing, not unbounded memory.
pub(crate) const EVENT_BACKLOG: usize = 4096;

/// Unregisters of withdrawn files in flight at once.
const UNREGISTER_CONCURRENCY: usize = 16;

/// Files registered in one Register, so each stays a small frame (as retries of refused files).
const REGISTER_BATCH: usize = 64;

/// What the watcher's thread tells the watch task.
#[derive(Debug)]
enum Notice {
    /// Something happened to these paths.
    Paths(Vec<PathBuf>),
    /// Events were lost (the kernel's queue overflowed): look at everything.
    Rescan,
    /// The watcher failed (e.g. the inotify watch limit): in words.
    Failed(String),
}

/// A name waiting to be looked at.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The last event for it, or the last look at it.
    since: Instant,
    /// Its state at the last look, if it was a file then.
    seen: Option<FileState>,
}

/// Watches the share folder of `store` until `stop`, keeping `shares` and the trackers in step
/// with it (see the module docs). Returns at once, with a warning, if the folder cannot be
/// watched.
pub(crate) async fn run(store: Store, shares: Shares, trackers: Trackers, settle: Duration, stop: CancellationToken) {
    let (tx, rx) = mpsc::channel(EVENT_BACKLOG);
    let overflow = Arc::new(AtomicBool::new(false));
    let root = store.root().to_path_buf();
    // Setting up a recursive watch walks every folder: a blocking job.
    let watcher = {
        let (root, overflow) = (root.clone(), overflow.clone());
        tokio::task::spawn_blocking(move || start_watcher(&root, tx, overflow)).await
    };
    let watcher = match watcher {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            warn!(share = %root.display(), error = %e, "cannot watch the share folder: files added or removed will be \
                   noticed only at the next start; serving what is shared now");
            return;
        }
        Err(_) => return,
    };
    info!(share = %root.display(), settle_ms = settle.as_millis() as u64, "watching the share folder");
    let mut w = Watch {
        store,
        shares,
        trackers,
        settle: settle.max(Duration::from_millis(1)),
        root,
        pending: HashMap::new(),
        known: HashMap::new(),
        // Once at start: whatever changed between the node's scan and the watch.
        rescan_at: Some(Instant::now()),
        events: rx,
        overflow,
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = w.run() => {}
    }
    drop(watcher);
}

/// The `notify` watcher on `root`, recursive, queueing notices into `tx`.
fn start_watcher(
    root: &Path,
    tx: mpsc::Sender<Notice>,
    overflow: Arc<AtomicBool>,
) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let notice = match event {
            Ok(e) if e.need_rescan() => Notice::Rescan,
            // Opening and reading a file (an upload, our own hashing) changes nothing.
            Ok(e) if matches!(e.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) => return,
            Ok(e) => Notice::Paths(e.paths),
            Err(e) => Notice::Failed(e.to_string()),
        };
        if tx.try_send(notice).is_err() {
            // Full (or the task is gone): the task reconciles once it has caught up.
            overflow.store(true, Ordering::Relaxed);
        }
    })?;
    watcher.watch(root, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// The watch task's state.
struct Watch {
    store: Store,
    shares: Shares,
    trackers: Trackers,
    settle: Duration,
    /// The share folder (canonical), which event paths are under.
    root: PathBuf,
    pending: HashMap<String, Pending>,
    /// The state on disk each served complete file was last hashed (or found in the cache) at:
    /// a file seen again in that state needs no hashing.
    known: HashMap<String, FileState>,
    /// When to reconcile the whole folder, if due.
    rescan_at: Option<Instant>,
    events: mpsc::Receiver<Notice>,
    overflow: Arc<AtomicBool>,
}

impl Watch {
    async fn run(&mut self) {
        loop {
            let next = self.pending.values().map(|p| p.since + self.settle).chain(self.rescan_at).min();
            let wake = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                notice = self.events.recv() => match notice {
                    Some(n) => self.take(n),
                    None => return,
                },
                _ = wake => {}
            }
            self.drain();
            let now = Instant::now();
            if self.rescan_at.is_some_and(|t| t <= now) {
                self.rescan_at = None;
                self.reconcile().await;
            }
            self.look().await;
        }
    }

    /// Takes every notice already queued, and a reconcile if some were dropped.
    fn drain(&mut self) {
        while let Ok(n) = self.events.try_recv() {
            self.take(n);
        }
        if self.overflow.swap(false, Ordering::Relaxed) {
            debug!("file events dropped; reconciling the share folder");
            self.rescan_soon();
        }
    }

    fn take(&mut self, notice: Notice) {
        match notice {
            Notice::Paths(paths) => {
                let now = Instant::now();
                for name in paths.iter().filter_map(|p| share_name(&self.root, p)) {
                    self.pending.insert(name, Pending { since: now, seen: None });
                }
            }
            Notice::Rescan => self.rescan_soon(),
            Notice::Failed(e) => {
                warn!(error = %e, "watching the share folder failed (for the inotify watch limit, raise \
                       fs.inotify.max_user_watches); serving what is shared, reconciling the folder");
                self.rescan_soon();
            }
        }
    }

    /// A reconcile after the settle time, so a burst of changes is looked at once.
    fn rescan_soon(&mut self) {
        let at = Instant::now() + self.settle;
        self.rescan_at = Some(self.rescan_at.map_or(at, |t| t.min(at)));
    }

    /// Looks at the names that settled: withdraws what is gone, asks for a reconcile for a new
    /// folder, and hashes the files that stayed the same for a settle time.
    async fn look(&mut self) {
        let now = Instant::now();
        let due: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.since + self.settle <= now).map(|(n, _)| n.clone()).collect();
        if due.is_empty() {
            return;
        }
        let store = self.store.clone();
        let looked = {
            let due = due.clone();
            tokio::task::spawn_blocking(move || due.iter().map(|n| store.entry(n)).collect::<Vec<_>>()).await
        };
        let Ok(looked) = looked else { return };
        let now = Instant::now();
        let mut stable = Vec::new();
        for (name, entry) in due.into_iter().zip(looked) {
            let Some(pending) = self.pending.get(&name).copied() else { continue };
            match entry {
                Ok(Entry::File(state)) => {
                    if self.own_download(&name) || self.unchanged(&name, state) {
                        self.pending.remove(&name);
                    } else if pending.seen == Some(state) {
                        self.pending.remove(&name);
                        stable.push((name, state));
                    } else {
                        self.pending.insert(name, Pending { since: now, seen: Some(state) });
                    }
                }
                Ok(Entry::Folder) => {
                    // Its files may have arrived before the watch on it did: list them.
                    self.pending.remove(&name);
                    self.rescan_soon();
                }
                Ok(Entry::Missing | Entry::Other) => {
                    self.pending.remove(&name);
                    self.withdraw(&name).await;
                }
                Err(e) => {
                    self.pending.remove(&name);
                    warn!(name, error = %e, "cannot examine a file of the share folder");
                }
            }
        }
        if !stable.is_empty() {
            self.hash(stable).await;
        }
    }

    /// A download of this node is filling the name: its downloader shares and registers it.
    fn own_download(&self, name: &str) -> bool {
        matches!(self.shares.get(name), Some(Shared::Partial { .. }))
    }

    /// Served in this very state already.
    fn unchanged(&self, name: &str, state: FileState) -> bool {
        self.known.get(name) == Some(&state) && matches!(self.shares.get(name), Some(Shared::Complete(_)))
    }

    /// Hashes the files that settled, each expected in the state it settled in, and shares what
    /// they hold. One that changed meanwhile (its state differs, or an event came) starts over.
    async fn hash(&mut self, files: Vec<(String, FileState)>) {
        let store = self.store.clone();
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let Ok(hashed) = tokio::task::spawn_blocking(move || store.hash_files(&names)).await else { return };
        // Events that came while hashing say which files changed meanwhile.
        self.drain();
        let mut register = Vec::new();
        for ((name, expected), result) in files.into_iter().zip(hashed) {
            if self.pending.contains_key(&name) {
                continue;
            }
            match result {
                Ok((state, meta)) if state == expected => {
                    if let Some(file) = self.share(state, meta).await {
                        register.push(file);
                    }
                }
                Ok(_) => {
                    self.pending.insert(name, Pending { since: Instant::now(), seen: None });
                }
                Err(e) => warn!("{e}"),
            }
        }
        for files in chunks(register, REGISTER_BATCH) {
            let n = files.len();
            match self.trackers.register(files).await {
                Ok(()) => debug!(files = n, "registered files added to the share folder"),
                // Shared all the same: a tracker that is down gets them when it is back.
                Err(e) => debug!(files = n, error = %e, "registering files added to the share folder failed"),
            }
        }
    }

    /// Shares `meta` (hashed from the file in `state`), returning what to register: nothing if
    /// that content is served under the name already, or a download of this node took the name
    /// meanwhile. Other content served under the name is unregistered first.
    async fn share(&mut self, state: FileState, meta: FileMeta) -> Option<RegisterFile> {
        let name = meta.name.clone();
        match self.shares.get(&name) {
            Some(Shared::Partial { .. }) => return None,
            Some(Shared::Complete(served)) if served.same_content(&meta) => {
                self.known.insert(name, state);
                return None;
            }
            Some(Shared::Complete(_)) => {
                if !self.shares.insert_complete_unless_partial(Arc::new(meta.clone())) {
                    return None;
                }
                info!(name, root = %meta.root, "a shared file changed; registering its new content");
                if let Err(e) = self.trackers.unregister(&name).await {
                    warn!(name, error = %e, "cannot unregister the old content; the new may be refused until it is");
                }
            }
            None => {
                if !self.shares.insert_complete_unless_partial(Arc::new(meta.clone())) {
                    return None;
                }
                info!(name, root = %meta.root, "sharing a file added to the share folder");
            }
        }
        self.known.insert(name, state);
        Some(RegisterFile { meta, have: Have::Complete })
    }

    /// Stops serving `name`, and every complete file under it if it was a folder, and
    /// unregisters them.
    async fn withdraw(&mut self, name: &str) {
        let folder = format!("{name}/");
        let names: Vec<String> =
            self.shares.names().into_iter().filter(|n| n == name || n.starts_with(&folder)).collect();
        let mut gone = Vec::new();
        for n in names {
            self.known.remove(&n);
            if self.shares.remove_complete(&n).is_some() {
                gone.push(n);
            }
        }
        // A folder of many files is withdrawn a few requests at a time, not one round trip each.
        let trackers = &self.trackers;
        futures::stream::iter(gone)
            .for_each_concurrent(UNREGISTER_CONCURRENCY, |n| async move {
                info!(name = n, "a shared file is gone from the share folder; withdrawing it");
                if let Err(e) = trackers.unregister(&n).await {
                    warn!(name = n, error = %e, "cannot unregister a removed file; the tracker may list it until this \
                           peer's session ends");
                }
            })
            .await;
    }

    /// Lists the whole folder (hashing nothing): every served complete file that is gone is
    /// withdrawn, every file new or changed since it was hashed becomes pending, already seen
    /// in its current state (so it is hashed after one settle time if it stays so).
    async fn reconcile(&mut self) {
        let store = self.store.clone();
        let listed = match tokio::task::spawn_blocking(move || store.list_files()).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list the share folder; serving what is shared");
                return;
            }
            Err(_) => return,
        };
        let on_disk: HashMap<String, FileState> = listed.into_iter().collect();
        for name in self.shares.names() {
            if !on_disk.contains_key(&name) && matches!(self.shares.get(&name), Some(Shared::Complete(_))) {
                self.withdraw(&name).await;
            }
        }
        let now = Instant::now();
        for (name, state) in on_disk {
            if self.own_download(&name) || self.unchanged(&name, state) || self.pending.contains_key(&name) {
                continue;
            }
            self.pending.insert(name, Pending { since: now, seen: Some(state) });
        }
    }
}

/// The share name of `path`, an event's path under the share folder `root`: relative, with `/`
/// separators. `None` for what is never shared: the folder itself, the `.p2p` folder (in any
/// letter case) and everything in it, a download's temporary copies (`.p2p-*.tmp`), and names
/// that are not UTF-8.
fn share_name(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            _ => return None,
        }
    }
    let first = parts.first()?;
    if first.eq_ignore_ascii_case(proto::name::RESERVED_DIR) {
        return None;
    }
    let last = parts.last()?;
    if last.starts_with(".p2p-") && last.ends_with(".tmp") {
        return None;
    }
    Some(parts.join("/"))
}

/// `v` in pieces of at most `n`.
fn chunks<T>(mut v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while v.len() > n {
        let rest = v.split_off(n);
        out.push(std::mem::replace(&mut v, rest));
    }
    if !v.is_empty() {
        out.push(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_paths_become_share_names_and_bookkeeping_is_ignored() {
        let root = Path::new("/srv/share");
        let name = |p: &str| share_name(root, Path::new(p));
        assert_eq!(name("/srv/share/a.bin").as_deref(), Some("a.bin"));
        assert_eq!(name("/srv/share/data/v1/a.bin").as_deref(), Some("data/v1/a.bin"));
        assert_eq!(name("/srv/share"), None, "the folder itself");
        assert_eq!(name("/srv/other/a.bin"), None, "outside");
        assert_eq!(name("/srv/share/.p2p/partial/0123.data"), None);
        assert_eq!(name("/srv/share/.P2P/x"), None, "any letter case");
        assert_eq!(name("/srv/share/data/.p2p-0123.tmp"), None, "a download's temporary copy");
        assert_eq!(name("/srv/share/data/.p2p"), Some("data/.p2p".into()), "only the top folder is reserved");
    }

    /// The watcher's thread never blocks on a task that falls behind: past the queue's room,
    /// events are dropped and the overflow flag asks for a reconcile instead.
    #[test]
    fn a_full_queue_sets_the_overflow_flag_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let overflow = Arc::new(AtomicBool::new(false));
        let _watcher = start_watcher(dir.path(), tx, overflow.clone()).unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !overflow.load(Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "the overflow was never flagged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn register_batches_hold_at_most_the_limit() {
        let sizes = |v: Vec<Vec<u32>>| v.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(chunks((0..130).collect(), REGISTER_BATCH)), vec![64, 64, 2]);
        assert_eq!(sizes(chunks((0..64).collect(), REGISTER_BATCH)), vec![64]);
        assert!(chunks(Vec::<u32>::new(), REGISTER_BATCH).is_empty());
    }
}
