//! The downloader: one file, from many sources at once.
//!
//! A coordinator owns a `JoinSet` of per-source tasks that share one [`Scheduler`]. Each source
//! task keeps a window of requests in flight on its connection and hands every chunk it receives
//! to the download's writer stage, which verifies chunks (BLAKE3, in the chunk store) and writes
//! them on as many threads as there are cores while the sources keep receiving. The writer's
//! queue is bounded, so a download holds a bounded number of chunks in memory however many
//! sources it has. Every stored chunk is announced to the tracker at once and is served to others
//! by the upload server from the same partial file.
//!
//! A poller asks the tracker for locations every `poll_interval` (sooner at first), which brings
//! in new sources and new chunks of known ones, and refreshes swarm-wide availability for
//! rarest-first; it runs in its own task so that a tracker outage never stalls the download. The coordinator handles the
//! ends of source tasks: chunks of a source that disconnected or stalled go back to the pool; a
//! source that sent bad data `bad_data_strikes` times is dropped for this download; others are
//! retried after a backoff.
//!
//! When every chunk is stored, the file is verified whole and put in place. Should that check fail
//! (the disk changed a chunk after it was verified), the chunks found bad are fetched again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chunkstore::{Partial, StoreError};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use proto::peer::PeerResponse;
use proto::tracker::{Locations, RegisterFile};
use proto::{FileMeta, Have};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::connection::PeerConn;
use crate::error::{Error, SourceError};
use crate::node::Context;
use crate::ratelimit::RateLimiter;
use crate::scheduler::{Completion, Scheduler, SourceId};
use crate::session::TrackerSession;
use crate::shares::Shared;

/// Downloader settings.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Most requests in flight per source. The window adapts to each source's rate between 2 and
    /// this, so a fast source saturates the link and a slow one is not handed chunks that faster
    /// peers could deliver sooner.
    pub pipeline: usize,
    /// Sources downloaded from at once.
    pub max_sources: usize,
    /// A source with requests outstanding that sends nothing for this long loses its chunks.
    pub stall_timeout: Duration,
    /// Deadline for connecting to a source and its handshake.
    pub connect_timeout: Duration,
    /// How often the tracker is asked for locations during a download.
    pub poll_interval: Duration,
    /// Hash failures of one chunk (across sources) after which the download fails.
    pub max_chunk_failures: u32,
    /// Hash failures after which a source is dropped for this download.
    pub bad_data_strikes: u32,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            pipeline: 8,
            max_sources: 32,
            stall_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            max_chunk_failures: 6,
            bad_data_strikes: 2,
        }
    }
}

/// Per-download options.
#[derive(Debug, Default)]
pub struct DownloadOptions {
    /// Give up if chunks are still missing after this long (otherwise wait for sources).
    pub deadline: Option<Duration>,
    /// Receives progress updates.
    pub progress: Option<watch::Sender<Progress>>,
}

/// A progress snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Verified bytes stored.
    pub bytes_done: u64,
    /// File length.
    pub total: u64,
    /// Verified chunks stored.
    pub chunks_done: u32,
    /// Chunks in the file.
    pub num_chunks: u32,
    /// Sources being downloaded from.
    pub active_sources: usize,
    /// Missing chunks that no connected source holds (the download waits for them).
    pub waiting_chunks: u32,
}

/// Where a download's data came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// The source's endpoint.
    pub addr: SocketAddr,
    /// Verified bytes stored from it.
    pub bytes: u64,
    /// Verified chunks stored from it.
    pub chunks: u32,
    /// Chunks from it that failed verification.
    pub bad_chunks: u32,
    /// Bytes from it that were not used: chunks that failed verification, and chunks that
    /// arrived after it was dropped for bad data (discarded unverified).
    pub wasted_bytes: u64,
    /// Bytes of valid chunks that arrived after another source's copy (endgame).
    pub duplicate_bytes: u64,
    /// Why it was dropped for this download, if it was.
    pub dropped: Option<String>,
}

/// The outcome of a download.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    /// File name.
    pub name: String,
    /// Root hash, hex.
    pub root: String,
    /// Length in bytes.
    pub length: u64,
    /// Where the file now is.
    pub path: PathBuf,
    /// Wall time.
    pub elapsed_secs: f64,
    /// True when the file was already complete here.
    pub already_complete: bool,
    /// Chunks found on disk from an earlier run.
    pub resumed_chunks: u32,
    /// Chunks fetched in this run.
    pub fetched_chunks: u32,
    /// Chunks fetched more than once because a copy failed verification.
    pub refetched_chunks: u32,
    /// Bytes received that were not used (see [`SourceReport::wasted_bytes`]).
    pub wasted_bytes: u64,
    /// Bytes of valid duplicate copies (endgame).
    pub duplicate_bytes: u64,
    /// Per source, most bytes first.
    pub sources: Vec<SourceReport>,
}

/// A chunk received from a source, on its way to verification and storage.
struct Arrived {
    source: SourceId,
    chunk: u32,
    data: Bytes,
}

/// What the writer stage tells the coordinator.
enum Event {
    /// The first valid copy of a chunk was stored.
    Stored { source: SourceId, chunk: u32, bytes: usize },
    /// A valid copy arrived after another source's (endgame).
    Duplicate { source: SourceId, bytes: usize },
    /// A copy failed verification and was discarded.
    Bad { source: SourceId, chunk: u32, bytes: usize },
    /// A copy from a source already dropped for bad data was discarded unverified.
    Discarded { source: SourceId, bytes: usize },
    /// Storing failed locally: the download cannot go on.
    Failed(Error),
}

/// State shared by the coordinator, its source tasks and the writer.
struct DownloadState {
    meta: Arc<FileMeta>,
    partial: Partial,
    /// The one scheduler; locked briefly, never across an await.
    sched: Mutex<Scheduler>,
    /// Wakes idle source tasks when chunks are released or sources learn new chunks.
    work: Notify,
    /// Into the writer stage; bounded, so sources slow down when storage lags.
    arrived: mpsc::Sender<Arrived>,
    events: mpsc::UnboundedSender<Event>,
    /// Tells this peer's upload connections of each stored chunk, so they announce it.
    news: broadcast::Sender<u32>,
    config: DownloadConfig,
    limiter: Arc<RateLimiter>,
}

impl DownloadState {
    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the coordinator knows of one source across its connections.
struct Record {
    report: SourceReport,
    active: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Tries at assembling a file whose whole-file check keeps failing before giving up.
const MAX_FINISH_ATTEMPTS: u32 = 3;

/// Downloads `name` into the share folder. See the module docs.
pub(crate) async fn download(
    ctx: &Context,
    name: &str,
    opts: DownloadOptions,
    cancel: CancellationToken,
) -> Result<DownloadReport, Error> {
    let start = Instant::now();
    // A name that could not be a file in the share folder is refused before anything is asked.
    proto::validate_name(name).map_err(|reason| Error::InvalidName { name: name.to_owned(), reason })?;
    let meta = Arc::new(ctx.session.file_meta(name).await?);
    match ctx.shares.get(name) {
        Some(Shared::Complete(m)) if m.same_content(&meta) => {
            return Ok(report(&meta, ctx.store.root().join(name), start, true, 0, 0, Vec::new()));
        }
        Some(Shared::Complete(_)) => return Err(Error::Conflict(name.to_owned())),
        _ => {}
    }
    let partial = blocking({
        let (store, meta) = (ctx.store.clone(), meta.clone());
        move || store.open_partial(&meta)
    })
    .await?;
    // Serve the download's chunks as they arrive, announcing each on the file's news channel (the
    // one upload connections already listen to, if the partial was shared before this run).
    let news = match ctx.shares.get(name) {
        Some(Shared::Partial { news, .. }) => news,
        _ => broadcast::channel(crate::shares::NEWS_BACKLOG).0,
    };
    ctx.shares.insert(Shared::Partial { partial: partial.clone(), news: news.clone() });
    let have = partial.have();
    let resumed = have.count();
    if resumed > 0 {
        info!(name, resumed, "resuming download");
        let files = vec![RegisterFile { meta: (*meta).clone(), have: Have::Partial(have.clone()) }];
        if let Err(e) = ctx.session.register(ctx.listen, files).await {
            warn!(error = %e, "cannot register resumed chunks; they will be registered on reconnect");
        }
    }

    let mut dl = Download::start(ctx, meta.clone(), partial.clone(), news, &have, &opts, cancel);
    let result = dl.run(ctx, &opts, start).await;
    let (records, fetched) = dl.stop().await;
    let path = result?;

    ctx.shares.insert(Shared::Complete(meta.clone()));
    if let Some(p) = &opts.progress {
        p.send_modify(|p| p.active_sources = 0);
    }
    let sources = records
        .into_values()
        .map(|r| r.report)
        .filter(|r| r.bytes > 0 || r.bad_chunks > 0 || r.dropped.is_some())
        .collect();
    let rep = report(&meta, path, start, false, resumed, fetched, sources);
    info!(name, bytes = meta.length, secs = rep.elapsed_secs, sources = rep.sources.len(), "download complete");
    Ok(rep)
}

fn report(
    meta: &FileMeta,
    path: PathBuf,
    start: Instant,
    already: bool,
    resumed: u32,
    fetched: u32,
    mut sources: Vec<SourceReport>,
) -> DownloadReport {
    sources.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    DownloadReport {
        name: meta.name.clone(),
        root: meta.root.to_string(),
        length: meta.length,
        path,
        elapsed_secs: start.elapsed().as_secs_f64(),
        already_complete: already,
        resumed_chunks: resumed,
        fetched_chunks: fetched,
        refetched_chunks: sources.iter().map(|s| s.bad_chunks).sum(),
        wasted_bytes: sources.iter().map(|s| s.wasted_bytes).sum(),
        duplicate_bytes: sources.iter().map(|s| s.duplicate_bytes).sum(),
        sources,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::Store),
        Err(e) => Err(Error::Io { action: "run storage task", source: std::io::Error::other(e) }),
    }
}

/// One download in progress: the coordinator's state and the tasks it owns.
struct Download {
    shared: Arc<DownloadState>,
    /// Source tasks; each ends with its id and why it stopped.
    tasks: JoinSet<(SourceId, Result<(), SourceError>)>,
    /// Which source each task serves, for the task that ends without saying (a panic).
    task_sources: HashMap<tokio::task::Id, SourceId>,
    /// The writer stage, the tracker poller and the chunk announcer.
    helpers: JoinSet<()>,
    /// Cancels every task of this download (a child of the caller's token).
    stop: CancellationToken,
    events: mpsc::UnboundedReceiver<Event>,
    locations: mpsc::Receiver<Result<Locations, Error>>,
    /// Chunks to register with the tracker, in the order they were stored.
    announce: mpsc::UnboundedSender<u32>,
    records: HashMap<SourceId, Record>,
    by_addr: HashMap<SocketAddr, SourceId>,
    banned: HashSet<SocketAddr>,
    progress: Progress,
    fetched: u32,
}

impl Download {
    fn start(
        ctx: &Context,
        meta: Arc<FileMeta>,
        partial: Partial,
        news: broadcast::Sender<u32>,
        have: &proto::Bitmap,
        opts: &DownloadOptions,
        cancel: CancellationToken,
    ) -> Download {
        let n = meta.num_chunks();
        let stop = cancel.child_token();
        let parallel = std::thread::available_parallelism().map_or(2, |p| p.get()).max(2);
        let (arrived_tx, arrived_rx) = mpsc::channel(parallel);
        let (events_tx, events) = mpsc::unbounded_channel();
        let progress = Progress {
            total: meta.length,
            num_chunks: n,
            chunks_done: have.count(),
            bytes_done: partial.bytes_done(),
            ..Progress::default()
        };
        if let Some(p) = &opts.progress {
            let _ = p.send(progress.clone());
        }
        let shared = Arc::new(DownloadState {
            meta: meta.clone(),
            partial,
            sched: Mutex::new(Scheduler::new(n, have)),
            work: Notify::new(),
            arrived: arrived_tx,
            events: events_tx,
            news,
            config: ctx.config.clone(),
            limiter: ctx.limiter.clone(),
        });

        let mut helpers = JoinSet::new();
        helpers.spawn(until(stop.clone(), writer(shared.clone(), arrived_rx, parallel)));
        let (locations_tx, locations) = mpsc::channel(1);
        let poller = poll_locations(ctx.session.clone(), meta.name.clone(), ctx.config.poll_interval, locations_tx);
        helpers.spawn(until(stop.clone(), poller));
        // Registrations go through their own task so a slow tracker never holds up data. It is
        // not cancelled with the others: what is queued still reaches the tracker (see `stop`).
        let (announce, mut to_announce) = mpsc::unbounded_channel::<u32>();
        let (session, name) = (ctx.session.clone(), meta.name.clone());
        helpers.spawn(async move {
            while let Some(chunk) = to_announce.recv().await {
                if let Err(e) = session.chunk_register(&name, chunk).await {
                    debug!(chunk, error = %e, "chunk register failed; re-registered on reconnect");
                }
            }
        });
        Download {
            shared,
            tasks: JoinSet::new(),
            task_sources: HashMap::new(),
            helpers,
            stop,
            events,
            locations,
            announce,
            records: HashMap::new(),
            by_addr: HashMap::new(),
            banned: HashSet::new(),
            progress,
            fetched: 0,
        }
    }

    /// Fetches every missing chunk and puts the file in place; returns its path.
    async fn run(&mut self, ctx: &Context, opts: &DownloadOptions, start: Instant) -> Result<PathBuf, Error> {
        let deadline = opts.deadline.map(|d| start + d);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.fetch(ctx, opts, deadline).await?;
            let partial = self.shared.partial.clone();
            match blocking(move || partial.finish()).await {
                Ok(path) => return Ok(path),
                Err(Error::Store(StoreError::WholeFileMismatch { bad_chunks, .. }))
                    if attempt < MAX_FINISH_ATTEMPTS =>
                {
                    warn!(bad_chunks, "chunks changed on disk after they were verified; fetching them again");
                    let have = self.shared.partial.have();
                    let mut sched = self.shared.sched();
                    for c in 0..self.shared.meta.num_chunks() {
                        if !have.get(c) && sched.has(c) {
                            sched.lost(c);
                            self.progress.chunks_done -= 1;
                        }
                    }
                    self.progress.bytes_done = self.shared.partial.bytes_done();
                    drop(sched);
                    self.shared.work.notify_waiters();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the swarm until every chunk is stored: the coordinator loop.
    async fn fetch(&mut self, ctx: &Context, opts: &DownloadOptions, deadline: Option<Instant>) -> Result<(), Error> {
        let n = self.shared.meta.num_chunks();
        // Done when every chunk's Stored event has been handled (not merely when the scheduler
        // says so): each event carries attribution and the chunk's registration with the tracker.
        while self.progress.chunks_done < n {
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Error::Cancelled),
                _ = sleep_until(deadline) => {
                    let sched = self.shared.sched();
                    return Err(Error::Deadline {
                        missing: n - sched.have_count(),
                        first: sched.first_missing().unwrap_or(0),
                    });
                }
                Some(loc) = self.locations.recv() => match loc {
                    Ok(loc) => self.on_locations(ctx, &loc)?,
                    Err(e) => debug!(error = %e, "locations request failed"),
                },
                Some(event) = self.events.recv() => self.on_event(event)?,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (task, id, result) = match joined {
                        Ok((task, (id, result))) => (task, Some(id), result),
                        // A panicked task is a lost source like any other; it is logged here.
                        Err(e) => {
                            warn!(error = %e, "source task failed");
                            (e.id(), None, Err(SourceError::Lost(format!("task failed: {e}"))))
                        }
                    };
                    if let Some(id) = self.task_sources.remove(&task).or(id) {
                        self.on_source_end(id, result)?;
                    }
                }
            }
            if let Some(p) = &opts.progress {
                let _ = p.send(self.progress.clone());
            }
        }
        Ok(())
    }

    /// New locations from the tracker: availability for rarest-first, new sources, and news of
    /// known ones.
    fn on_locations(&mut self, ctx: &Context, loc: &Locations) -> Result<(), Error> {
        if loc.root != self.shared.meta.root {
            return Err(Error::ContentChanged(self.shared.meta.name.clone()));
        }
        self.spawn_sources(ctx, loc);
        let waiting = self.shared.sched().unavailable();
        self.progress.waiting_chunks = waiting.len() as u32;
        self.progress.active_sources = self.tasks.len();
        if !waiting.is_empty() {
            debug!(waiting = waiting.len(), "waiting for sources of some chunks");
        }
        match self.stuck(loc, &waiting) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Stored { source, chunk, bytes } => {
                self.fetched += 1;
                self.progress.chunks_done += 1;
                self.progress.bytes_done += bytes as u64;
                if let Some(r) = self.records.get_mut(&source) {
                    r.report.bytes += bytes as u64;
                    r.report.chunks += 1;
                }
                let _ = self.announce.send(chunk);
            }
            Event::Duplicate { source, bytes } => {
                if let Some(r) = self.records.get_mut(&source) {
                    r.report.duplicate_bytes += bytes as u64;
                }
            }
            Event::Discarded { source, bytes } => {
                if let Some(r) = self.records.get_mut(&source) {
                    r.report.wasted_bytes += bytes as u64;
                }
            }
            Event::Bad { source, chunk, bytes } => {
                if let Some(r) = self.records.get_mut(&source) {
                    r.report.bad_chunks += 1;
                    r.report.wasted_bytes += bytes as u64;
                    warn!(chunk, source = %r.report.addr, "chunk failed verification; discarded");
                }
                let attempts = self.shared.sched().failures(chunk);
                if attempts >= self.shared.config.max_chunk_failures {
                    return Err(Error::ChunkFailed { chunk, attempts });
                }
            }
            Event::Failed(e) => return Err(e),
        }
        Ok(())
    }

    fn on_source_end(&mut self, id: SourceId, result: Result<(), SourceError>) -> Result<(), Error> {
        self.shared.sched().remove_source(id);
        self.shared.work.notify_waiters();
        self.progress.active_sources = self.tasks.len();
        let Some(rec) = self.records.get_mut(&id) else { return Ok(()) };
        rec.active = false;
        match result {
            Ok(()) => {}
            Err(e @ SourceError::BadData { .. }) => {
                warn!(source = %rec.report.addr, error = %e, "dropping source for this download");
                rec.report.dropped = Some(e.to_string());
                self.banned.insert(rec.report.addr);
            }
            Err(e) => {
                rec.failures += 1;
                let backoff = Duration::from_millis(250) * 2u32.pow(rec.failures.min(5));
                rec.retry_at = Some(Instant::now() + backoff);
                debug!(source = %rec.report.addr, error = %e, ?backoff, "source ended");
            }
        }
        Ok(())
    }

    /// Starts tasks for listed sources not yet connected (up to the cap, after their backoff) and
    /// adds what connected sources are now known to hold.
    fn spawn_sources(&mut self, ctx: &Context, loc: &Locations) {
        let mut sched = self.shared.sched();
        sched.set_availability(loc.availability.clone());
        let now = Instant::now();
        for src in &loc.sources {
            if src.addr == ctx.listen || self.banned.contains(&src.addr) {
                continue;
            }
            let next_id = self.by_addr.len() as SourceId + 1;
            let id = *self.by_addr.entry(src.addr).or_insert(next_id);
            let rec = self.records.entry(id).or_insert_with(|| Record {
                report: SourceReport {
                    addr: src.addr,
                    bytes: 0,
                    chunks: 0,
                    bad_chunks: 0,
                    wasted_bytes: 0,
                    duplicate_bytes: 0,
                    dropped: None,
                },
                active: false,
                failures: 0,
                retry_at: None,
            });
            if rec.active {
                sched.update_source(id, &src.have);
                continue;
            }
            if self.tasks.len() >= ctx.config.max_sources || rec.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            rec.active = true;
            let (shared, stop, addr) = (self.shared.clone(), self.stop.clone(), src.addr);
            let task = self.tasks.spawn(
                async move {
                    let r = tokio::select! {
                        _ = stop.cancelled() => Ok(()),
                        r = source_task(&shared, id, addr) => r,
                    };
                    (id, r)
                }
                .instrument(tracing::debug_span!("source", %addr)),
            );
            self.task_sources.insert(task.id(), id);
        }
        drop(sched);
        self.shared.work.notify_waiters();
    }

    /// An error if some missing chunk can never arrive: every holder of it was dropped for sending
    /// bad data. Only judged from a reply that lists every source (not a capped selection).
    fn stuck(&self, loc: &Locations, waiting: &[u32]) -> Option<Error> {
        if loc.sources.len() < loc.total_sources as usize {
            return None;
        }
        let n = loc.num_chunks;
        for &c in waiting {
            let mut holders = loc.sources.iter().filter(|s| s.have.has(c, n)).peekable();
            if holders.peek().is_some() && holders.all(|h| self.banned.contains(&h.addr)) {
                return Some(Error::NoHonestSource { chunk: c, dropped: self.banned.len() });
            }
        }
        None
    }

    /// Stops every task of the download and returns what the coordinator recorded. Chunk
    /// registrations already queued still reach the tracker, within a bound.
    async fn stop(mut self) -> (HashMap<SourceId, Record>, u32) {
        self.stop.cancel();
        self.tasks.shutdown().await;
        drop(self.announce);
        // The writer and poller end at once (cancelled); the announcer drains its queue.
        let drained = timeout(Duration::from_secs(5), async { while self.helpers.join_next().await.is_some() {} });
        if drained.await.is_err() {
            debug!("chunk registrations still queued after 5 s; dropped (re-registered on reconnect)");
            self.helpers.shutdown().await;
        }
        (self.records, self.fetched)
    }
}

/// Runs `fut` until `stop` is cancelled.
async fn until(stop: CancellationToken, fut: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = stop.cancelled() => {}
        () = fut => {}
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
    session: TrackerSession,
    name: String,
    interval: Duration,
    out: mpsc::Sender<Result<Locations, Error>>,
) {
    let mut wait = interval / 8;
    loop {
        let next = Instant::now() + wait;
        if out.send(session.locations(&name).await).await.is_err() {
            return;
        }
        tokio::time::sleep_until(next).await;
        wait = (wait * 2).min(interval);
    }
}

/// The writer stage: verifies and stores arriving chunks, up to `parallel` at once.
async fn writer(shared: Arc<DownloadState>, mut arrived: mpsc::Receiver<Arrived>, parallel: usize) {
    let mut storing = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = storing.next(), if !storing.is_empty() => {}
            a = arrived.recv(), if storing.len() < parallel => match a {
                Some(a) => storing.push(store(&shared, a)),
                None => break,
            },
        }
    }
    while storing.next().await.is_some() {}
}

/// Verifies and writes one chunk (in the chunk store, on a blocking thread), then tells the
/// scheduler and the coordinator what became of it.
async fn store(shared: &DownloadState, a: Arrived) {
    let Arrived { source, chunk, data } = a;
    // Chunks come only from requests the scheduler made, so the index is in range.
    let Ok(idx) = shared.meta.chunk(chunk) else { return };
    let bytes = data.len();
    let struck_out = |sched: &Scheduler| sched.strikes(source) >= shared.config.bad_data_strikes;
    if struck_out(&shared.sched()) {
        // Its source is being dropped: nothing it sent is worth a hash.
        discard(shared, source, chunk, bytes);
        return;
    }
    let partial = shared.partial.clone();
    let written = tokio::task::spawn_blocking(move || partial.write_chunk(idx, &data)).await;
    let event = match written {
        Ok(Ok(_)) => match shared.sched().complete(chunk, source) {
            Completion::New => {
                // No receivers (nobody downloads from us yet) is not an error.
                let _ = shared.news.send(chunk);
                Event::Stored { source, chunk, bytes }
            }
            Completion::Duplicate => Event::Duplicate { source, bytes },
        },
        Ok(Err(StoreError::HashMismatch { .. })) => {
            let mut sched = shared.sched();
            // Copies verified in parallel may fail after their source struck out: those count as
            // discarded, so a source is charged exactly `bad_data_strikes` bad chunks.
            if struck_out(&sched) {
                drop(sched);
                discard(shared, source, chunk, bytes);
                return;
            }
            sched.failed(chunk, source);
            drop(sched);
            shared.work.notify_waiters();
            Event::Bad { source, chunk, bytes }
        }
        // The download finished while this copy was queued.
        Ok(Err(StoreError::Finished { .. })) => return,
        Ok(Err(e)) => Event::Failed(Error::Store(e)),
        Err(e) => Event::Failed(Error::Io { action: "run storage task", source: std::io::Error::other(e) }),
    };
    let _ = shared.events.send(event);
}

/// Drops a copy from a source that struck out, releasing its chunk for others.
fn discard(shared: &DownloadState, source: SourceId, chunk: u32, bytes: usize) {
    shared.sched().release(chunk, source, false);
    shared.work.notify_waiters();
    let _ = shared.events.send(Event::Discarded { source, bytes });
}

async fn source_task(shared: &Arc<DownloadState>, id: SourceId, addr: SocketAddr) -> Result<(), SourceError> {
    let cfg = &shared.config;
    let (mut conn, have) = PeerConn::open(addr, &shared.meta, cfg.connect_timeout).await?;
    shared.sched().update_source(id, &have);
    shared.work.notify_waiters();
    debug!(chunks = have.to_bitmap(shared.meta.num_chunks()).count(), "connected to source");
    receive_loop(shared, id, &mut conn).await
}

/// Keeps the pipeline full and passes each received chunk to the writer.
async fn receive_loop(shared: &DownloadState, id: SourceId, conn: &mut PeerConn) -> Result<(), SourceError> {
    let cfg = &shared.config;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    // Each request with whether the source may answer another chunk instead (GetFresh).
    let mut inflight: VecDeque<(u32, bool)> = VecDeque::new();
    let mut window = Window::new(cfg.pipeline, shared.meta.chunk_size);
    // When the oldest outstanding request must be answered by. Only answers (a chunk or "don't
    // have") move it: announcements alone do not keep a source that never delivers.
    let mut answer_by = Instant::now() + cfg.stall_timeout;
    // Fresh requests whose substitute was a chunk already stored here: past a few, this source
    // is asked for exactly what is wanted (see PeerRequest::GetFresh).
    let mut useless_substitutes = 0;
    loop {
        let strikes = shared.sched().strikes(id);
        if strikes >= cfg.bad_data_strikes {
            return Err(SourceError::BadData { strikes });
        }
        let mut sent = false;
        while inflight.len() < window.depth() {
            let (c, fresh) = {
                let mut sched = shared.sched();
                let Some(c) = sched.pick(id, &mut rng) else { break };
                // A seed may hand out a chunk nobody has yet instead: see PeerRequest::GetFresh.
                (c, sched.source_is_complete(id) && useless_substitutes < MAX_USELESS_SUBSTITUTES)
            };
            if inflight.is_empty() {
                answer_by = Instant::now() + cfg.stall_timeout;
            }
            conn.request(c, fresh).await?;
            inflight.push_back((c, fresh));
            sent = true;
        }
        if sent {
            conn.flush().await?;
        }
        let resp = if inflight.is_empty() {
            if shared.sched().is_done() {
                return Ok(());
            }
            // Nothing to ask this source for now: wait for released chunks or new knowledge (its
            // own announcements among them), re-checking periodically in case a wake-up raced
            // with the check above.
            tokio::select! {
                _ = shared.work.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                r = conn.next() => r?,
            }
        } else {
            tokio::time::timeout_at(answer_by, conn.next()).await.map_err(|_| SourceError::Stalled)??
        };
        match resp {
            PeerResponse::Chunk { chunk, data } => {
                if chunk >= shared.meta.num_chunks() {
                    return Err(SourceError::Protocol(format!("sent chunk {chunk}, out of range")));
                }
                let asked = expect_front(&mut inflight, chunk, true)?;
                answer_by = Instant::now() + cfg.stall_timeout;
                if asked != chunk {
                    let mut sched = shared.sched();
                    if sched.has(chunk) {
                        useless_substitutes += 1;
                    }
                    sched.substitute(asked, chunk, id);
                    drop(sched);
                    // The chunk asked for is free again.
                    shared.work.notify_waiters();
                }
                window.arrived(data.len());
                shared.limiter.acquire(data.len()).await;
                if shared.arrived.send(Arrived { source: id, chunk, data }).await.is_err() {
                    // The writer is gone: the download is stopping.
                    return Ok(());
                }
            }
            PeerResponse::DontHave { chunk } => {
                expect_front(&mut inflight, chunk, false)?;
                answer_by = Instant::now() + cfg.stall_timeout;
                shared.sched().release(chunk, id, true);
                shared.work.notify_waiters();
            }
            PeerResponse::Have { chunk } => {
                if chunk >= shared.meta.num_chunks() {
                    return Err(SourceError::Protocol(format!("announced chunk {chunk} out of range")));
                }
                // The loop picks it next time round if it is worth having.
                shared.sched().gained(id, chunk);
            }
            PeerResponse::Error(e) => return Err(SourceError::Refused(e)),
            PeerResponse::Welcome { .. } => return Err(SourceError::Protocol("unexpected welcome".into())),
        }
    }
}

/// Fresh requests a source may answer with chunks already stored here before it is only asked for
/// exact chunks: an honest seed substitutes chunks nobody had, so this only bounds the waste of a
/// seed that has handed them out already (or one that lies).
const MAX_USELESS_SUBSTITUTES: u32 = 8;

/// How many requests to keep in flight to one source: enough to cover [`PIPELINE_WINDOW`] of its
/// measured rate (so a fast source saturates the link), at least 2, at most the configured
/// pipeline. A slow source is therefore not handed chunks it would take seconds to deliver while
/// faster peers could have served them: this is what lets downloaders trade rather than all queue
/// on the seed.
struct Window {
    max: usize,
    chunk_size: f64,
    /// Bytes per second, smoothed; `None` until the first chunk arrives.
    rate: Option<f64>,
    last: Instant,
}

/// Time worth of data kept requested from each source.
const PIPELINE_WINDOW: f64 = 0.1;

impl Window {
    fn new(max: usize, chunk_size: u32) -> Self {
        Self { max: max.max(1), chunk_size: f64::from(chunk_size.max(1)), rate: None, last: Instant::now() }
    }

    fn depth(&self) -> usize {
        let want = self.rate.map_or(2.0, |r| (r * PIPELINE_WINDOW / self.chunk_size).ceil());
        (want as usize).clamp(2.min(self.max), self.max)
    }

    fn arrived(&mut self, bytes: usize) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-6);
        self.last = now;
        let sample = bytes as f64 / dt;
        self.rate = Some(self.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample));
    }
}

/// Takes the oldest outstanding request, which `chunk` answers: the same index, or, for a fresh
/// request answered with a chunk, any index in range. Returns the index asked for.
fn expect_front(inflight: &mut VecDeque<(u32, bool)>, chunk: u32, with_data: bool) -> Result<u32, SourceError> {
    match inflight.front() {
        Some(&(c, fresh)) if c == chunk || (fresh && with_data) => {
            inflight.pop_front();
            Ok(c)
        }
        other => Err(SourceError::Protocol(format!("answered chunk {chunk}, expected {other:?}"))),
    }
}
