//! The downloader: one file, from many sources at once.
//!
//! A coordinator owns a `JoinSet` of per-source tasks that share one [`Scheduler`]. Each source
//! task keeps up to `pipeline` requests in flight on its connection and hands received chunks to a
//! writer stage, which verifies them (BLAKE3, in the chunk store) and writes them while the next
//! chunks arrive. Every stored chunk is announced to the tracker at once and is served to others
//! by the upload server from the same partial file.
//!
//! The coordinator polls the tracker for locations every `poll_interval` (about a second), which
//! brings in new sources and new chunks of known ones, and refreshes swarm-wide availability for
//! rarest-first. It handles the ends of source tasks: chunks of a source that disconnected or
//! stalled go back to the pool; a source that sent bad data `bad_data_strikes` times is banned for
//! this download; others are retried after a backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chunkstore::{Partial, Store, StoreError};
use proto::peer::PeerResponse;
use proto::tracker::{Locations, RegisterFile};
use proto::{FileMeta, Have};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::connection::PeerConn;
use crate::error::{Error, SourceError};
use crate::ratelimit::RateLimiter;
use crate::scheduler::{Completion, Scheduler, SourceId};
use crate::session::TrackerSession;
use crate::shares::{Shared, Shares};

/// Downloader settings.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Requests in flight per source.
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
    /// Give up when chunks are still missing after this long (otherwise wait for sources).
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
    /// Bytes of those chunks.
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
    /// Bytes received that failed verification.
    pub wasted_bytes: u64,
    /// Bytes of valid duplicate copies (endgame).
    pub duplicate_bytes: u64,
    /// Per source, most bytes first.
    pub sources: Vec<SourceReport>,
}

/// What a download needs from its node.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) session: TrackerSession,
    pub(crate) store: Store,
    pub(crate) shares: Shares,
    pub(crate) listen: SocketAddr,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) config: DownloadConfig,
}

enum Event {
    Stored { source: SourceId, bytes: usize },
    Duplicate { source: SourceId, bytes: usize },
    Bad { source: SourceId, chunk: u32, bytes: usize },
}

/// State shared by the coordinator and its source tasks.
struct DownloadState {
    meta: Arc<FileMeta>,
    partial: Partial,
    /// The one scheduler; locked briefly, never across an await.
    sched: Mutex<Scheduler>,
    /// Wakes idle source tasks when chunks are released or sources learn new chunks.
    work: Notify,
    events: mpsc::UnboundedSender<(Event, u32)>,
    limiter: Arc<RateLimiter>,
    config: DownloadConfig,
}

impl DownloadState {
    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Record {
    report: SourceReport,
    active: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Downloads `name` into the share folder. See the module docs.
pub(crate) async fn download(
    ctx: &Context,
    name: &str,
    opts: DownloadOptions,
    cancel: CancellationToken,
) -> Result<DownloadReport, Error> {
    let start = Instant::now();
    let meta = Arc::new(ctx.session.file_meta(name).await?);
    let n = meta.num_chunks();
    match ctx.shares.get(name) {
        Some(Shared::Complete(m)) if m.same_content(&meta) => {
            return Ok(report(&meta, ctx.store.root().join(name), start, true, 0, Vec::new(), 0));
        }
        Some(Shared::Complete(_)) => return Err(Error::Conflict(name.to_owned())),
        _ => {}
    }
    let partial = blocking({
        let (store, meta) = (ctx.store.clone(), meta.clone());
        move || store.open_partial(&meta)
    })
    .await?;
    ctx.shares.insert(Shared::Partial(partial.clone()));
    let have = partial.have();
    let resumed = have.count();
    if resumed > 0 {
        info!(name, resumed, "resuming download");
        let files = vec![RegisterFile { meta: (*meta).clone(), have: Have::Partial(have.clone()) }];
        if let Err(e) = ctx.session.register(ctx.listen, files).await {
            warn!(error = %e, "cannot register resumed chunks; they will be registered on reconnect");
        }
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let shared = Arc::new(DownloadState {
        meta: meta.clone(),
        partial: partial.clone(),
        sched: Mutex::new(Scheduler::new(n, &have)),
        work: Notify::new(),
        events: events_tx,
        limiter: ctx.limiter.clone(),
        config: ctx.config.clone(),
    });

    // Chunk registrations go through their own task so a slow tracker never holds up data.
    let (announce, mut to_announce) = mpsc::unbounded_channel::<u32>();
    let announcer = tokio::spawn({
        let (session, name) = (ctx.session.clone(), name.to_owned());
        async move {
            while let Some(chunk) = to_announce.recv().await {
                if let Err(e) = session.chunk_register(&name, chunk).await {
                    debug!(chunk, error = %e, "chunk register failed; re-registered on reconnect");
                }
            }
        }
    });

    let tasks_cancel = cancel.child_token();
    let mut tasks: JoinSet<(SourceId, Result<(), SourceError>)> = JoinSet::new();
    let mut records: HashMap<SourceId, Record> = HashMap::new();
    let mut by_addr: HashMap<SocketAddr, SourceId> = HashMap::new();
    let mut banned: HashSet<SocketAddr> = HashSet::new();
    let mut poll = tokio::time::interval(ctx.config.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = Progress { total: meta.length, num_chunks: n, ..Progress::default() };
    progress.chunks_done = resumed;
    progress.bytes_done = partial.bytes_done();
    let mut fetched = 0u32;

    let outcome: Result<(), Error> = loop {
        // Done when every chunk's Stored event has been handled (not merely when the scheduler
        // says so): each event carries attribution and the chunk's registration with the tracker.
        if progress.chunks_done == n {
            break Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled() => break Err(Error::Cancelled),
            _ = poll.tick() => {
                let loc = match ctx.session.locations(name).await {
                    Ok(l) => l,
                    Err(e) => {
                        debug!(error = %e, "locations request failed");
                        continue;
                    }
                };
                if loc.root != meta.root {
                    break Err(Error::ContentChanged(name.to_owned()));
                }
                spawn_sources(ctx, &shared, &loc, &mut tasks, &tasks_cancel, &mut records, &mut by_addr, &banned);
                let waiting = shared.sched().unavailable();
                progress.waiting_chunks = waiting.len() as u32;
                progress.active_sources = tasks.len();
                if let Some(e) = check_stuck(&shared, &loc, &waiting, &banned) {
                    break Err(e);
                }
                if let (Some(deadline), Some(&first)) = (opts.deadline, waiting.first()) {
                    if start.elapsed() >= deadline {
                        break Err(Error::Deadline { missing: n - shared.sched().have_count(), first });
                    }
                }
                if !waiting.is_empty() {
                    debug!(waiting = waiting.len(), "waiting for sources of some chunks");
                }
            }
            Some((event, chunk)) = events.recv() => {
                match event {
                    Event::Stored { source, bytes } => {
                        fetched += 1;
                        progress.chunks_done += 1;
                        progress.bytes_done += bytes as u64;
                        if let Some(r) = records.get_mut(&source) {
                            r.report.bytes += bytes as u64;
                            r.report.chunks += 1;
                        }
                        let _ = announce.send(chunk);
                    }
                    Event::Duplicate { source, bytes } => {
                        if let Some(r) = records.get_mut(&source) {
                            r.report.duplicate_bytes += bytes as u64;
                        }
                    }
                    Event::Bad { source, chunk, bytes } => {
                        if let Some(r) = records.get_mut(&source) {
                            r.report.bad_chunks += 1;
                            r.report.wasted_bytes += bytes as u64;
                            warn!(chunk, source = %r.report.addr, "chunk failed verification; discarded");
                        }
                        let attempts = shared.sched().failures(chunk);
                        if attempts >= ctx.config.max_chunk_failures {
                            break Err(Error::ChunkFailed { chunk, attempts });
                        }
                    }
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((id, result)) = joined else { continue };
                shared.sched().remove_source(id);
                shared.work.notify_waiters();
                let Some(rec) = records.get_mut(&id) else { continue };
                rec.active = false;
                match result {
                    Ok(()) => {}
                    Err(SourceError::Storage(e)) => break Err(Error::Store(e)),
                    Err(e @ SourceError::BadData { .. }) => {
                        warn!(source = %rec.report.addr, error = %e, "dropping source for this download");
                        rec.report.dropped = Some(e.to_string());
                        banned.insert(rec.report.addr);
                    }
                    Err(e) => {
                        rec.failures += 1;
                        let backoff = Duration::from_millis(250) * 2u32.pow(rec.failures.min(5));
                        rec.retry_at = Some(Instant::now() + backoff);
                        debug!(source = %rec.report.addr, error = %e, ?backoff, "source ended");
                    }
                }
                progress.active_sources = tasks.len();
            }
        }
        if let Some(p) = &opts.progress {
            let _ = p.send(progress.clone());
        }
    };

    tasks_cancel.cancel();
    tasks.shutdown().await;
    // Registrations already queued still reach the tracker, within a bound.
    drop(announce);
    drop(shared);
    let _ = timeout(Duration::from_secs(5), announcer).await;
    outcome?;

    let path = blocking({
        let partial = partial.clone();
        move || partial.finish()
    })
    .await?;
    ctx.shares.insert(Shared::Complete(meta.clone()));
    if let Some(p) = &opts.progress {
        progress.active_sources = 0;
        let _ = p.send(progress);
    }
    let sources = records
        .into_values()
        .map(|r| r.report)
        .filter(|r| r.bytes > 0 || r.bad_chunks > 0 || r.dropped.is_some())
        .collect();
    let mut rep = report(&meta, path, start, false, resumed, sources, fetched);
    info!(name, bytes = meta.length, secs = rep.elapsed_secs, sources = rep.sources.len(), "download complete");
    rep.sources.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    Ok(rep)
}

fn report(
    meta: &FileMeta,
    path: PathBuf,
    start: Instant,
    already: bool,
    resumed: u32,
    sources: Vec<SourceReport>,
    fetched: u32,
) -> DownloadReport {
    let wasted_bytes = sources.iter().map(|s| s.wasted_bytes).sum();
    let refetched = sources.iter().map(|s| s.bad_chunks).sum();
    DownloadReport {
        name: meta.name.clone(),
        root: meta.root.to_string(),
        length: meta.length,
        path,
        elapsed_secs: start.elapsed().as_secs_f64(),
        already_complete: already,
        resumed_chunks: resumed,
        fetched_chunks: fetched,
        refetched_chunks: refetched,
        wasted_bytes,
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

/// Starts tasks for listed sources not yet connected (up to the cap, after their backoff) and
/// refreshes what connected sources hold.
#[allow(clippy::too_many_arguments)]
fn spawn_sources(
    ctx: &Context,
    shared: &Arc<DownloadState>,
    loc: &Locations,
    tasks: &mut JoinSet<(SourceId, Result<(), SourceError>)>,
    cancel: &CancellationToken,
    records: &mut HashMap<SourceId, Record>,
    by_addr: &mut HashMap<SocketAddr, SourceId>,
    banned: &HashSet<SocketAddr>,
) {
    let mut sched = shared.sched();
    sched.set_availability(loc.availability.clone());
    let now = Instant::now();
    for src in &loc.sources {
        if src.addr == ctx.listen || banned.contains(&src.addr) {
            continue;
        }
        let next_id = by_addr.len() as SourceId + 1;
        let id = *by_addr.entry(src.addr).or_insert(next_id);
        let rec = records.entry(id).or_insert_with(|| Record {
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
        if tasks.len() >= ctx.config.max_sources || rec.retry_at.is_some_and(|t| t > now) {
            continue;
        }
        rec.active = true;
        let (shared, cancel, addr) = (shared.clone(), cancel.clone(), src.addr);
        tasks.spawn(
            async move {
                let r = tokio::select! {
                    _ = cancel.cancelled() => Ok(()),
                    r = source_task(&shared, id, addr) => r,
                };
                (id, r)
            }
            .instrument(tracing::debug_span!("source", %addr)),
        );
    }
    drop(sched);
    shared.work.notify_waiters();
}

/// An error if some missing chunk can never arrive: every listed holder of it was dropped for
/// sending bad data.
fn check_stuck(
    shared: &DownloadState,
    loc: &Locations,
    waiting: &[u32],
    banned: &HashSet<SocketAddr>,
) -> Option<Error> {
    let n = loc.num_chunks;
    for &c in waiting {
        let holders = loc.sources.iter().filter(|s| s.have.has(c, n));
        let (mut any, mut all_banned) = (false, true);
        for h in holders {
            any = true;
            all_banned &= banned.contains(&h.addr);
        }
        if any && all_banned {
            return Some(Error::ChunkFailed { chunk: c, attempts: shared.sched().failures(c) });
        }
    }
    None
}

async fn source_task(shared: &Arc<DownloadState>, id: SourceId, addr: SocketAddr) -> Result<(), SourceError> {
    let cfg = &shared.config;
    let (mut conn, have) = PeerConn::open(addr, &shared.meta, cfg.connect_timeout).await?;
    shared.sched().update_source(id, &have);
    debug!(chunks = have.to_bitmap(shared.meta.num_chunks()).count(), "connected to source");
    let (to_writer, from_receiver) = mpsc::channel::<(u32, Bytes)>(2);
    let receive = receive_loop(shared, id, &mut conn, to_writer);
    let write = write_loop(shared, id, from_receiver);
    tokio::try_join!(receive, write).map(|_| ())
}

/// Keeps the pipeline full and passes each received chunk to the writer.
async fn receive_loop(
    shared: &DownloadState,
    id: SourceId,
    conn: &mut PeerConn,
    to_writer: mpsc::Sender<(u32, Bytes)>,
) -> Result<(), SourceError> {
    let cfg = &shared.config;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut inflight: VecDeque<u32> = VecDeque::new();
    let mut window = Window::new(cfg.pipeline, shared.meta.chunk_size);
    loop {
        let mut sent = false;
        while inflight.len() < window.depth() {
            let Some(c) = shared.sched().pick(id, &mut rng) else { break };
            conn.request(c).await?;
            inflight.push_back(c);
            sent = true;
        }
        if sent {
            conn.flush().await?;
        }
        if inflight.is_empty() {
            if shared.sched().is_done() {
                return Ok(());
            }
            // Nothing to do for now: wait for released chunks or new knowledge, re-checking
            // periodically in case a wake-up raced with the check above.
            tokio::select! {
                _ = shared.work.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let resp = timeout(cfg.stall_timeout, conn.next()).await.map_err(|_| SourceError::Stalled)??;
        match resp {
            PeerResponse::Chunk { chunk, data } => {
                expect_front(&mut inflight, chunk)?;
                window.arrived(data.len());
                shared.limiter.acquire(data.len()).await;
                if to_writer.send((chunk, data)).await.is_err() {
                    // The writer stopped with an error; try_join reports it.
                    return Ok(());
                }
            }
            PeerResponse::DontHave { chunk } => {
                expect_front(&mut inflight, chunk)?;
                shared.sched().release(chunk, id, true);
                shared.work.notify_waiters();
            }
            PeerResponse::Error(e) => return Err(SourceError::Refused(e)),
            PeerResponse::Welcome { .. } => return Err(SourceError::Protocol("unexpected welcome".into())),
        }
    }
}

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
const PIPELINE_WINDOW: f64 = 0.3;

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

fn expect_front(inflight: &mut VecDeque<u32>, chunk: u32) -> Result<(), SourceError> {
    match inflight.front() {
        Some(&c) if c == chunk => {
            inflight.pop_front();
            Ok(())
        }
        other => Err(SourceError::Protocol(format!("answered chunk {chunk}, expected {other:?}"))),
    }
}

/// Verifies and stores chunks as they arrive; the scheduler and the coordinator hear of each.
async fn write_loop(
    shared: &DownloadState,
    id: SourceId,
    mut chunks: mpsc::Receiver<(u32, Bytes)>,
) -> Result<(), SourceError> {
    while let Some((chunk, data)) = chunks.recv().await {
        let Ok(idx) = shared.meta.chunk(chunk) else {
            return Err(SourceError::Protocol(format!("chunk {chunk} out of range")));
        };
        let bytes = data.len();
        let partial = shared.partial.clone();
        let written = tokio::task::spawn_blocking(move || partial.write_chunk(idx, &data))
            .await
            .map_err(|e| SourceError::Lost(format!("storage task failed: {e}")))?;
        match written {
            Ok(_) => {
                let event = match shared.sched().complete(chunk, id) {
                    Completion::New => Event::Stored { source: id, bytes },
                    Completion::Duplicate => Event::Duplicate { source: id, bytes },
                };
                let _ = shared.events.send((event, chunk));
            }
            Err(StoreError::HashMismatch { .. }) => {
                let strikes = shared.sched().failed(chunk, id);
                shared.work.notify_waiters();
                let _ = shared.events.send((Event::Bad { source: id, chunk, bytes }, chunk));
                if strikes >= shared.config.bad_data_strikes {
                    return Err(SourceError::BadData { strikes });
                }
            }
            // The download finished while this copy was in flight.
            Err(StoreError::Finished { .. }) => return Ok(()),
            Err(e) => return Err(SourceError::Storage(e)),
        }
    }
    Ok(())
}
