//! A peer node: its share folder, upload server, tracker session and downloads, wired together.
//! Tests and benchmarks start nodes in-process; the `peer` binary is a thin shell around one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chunkstore::Store;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use crate::addr::HostPort;
use crate::batch::{self, BatchOptions, BatchReport, Target};
use crate::download::{self, Context, DownloadConfig, DownloadOptions, DownloadReport, SourceBook};
use crate::error::Error;
use crate::lock::FolderLock;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::serve::{self, ServeConfig, UploadStats, Uploader};
use crate::session::{FileFilter, Link, Registration, SessionConfig, TrackerSession};
use crate::shares::{Shared, Shares};
use crate::task::TaskGroup;
use crate::trackers::{supervise, Routes, Trackers};

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The trackers (a host name is resolved at every connect). With several, each file is the
    /// responsibility of one at a time (see `trackers.rs`); every peer must be given the same
    /// list.
    pub trackers: Vec<HostPort>,
    /// The share folder: files in it are served, downloads land in it (their partial data in
    /// its `.p2p/partial`, created at the first download, so that placing a finished file is an
    /// atomic rename on one file system).
    pub share: PathBuf,
    /// Where serving state lives (the hash cache), so that serving writes nothing in the share
    /// and a read-only share can be served. `None`: the share's own `.p2p` folder. (The `peer`
    /// binary defaults to a folder under the user's state directory, keyed by the share's path.)
    pub state_dir: Option<PathBuf>,
    /// Where to accept other peers (port 0 for any). `[::]` is every interface of both families
    /// (IPv4 alone on a host without IPv6).
    pub listen: SocketAddr,
    /// The endpoint other peers should use, when not the listener's (port forwarding, several
    /// interfaces); a port of 0 means the listener's.
    pub announce: Option<HostPort>,
    /// Upload cap for the whole process, bytes per second.
    pub upload_rate: Option<u64>,
    /// Download cap for the whole process, bytes per second.
    pub download_rate: Option<u64>,
    /// Upload server settings.
    pub serve: ServeConfig,
    /// Downloader settings.
    pub download: DownloadConfig,
    /// Deadline for connecting to the tracker and for each tracker reply.
    pub request_timeout: Duration,
    /// Watch the share folder while running: files added are hashed and registered, changed
    /// ones re-registered, removed ones unregistered (`watch.rs`). Off by default here; `peer
    /// serve` turns it on.
    pub watch: bool,
    /// With `watch`: how long a file must stay unchanged before it is looked at, and again
    /// before it is hashed, so a file still being written is never registered half-written.
    pub watch_settle: Duration,
}

impl NodeConfig {
    /// Defaults: listen on every interface (both families) on any port, no rate caps.
    pub fn new(tracker: impl Into<HostPort>, share: impl Into<PathBuf>) -> Self {
        Self {
            trackers: vec![tracker.into()],
            share: share.into(),
            state_dir: None,
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            announce: None,
            upload_rate: None,
            download_rate: None,
            serve: ServeConfig::default(),
            download: DownloadConfig::default(),
            request_timeout: Duration::from_secs(10),
            watch: false,
            watch_settle: crate::watch::DEFAULT_SETTLE,
        }
    }
}

/// What a node's upload server has done: for `serve`'s reports and for monitoring.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct UploadSnapshot {
    /// Bytes of chunk data uploaded.
    pub uploaded_bytes: u64,
    /// Downloader connections accepted so far.
    pub connections_opened: u64,
    /// Downloader connections open now.
    pub connections_open: u64,
}

/// A running peer. Dropping it without [`Node::shutdown`] still stops its tasks (without
/// waiting for them): the upload server, the tracker session (which says Leave) and downloads.
pub struct Node {
    ctx: Context,
    /// The share and state folders' locks: one process per share.
    _lock: FolderLock,
    uploads: Arc<UploadStats>,
    /// Every task of the node; cancelled on shutdown: stops the server, the session (which says
    /// Leave) and downloads.
    tasks: TaskGroup,
    /// Cancels `shutdown` when the node is dropped, so a node dropped without [`Node::shutdown`]
    /// (or a `start` abandoned halfway) leaves no task running.
    _stop_on_drop: DropGuard,
}

impl Node {
    /// Opens the share folder (hashing new files, resuming partial downloads), starts serving, and
    /// registers everything with the tracker. Fails if the tracker cannot be reached.
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        if config.trackers.is_empty() {
            return Err(Error::NoTrackers);
        }
        let (share, state) = (config.share.clone(), config.state_dir.clone());
        let (store, shares, lock) = tokio::task::spawn_blocking(move || open_share(share, state))
            .await
            .map_err(|e| Error::Io { action: "scan the share folder", source: std::io::Error::other(e) })??;
        let bind = |source| Error::Listen { addr: config.listen, source };
        let (listener, dual_stack) = proto::net::listen(config.listen).map_err(bind)?;
        let listener = TcpListener::from_std(listener).map_err(bind)?;
        let listen = listener.local_addr().map_err(|source| Error::Io { action: "read the listen address", source })?;
        let tasks = TaskGroup::new(CancellationToken::new());
        // From here on, returning early or being dropped mid-start stops what was spawned.
        let stop_on_drop = tasks.token().clone().drop_guard();
        let uploads = Arc::new(UploadStats::default());
        let metrics = Arc::new(Metrics::new(uploads.clone()));
        let uploader = Arc::new(Uploader::new(
            shares.clone(),
            store.clone(),
            Arc::new(RateLimiter::new(config.upload_rate)),
            uploads.clone(),
            config.serve.clone(),
            metrics.clone(),
        ));
        tasks.spawn(tracing::info_span!("serve", %listen), |token| serve::serve(listener, uploader, token));

        let routes = Arc::new(Routes::new(&config.trackers));
        let several = config.trackers.len() > 1;
        let mut sessions = Vec::new();
        for (i, tracker) in config.trackers.iter().enumerate() {
            let session_config = SessionConfig { tracker: tracker.clone(), request_timeout: config.request_timeout };
            // With several trackers, each registers the files it is responsible for.
            let only: Option<FileFilter> = several.then(|| {
                let routes = routes.clone();
                Arc::new(move |name: &str| routes.primary(name, Some(i)) == i) as FileFilter
            });
            let registration =
                Registration { listen, dual_stack, announce: config.announce.clone(), shares: shares.clone(), only };
            let (session, actor) = TrackerSession::start(session_config, Some(registration), tasks.token().clone());
            tasks.spawn(tracing::info_span!("session", %tracker), |_| actor);
            sessions.push(session);
        }
        // The first attempts decide whether to start: an endpoint nothing would listen on, or a
        // tracker that refuses this peer, is an error now; an unreachable tracker is tried again
        // in the background (the peer serves meanwhile, and downloads wait for it).
        for (session, tracker) in sessions.iter().zip(&config.trackers) {
            let mut link = session.link();
            let first = link.wait_for(|l| !matches!(l, Link::Connecting)).await.map(|l| l.clone());
            match first {
                Ok(Link::Down { error, .. }) if error.is_permanent() => {
                    tasks.cancel();
                    tasks.wait().await;
                    return Err(Error::TrackerRefused { tracker: tracker.clone(), reason: error });
                }
                Ok(Link::Down { error, .. }) => {
                    warn!(%tracker, %error, "tracker unreachable; trying again in the background")
                }
                _ => {}
            }
        }
        let trackers = Trackers::new(routes, sessions, config.request_timeout);
        if several {
            let (trackers, shares) = (trackers.clone(), shares.clone());
            tasks.spawn(tracing::info_span!("trackers"), |token| supervise(trackers, shares, token));
        }
        if config.watch {
            let (store, shares, trackers, settle) =
                (store.clone(), shares.clone(), trackers.clone(), config.watch_settle);
            tasks
                .spawn(tracing::info_span!("watch"), |token| crate::watch::run(store, shares, trackers, settle, token));
        }
        info!(%listen, files = shares.len(), "peer started");
        let ctx = Context {
            trackers,
            store,
            shares,
            listen,
            limiter: Arc::new(RateLimiter::new(config.download_rate)),
            book: SourceBook::new(config.download.connections_per_source),
            config: config.download,
            metrics,
        };
        Ok(Node { ctx, _lock: lock, uploads, tasks, _stop_on_drop: stop_on_drop })
    }

    /// Where this node accepts other peers.
    pub fn listen_addr(&self) -> SocketAddr {
        self.ctx.listen
    }

    /// The node's trackers, for list and locate requests.
    pub fn trackers(&self) -> &Trackers {
        &self.ctx.trackers
    }

    /// What this node serves.
    pub fn shares(&self) -> &Shares {
        &self.ctx.shares
    }

    /// The chunk store of the share folder.
    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// Bytes of chunk data uploaded so far.
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploads.uploaded.load(Ordering::Relaxed)
    }

    /// What the upload server has done so far.
    pub fn upload_stats(&self) -> UploadSnapshot {
        UploadSnapshot {
            uploaded_bytes: self.uploads.uploaded.load(Ordering::Relaxed),
            connections_opened: self.uploads.opened.load(Ordering::Relaxed),
            connections_open: self.uploads.open.load(Ordering::Relaxed),
        }
    }

    /// The node's metrics (served as `GET /metrics` by the HTTP API).
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// Whether the node is registered with a tracker now: the readiness rule of `GET /ready`
    /// (at least one tracker connected and registered; with several, files whose tracker is
    /// down move to a live one). Returns how many of its trackers are.
    pub fn trackers_up(&self) -> (usize, usize) {
        let sessions = self.ctx.trackers.sessions();
        let up = sessions.iter().filter(|s| matches!(*s.link().borrow(), Link::Up { .. })).count();
        (up, sessions.len())
    }

    /// A token that shuts the node down when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token().clone()
    }

    /// Downloads a file from the swarm into the share folder, serving its chunks as they arrive.
    pub async fn download(&self, name: &str, opts: DownloadOptions) -> Result<DownloadReport, Error> {
        download::download(&self.ctx, name, opts, self.tasks.child()).await
    }

    /// Downloads many files (see [`crate::resolve`] for turning names, prefixes, patterns and
    /// roots into targets), a bounded number at a time, serving each as it arrives.
    pub async fn download_all(&self, targets: Vec<Target>, opts: BatchOptions) -> Result<BatchReport, Error> {
        batch::run(&self.ctx, targets, opts, &self.tasks).await
    }

    /// A task group of its own, cancelled with the node's or alone: the HTTP API runs each of
    /// its downloads in one, so cancelling one leaves the others.
    pub(crate) fn child_tasks(&self) -> TaskGroup {
        self.tasks.child()
    }

    /// [`Node::download_all`] with the batch's tasks in `group` (see [`Node::child_tasks`]).
    pub(crate) async fn download_all_in(
        &self,
        targets: Vec<Target>,
        opts: BatchOptions,
        group: &TaskGroup,
    ) -> Result<BatchReport, Error> {
        batch::run(&self.ctx, targets, opts, group).await
    }

    /// Stops serving and downloading, tells the tracker Leave, and waits for every task (at most a
    /// few seconds). Partial downloads stay on disk for the next run.
    pub async fn shutdown(self) {
        self.tasks.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            warn!("peer tasks did not stop within 5 s");
        }
    }
}

fn open_share(share: PathBuf, state: Option<PathBuf>) -> Result<(Store, Shares, FolderLock), Error> {
    let io = |action| move |source| Error::Io { action, source };
    if std::fs::metadata(&share).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Io {
            action: "use the share folder",
            source: std::io::Error::other(format!("{} is a file, not a folder", share.display())),
        });
    }
    // Created first, so both can be locked before anything in them is touched.
    std::fs::create_dir_all(&share).map_err(io("create the share folder"))?;
    if let Some(state) = &state {
        std::fs::create_dir_all(state).map_err(io("create the state folder"))?;
    }
    let lock =
        FolderLock::acquire(&[Some(share.as_path()), state.as_deref()].into_iter().flatten().collect::<Vec<_>>())?;
    let store = match state {
        Some(state) => Store::open_with_state(share, state)?,
        None => Store::open(share)?,
    };
    let shares = Shares::default();
    for meta in store.scan()? {
        shares.insert(Shared::Complete(Arc::new(meta)));
    }
    // Partial downloads from an earlier run: their verified chunks are served and registered.
    for meta in store.partials()? {
        match store.open_partial(&meta) {
            Ok(p) => shares.insert(Shared::partial(p)),
            Err(e) => warn!(name = meta.name, error = %e, "cannot resume partial download"),
        }
    }
    Ok((store, shares, lock))
}
