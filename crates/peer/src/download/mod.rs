//! The downloader: one file, from many sources at once.
//!
//! One chunk's path: a source task (`source.rs`) sends the requests the [`Coordinator`] decided
//! and receives the chunk; it tells the coordinator it was answered (which tops its requests up)
//! and hands the bytes to the writer (`writer.rs`), which verifies them against the chunk hash and
//! writes them to the partial file on a blocking thread, then reports to the coordinator. The
//! coordinator records the chunk as stored (first copy only) and decides to announce it: the
//! driver below tells this peer's upload connections (which announce it to their downloaders, so
//! it is served at once) and queues it for the tracker (`register.rs`, in batches). A poller asks
//! the tracker for locations, bringing in sources and availability for rarest-first.
//!
//! The coordinator is a state machine without I/O (`coordinator.rs`); this module is its driver:
//! it feeds it what the tasks report and carries out what it decides. When every chunk is stored,
//! the file is verified whole (interruptibly) and put in place, and registered as complete.
//! Should that check fail (the disk changed a chunk after it was verified), the chunks found bad
//! are fetched again.

mod book;
mod coordinator;
mod pool;
mod register;
mod scheduler;
mod source;
mod types;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chunkstore::{Finish, Partial, Store, StoreError};
use proto::tracker::{Locations, RegisterFile};
use proto::{FileMeta, Have};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use crate::metrics::{DownloadGauges, Metrics};
use crate::ratelimit::RateLimiter;
use crate::shares::{Shared, Shares, NEWS_BACKLOG};
use crate::task::TaskGroup;
use crate::trackers::Trackers;
pub(crate) use book::SourceBook;
use coordinator::{Action, Coordinator, Input};
use scheduler::SourceId;
use source::SourceContext;
pub use types::{DownloadConfig, DownloadOptions, DownloadReport, Progress, SourceReport};

/// What a download needs from its node.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) trackers: Trackers,
    pub(crate) store: Store,
    pub(crate) shares: Shares,
    /// Where this node listens (as bound: the IP may be unspecified).
    pub(crate) listen: SocketAddr,
    /// The process-wide download cap, shared by every download's sources.
    pub(crate) limiter: Arc<RateLimiter>,
    /// What the process knows of each source (connections, rates), shared by every download.
    pub(crate) book: Arc<SourceBook>,
    pub(crate) config: DownloadConfig,
    /// The node's metrics.
    pub(crate) metrics: Arc<Metrics>,
}

/// Tries at assembling a file whose whole-file check keeps failing before giving up.
const MAX_FINISH_ATTEMPTS: u32 = 3;

/// How long a stopping download waits for its last chunk registrations to reach the tracker.
const REGISTER_DRAIN: Duration = Duration::from_secs(5);

/// Downloads `name` into the share folder, running its tasks in `tasks`. See the module docs.
pub(crate) async fn download(
    ctx: &Context,
    name: &str,
    opts: DownloadOptions,
    tasks: TaskGroup,
) -> Result<DownloadReport, Error> {
    let start = Instant::now();
    // A name that could not be a file in the share folder is refused before anything is asked.
    proto::validate_name(name).map_err(|reason| Error::InvalidName { name: name.to_owned(), reason })?;
    // The deadline covers waiting for a tracker too (one may be down, or not up yet).
    let meta = match opts.deadline {
        Some(d) => tokio::time::timeout(d, ctx.trackers.file_meta(name)).await.map_err(|_| Error::NoTracker(d))??,
        None => ctx.trackers.file_meta(name).await?,
    };
    if let Some(want) = opts.root.as_ref().filter(|want| !want.matches(&meta.root)) {
        return Err(Error::RootMismatch {
            name: name.to_owned(),
            wanted: want.to_string(),
            found: meta.root.to_string(),
        });
    }
    let meta = Arc::new(meta);
    let existing = ctx.shares.get(name);
    match &existing {
        Some(Shared::Complete(m)) if m.same_content(&meta) => {
            let path = ctx.store.root().join(name);
            return Ok(types::report(&meta, path, start, true, 0, (Vec::new(), 0)));
        }
        Some(Shared::Complete(_)) if !opts.replace => return Err(Error::Conflict(name.to_owned())),
        _ => {}
    }
    // The space the rest needs is reserved before anything is fetched: a full disk fails now,
    // not minutes in (the partial stays for a later run).
    let partial = blocking({
        let (store, meta) = (ctx.store.clone(), meta.clone());
        move || {
            let partial = store.open_partial(&meta)?;
            partial.reserve()?;
            Ok(partial)
        }
    })
    .await?;
    // Upload connections listen on the file's news channel for stored chunks. A partial of the
    // same content shared before this run keeps its channel (its connections hear of the new
    // chunks); one of other content does not (they would announce chunks of another file).
    let news = match existing {
        Some(Shared::Partial { partial: old, news }) if old.meta().same_content(&meta) => news,
        _ => broadcast::channel(NEWS_BACKLOG).0,
    };
    ctx.shares.insert(Shared::Partial { partial: partial.clone(), news: news.clone() });
    let have = partial.have();
    let resumed = have.count();
    if resumed > 0 {
        info!(name, resumed, "resuming download");
        let files = vec![RegisterFile { meta: (*meta).clone(), have: Have::Partial(have) }];
        if let Err(e) = ctx.trackers.register(files).await {
            warn!(error = %e, "cannot register resumed chunks; they will be registered on reconnect");
        }
    }

    let mut dl = Download::start(ctx, meta.clone(), partial, news, &opts, tasks);
    dl.replace = opts.replace;
    let deadline = opts.deadline.map(|d| start + d);
    let result = dl.run(&opts, deadline).await;
    let coordinator = dl.stop().await;
    let path = result?;

    ctx.shares.insert(Shared::Complete(meta.clone()));
    // Complete at the tracker now, not chunk by chunk (and whatever registrations were lost).
    let complete = vec![RegisterFile { meta: (*meta).clone(), have: Have::Complete }];
    if let Err(e) = ctx.trackers.register(complete).await {
        warn!(error = %e, "cannot register the finished file; it will be registered on reconnect");
    }
    if let Some(p) = &opts.progress {
        p.send_modify(|p| p.active_sources = 0);
    }
    let rep = types::report(&meta, path, start, false, resumed, coordinator.into_reports());
    info!(name, bytes = meta.length, secs = rep.elapsed_secs, sources = rep.sources.len(), "download complete");
    Ok(rep)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::Store),
        Err(e) => Err(Error::Io { action: "run storage task", source: std::io::Error::other(e) }),
    }
}

/// One download in progress: the coordinator, and the tasks that carry out its decisions.
struct Download {
    coordinator: Coordinator,
    meta: Arc<FileMeta>,
    partial: Partial,
    /// Sources and the poller; cancelled together when the download stops.
    tasks: TaskGroup,
    /// The writer: when the download stops, it finishes the copies it was given (so every chunk
    /// stored on disk is recorded and registered), ending once the sources are gone.
    writer: TaskGroup,
    /// The download's own group, holding `tasks` and the registrations, which outlive them.
    outer: TaskGroup,
    /// Each connected source's request queue and token.
    sources: HashMap<SourceId, (mpsc::UnboundedSender<source::Request>, CancellationToken)>,
    source_cx: Arc<SourceContext>,
    inbox: mpsc::UnboundedReceiver<Input>,
    /// The poller's answers, one at a time.
    locations: mpsc::Receiver<Result<Locations, Error>>,
    /// Tells this peer's upload connections of each stored chunk.
    news: broadcast::Sender<u32>,
    /// Chunks to register with the tracker, and the registering task's token; closed (and
    /// drained) when the download stops.
    register: Option<(mpsc::UnboundedSender<u32>, CancellationToken)>,
    /// Whether the finished file may replace a different one of its name.
    replace: bool,
    /// This download's progress series in the node's metrics, removed when it stops.
    gauges: DownloadGauges,
}

impl Download {
    fn start(
        ctx: &Context,
        meta: Arc<FileMeta>,
        partial: Partial,
        news: broadcast::Sender<u32>,
        opts: &DownloadOptions,
        outer: TaskGroup,
    ) -> Download {
        let tasks = outer.child();
        let writer = outer.child();
        let parallel = std::thread::available_parallelism().map_or(2, |p| p.get()).max(2);
        let (arrived_tx, arrived_rx) = mpsc::channel(parallel);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (locations_tx, locations) = mpsc::channel(1);
        let me = ctx.trackers.endpoint();
        let coordinator = Coordinator::new(
            &meta,
            &partial.have(),
            partial.bytes_done(),
            ctx.config.clone(),
            me,
            rand::random(),
            ctx.book.clone(),
            ctx.metrics.clone(),
        );
        let gauges = ctx.metrics.download_progress(&meta.name, meta.length);
        gauges.set_done(partial.bytes_done());
        if let Some(p) = &opts.progress {
            let _ = p.send(coordinator.progress().clone());
        }
        let span = |what: &'static str| tracing::debug_span!("download", name = meta.name, task = what);
        writer.spawn_until(
            span("writer"),
            writer::run(partial.clone(), arrived_rx, inbox_tx.clone(), parallel, ctx.metrics.disk_write.clone()),
        );
        let poller = poll_locations(ctx.trackers.clone(), meta.name.clone(), ctx.config.poll_interval, locations_tx);
        tasks.spawn_until(span("poller"), poller);
        // Registrations are not cancelled with the rest: what is queued still reaches the tracker.
        let (register_tx, register_rx) = mpsc::unbounded_channel();
        let registrations = register::run(ctx.trackers.clone(), meta.name.clone(), register_rx);
        let register_token = outer.spawn_until(span("register"), registrations);
        let source_cx = Arc::new(SourceContext {
            meta: meta.clone(),
            config: ctx.config.clone(),
            limiter: ctx.limiter.clone(),
            inbox: inbox_tx,
            arrived: arrived_tx,
            book: ctx.book.clone(),
            metrics: ctx.metrics.clone(),
        });
        Download {
            coordinator,
            meta,
            partial,
            tasks,
            writer,
            outer,
            sources: HashMap::new(),
            source_cx,
            inbox,
            locations,
            news,
            register: Some((register_tx, register_token)),
            replace: false,
            gauges,
        }
    }

    /// Fetches every missing chunk and puts the file in place; returns its path.
    async fn run(&mut self, opts: &DownloadOptions, deadline: Option<Instant>) -> Result<PathBuf, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.fetch(opts, deadline).await?;
            match self.finish().await {
                Err(Error::Store(StoreError::WholeFileMismatch { bad_chunks, .. }))
                    if attempt < MAX_FINISH_ATTEMPTS =>
                {
                    warn!(bad_chunks, "chunks changed on disk after they were verified; fetching them again");
                    self.coordinator.lost(&self.partial.have(), self.partial.bytes_done());
                    self.carry_out();
                }
                other => return other,
            }
        }
    }

    /// Runs the swarm until every chunk is stored.
    async fn fetch(&mut self, opts: &DownloadOptions, deadline: Option<Instant>) -> Result<(), Error> {
        let stop = self.tasks.token().clone();
        // The last time a verified chunk was stored, for the stall timeout.
        let mut stored = (self.coordinator.progress().chunks_done, Instant::now());
        while !self.coordinator.is_done() {
            let stalled = opts.stall_timeout.map(|d| stored.1 + d);
            let input = tokio::select! {
                _ = stop.cancelled() => return Err(Error::Cancelled),
                _ = sleep_until(deadline) => return Err(self.coordinator.deadline_error()),
                _ = sleep_until(stalled) => return Err(Error::Stalled(opts.stall_timeout.unwrap_or_default())),
                _ = sleep_until(self.coordinator.next_retry()) => Input::Tick,
                // The download holds a sender (its sources' context): the inbox never closes.
                Some(input) = self.inbox.recv() => input,
                Some(loc) = self.locations.recv() => Input::Locations(loc),
            };
            self.coordinator.handle(input, Instant::now())?;
            // Whatever else is already queued, before acting and reporting once.
            while let Ok(input) = self.inbox.try_recv() {
                self.coordinator.handle(input, Instant::now())?;
            }
            self.carry_out();
            if self.coordinator.progress().chunks_done != stored.0 {
                stored = (self.coordinator.progress().chunks_done, Instant::now());
                self.gauges.set_done(self.coordinator.progress().bytes_done);
            }
            if let Some(p) = &opts.progress {
                let _ = p.send(self.coordinator.progress().clone());
            }
        }
        Ok(())
    }

    /// Carries out the coordinator's decisions.
    fn carry_out(&mut self) {
        for action in self.coordinator.take_actions() {
            match action {
                Action::Connect { source, addr } => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let cx = self.source_cx.clone();
                    let span = tracing::debug_span!("source", %addr);
                    let token = self.tasks.spawn(span, move |token| source::run(cx, source, addr, rx, token));
                    self.sources.insert(source, (tx, token));
                }
                Action::Request { source, chunk, fresh } => {
                    // A source that has just ended drops this; its end releases the chunk.
                    if let Some((tx, _)) = self.sources.get(&source) {
                        let _ = tx.send((chunk, fresh));
                    }
                }
                Action::Drop { source } => {
                    if let Some((_, token)) = self.sources.remove(&source) {
                        token.cancel();
                    }
                }
                Action::Stored { chunk } => {
                    // No receivers (nobody downloads from us yet) is not an error.
                    let _ = self.news.send(chunk);
                    if let Some((tx, _)) = &self.register {
                        let _ = tx.send(chunk);
                    }
                }
            }
        }
    }

    /// Verifies the whole file and puts it in place, giving up at once if the download is
    /// cancelled meanwhile (the check reads the whole file: minutes for a large one).
    async fn finish(&mut self) -> Result<PathBuf, Error> {
        let stop_flag = Arc::new(AtomicBool::new(false));
        let check = tokio::task::spawn_blocking({
            let (partial, stop_flag) = (self.partial.clone(), stop_flag.clone());
            let how = Finish { read_back: self.source_cx.config.read_back, replace: self.replace };
            move || partial.finish_with(&stop_flag, how)
        });
        tokio::pin!(check);
        let joined = tokio::select! {
            r = &mut check => r,
            _ = self.tasks.token().cancelled() => {
                stop_flag.store(true, Ordering::Relaxed);
                // The check stops within a chunk; the partial is open again once it returns.
                let _ = check.await;
                return Err(Error::Cancelled);
            }
        };
        match joined {
            Ok(r) => r.map_err(Error::Store),
            Err(e) => Err(Error::Io { action: "run storage task", source: std::io::Error::other(e) }),
        }
    }

    /// Stops every task of the download and returns the coordinator, with what it recorded. The
    /// sources stop first; the writer then finishes the copies it holds, and what it stored is
    /// recorded and queued for registration; the registrations queued still reach the tracker,
    /// within a bound.
    async fn stop(self) -> Coordinator {
        let Download { mut coordinator, meta, tasks, writer, outer, source_cx, mut inbox, news, register, .. } = self;
        tasks.cancel();
        tasks.wait().await;
        // The last sender of chunks: the writer ends once it has stored what it holds.
        drop(source_cx);
        writer.wait().await;
        let Some((register, token)) = register else { return coordinator };
        // The download is over: only what was stored matters now, including stores decided but
        // not yet carried out when an error ended the loop.
        loop {
            for action in coordinator.take_actions() {
                if let Action::Stored { chunk } = action {
                    let _ = news.send(chunk);
                    let _ = register.send(chunk);
                }
            }
            let Ok(input) = inbox.try_recv() else { break };
            let _ = coordinator.handle(input, Instant::now());
        }
        drop(register);
        if tokio::time::timeout(REGISTER_DRAIN, outer.wait()).await.is_err() {
            warn!(name = meta.name, "chunk registrations still queued after 5 s; re-registered on reconnect");
            token.cancel();
            outer.wait().await;
        }
        coordinator
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Asks the tracker for the file's locations at once, then again after an eighth of `interval`,
/// doubling up to `interval`, forwarding each answer. The first polls come fast because a swarm
/// that starts together is invisible at first: downloaders become sources only with their first
/// chunks, a moment after the start. A slow or unreachable tracker delays only this task.
async fn poll_locations(
    trackers: Trackers,
    name: String,
    interval: Duration,
    out: mpsc::Sender<Result<Locations, Error>>,
) {
    let mut wait = interval / 8;
    loop {
        let next = Instant::now() + wait;
        // One answer waits at most: while the download is not reading (its whole-file check),
        // the poller waits too, rather than piling up replies.
        if out.send(trackers.locations(&name).await).await.is_err() {
            return;
        }
        tokio::time::sleep_until(next).await;
        wait = (wait * 2).min(interval);
    }
}
