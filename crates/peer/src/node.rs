//! A peer node: its share folder, upload server, tracker session and downloads, wired together.
//! Tests and benchmarks start nodes in-process; the `peer` binary is a thin shell around one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chunkstore::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use crate::download::{self, Context, DownloadConfig, DownloadOptions, DownloadReport};
use crate::error::Error;
use crate::ratelimit::RateLimiter;
use crate::serve::{self, ServeConfig, Uploader};
use crate::session::{Registration, SessionConfig, TrackerSession};
use crate::shares::{Shared, Shares};
use crate::task::TaskGroup;

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// The share folder: files in it are served, downloads land in it.
    pub share: PathBuf,
    /// Where to accept other peers (port 0 for any).
    pub listen: SocketAddr,
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
}

impl NodeConfig {
    /// Defaults: listen on all interfaces on any port, no rate caps.
    pub fn new(tracker: SocketAddr, share: impl Into<PathBuf>) -> Self {
        Self {
            tracker,
            share: share.into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            upload_rate: None,
            download_rate: None,
            serve: ServeConfig::default(),
            download: DownloadConfig::default(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A running peer. Dropping it without [`Node::shutdown`] still stops its tasks (without
/// waiting for them): the upload server, the tracker session (which says Leave) and downloads.
pub struct Node {
    ctx: Context,
    uploaded: Arc<AtomicU64>,
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
        let share = config.share.clone();
        let (store, shares) = tokio::task::spawn_blocking(move || open_share(share))
            .await
            .map_err(|e| Error::Io { action: "scan the share folder", source: std::io::Error::other(e) })??;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Io { action: "bind the listen address", source })?;
        let listen = listener.local_addr().map_err(|source| Error::Io { action: "read the listen address", source })?;
        let tasks = TaskGroup::new(CancellationToken::new());
        // From here on, returning early or being dropped mid-start stops what was spawned.
        let stop_on_drop = tasks.token().clone().drop_guard();
        let uploaded = Arc::new(AtomicU64::new(0));
        let uploader = Arc::new(Uploader::new(
            shares.clone(),
            store.clone(),
            Arc::new(RateLimiter::new(config.upload_rate)),
            uploaded.clone(),
            config.serve.clone(),
        ));
        tasks.spawn(tracing::info_span!("serve", %listen), |token| serve::serve(listener, uploader, token));

        let session_config = SessionConfig { tracker: config.tracker, request_timeout: config.request_timeout };
        let registration = Registration { listen, shares: shares.clone() };
        let session = match TrackerSession::connect(session_config, Some(registration), tasks.token().clone()).await {
            Ok((session, actor)) => {
                tasks.spawn(tracing::info_span!("session"), |_| actor);
                session
            }
            Err(e) => {
                tasks.cancel();
                tasks.wait().await;
                return Err(e);
            }
        };
        info!(%listen, files = shares.len(), "peer started");
        let ctx = Context {
            session,
            store,
            shares,
            listen,
            limiter: Arc::new(RateLimiter::new(config.download_rate)),
            config: config.download,
        };
        Ok(Node { ctx, uploaded, tasks, _stop_on_drop: stop_on_drop })
    }

    /// Where this node accepts other peers.
    pub fn listen_addr(&self) -> SocketAddr {
        self.ctx.listen
    }

    /// The tracker session, for list and locate requests.
    pub fn session(&self) -> &TrackerSession {
        &self.ctx.session
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
        self.uploaded.load(Ordering::Relaxed)
    }

    /// A token that shuts the node down when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token().clone()
    }

    /// Downloads a file from the swarm into the share folder, serving its chunks as they arrive.
    pub async fn download(&self, name: &str, opts: DownloadOptions) -> Result<DownloadReport, Error> {
        download::download(&self.ctx, name, opts, self.tasks.child()).await
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

fn open_share(share: PathBuf) -> Result<(Store, Shares), StoreError> {
    let store = Store::open(share)?;
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
    Ok((store, shares))
}
