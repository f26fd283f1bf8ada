//! The coordinator of one download: every decision, and no I/O. What happened comes in as an
//! [`Input`] (with the time, so tests choose it); what to do goes out as an [`Action`], which the
//! download's driver (`mod.rs`) carries out: connect to a source, send it a request, end its task,
//! announce a stored chunk. The coordinator is the single record of the chunk state (through the
//! [`Scheduler`], which only it touches), of each source's link, requests outstanding, strikes,
//! failures and ban, of attribution (the per-source report) and of progress.
//!
//! Sources are fed, not polled: a source's requests are topped up to the depth it asks for
//! (`want`, from its measured rate) whenever it answers one, learns a chunk, or chunks are freed
//! (a source ended or was dropped, a copy failed, a "don't have"). A source with nothing useful
//! just waits; the next news about it wakes it through its own [`Input`].
//!
//! Faster sources choose first. A source known (from the process's [`SourceBook`], across files)
//! to deliver at less than half the rate of another is not given the chunks that one holds while
//! it is connected, or connecting (for [`CONNECT_GRACE`]); a source of unknown rate counts as
//! fast until measured. So a capped or busy seed is asked only for what the faster peers do not
//! have, and spends its upload on chunks nobody else can give: the difference, for a folder of
//! small files fetched by several downloaders, between the seeds sending each file once or to
//! every downloader that happened to reach them first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::tracker::Locations;
use proto::{Bitmap, FileMeta, Hash, Have};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::book::SourceBook;
use super::scheduler::{Completion, Scheduler, SourceId};
use super::types::{DownloadConfig, Progress, SourceReport};
use crate::error::{Error, SourceError};
use crate::metrics::{DropReason, Metrics};

/// Something that happened to the download.
#[derive(Debug)]
pub(crate) enum Input {
    /// The tracker's answer to a locations poll.
    Locations(Result<Locations, Error>),
    /// A source completed its handshake; `want` requests may be outstanding to it.
    Connected { source: SourceId, have: Have, want: usize },
    /// A source answered request `asked` with chunk `chunk` (the same, or a fresh substitute);
    /// the data went on to the writer.
    Received { source: SourceId, asked: u32, chunk: u32, want: usize },
    /// A source answered a request with "don't have".
    DontHave { source: SourceId, chunk: u32, want: usize },
    /// A source announced chunks it now holds.
    Announced { source: SourceId, chunks: Vec<u32> },
    /// A source's task ended.
    Ended { source: SourceId, result: Result<(), SourceError> },
    /// The writer stored a verified copy of a chunk (or found it already stored).
    Stored { source: SourceId, chunk: u32, bytes: u64 },
    /// A copy failed verification.
    Bad { source: SourceId, chunk: u32, bytes: u64 },
    /// A copy from a source already dropped was discarded unverified.
    Discarded { source: SourceId, bytes: u64 },
    /// Storing failed locally: the download cannot go on.
    Failed(Error),
    /// Time passed: sources whose backoff is over are connected again (see
    /// [`Coordinator::next_retry`]).
    Tick,
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a task for a source.
    Connect { source: SourceId, addr: SocketAddr },
    /// Ask a source for a chunk; `fresh` lets it send another one nobody has yet.
    Request { source: SourceId, chunk: u32, fresh: bool },
    /// End a source's task: it was dropped for this download, or gave its place to another.
    Drop { source: SourceId },
    /// A chunk was stored: tell upload connections and the tracker.
    Stored { chunk: u32 },
}

/// How long a connected source must have had nothing to give before it gives its place to a
/// new one at the source cap.
pub(crate) const IDLE_EVICTION: Duration = Duration::from_secs(2);

/// How many times faster than another a source must have delivered to choose before it.
pub(crate) const OUTRANK: f64 = 2.0;

/// A slower source is held back only while the chunks still needed are fewer than this many times
/// what the faster sources deliver in the time it takes to deliver its own window: with more work
/// than that, the faster sources cannot take it all in time, and the slower one's upload is worth
/// having (without this, one seed measured faster than every peer kept a downloader on it alone).
pub(crate) const SPARE_WORK: f64 = 2.0;

/// How long a connecting source keeps the chunks it holds from slower sources: about a connection
/// set-up; one that takes longer (waiting for a place in the source budget, or unreachable) no
/// longer holds anyone up.
pub(crate) const CONNECT_GRACE: Duration = Duration::from_millis(500);

/// Fresh requests a source may answer with chunks already stored here before it is only asked for
/// exact chunks: an honest seed substitutes chunks nobody had, so this only bounds the waste of a
/// seed that has handed them out already (or one that lies).
pub(crate) const MAX_USELESS_SUBSTITUTES: u32 = 8;

/// A source's connection as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    Connecting,
    Up {
        /// Requests sent and not yet answered.
        outstanding: usize,
        /// How many it should have outstanding.
        want: usize,
    },
}

/// What the coordinator knows of one source across its connections.
#[derive(Debug)]
struct Record {
    report: SourceReport,
    link: Link,
    /// Connections that failed in a row, for the backoff; reset by a chunk delivered.
    failures: u32,
    /// When to connect again after a failure, without waiting for the tracker to list it again.
    retry_at: Option<Instant>,
    /// Copies that failed verification.
    strikes: u32,
    /// Fresh requests answered with a chunk stored here already.
    useless: u32,
    /// Listed in the tracker's latest locations reply: only such sources are retried on their
    /// own schedule (a peer the tracker no longer lists has probably left).
    listed: bool,
    /// Since when it is connected with nothing to fetch from it, if so: such a source gives up
    /// its place to a new one when the source cap is reached.
    idle_since: Option<Instant>,
    /// While connecting after the tracker listed it: since when, and what it holds.
    connecting: Option<(Instant, Have)>,
}

/// Chunks kept for faster sources, away from a slower one.
enum Reserved {
    Nothing,
    All,
    These(Bitmap),
}

/// The coordinator. See the module docs.
pub(crate) struct Coordinator {
    sched: Scheduler,
    rng: StdRng,
    name: String,
    root: Hash,
    config: DownloadConfig,
    /// This peer's endpoint as others see it: never a source of its own download.
    me: Option<SocketAddr>,
    /// By id, ordered, so that decisions do not depend on hash order.
    sources: BTreeMap<SourceId, Record>,
    by_addr: BTreeMap<SocketAddr, SourceId>,
    /// Sources connecting or connected.
    linked: usize,
    dropped: usize,
    progress: Progress,
    fetched: u32,
    actions: Vec<Action>,
    /// The time of the input being handled.
    now: Instant,
    /// Rates measured by this process's downloads, per source endpoint.
    book: Arc<SourceBook>,
    /// The node's metrics: what is recorded here per source is counted there too.
    metrics: Arc<Metrics>,
}

impl Coordinator {
    /// A coordinator for `meta`, with the chunks in `have` (`bytes_done` bytes) already stored;
    /// `seed` seeds the random tie-breaks; `book` has the sources' rates; `metrics` counts
    /// chunks, waste, strikes and drops for the node.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        meta: &FileMeta,
        have: &Bitmap,
        bytes_done: u64,
        config: DownloadConfig,
        me: Option<SocketAddr>,
        seed: u64,
        book: Arc<SourceBook>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let n = meta.num_chunks();
        let progress = Progress {
            total: meta.length,
            num_chunks: n,
            chunks_done: have.count(),
            bytes_done,
            bytes_resumed: bytes_done,
            ..Progress::default()
        };
        Self {
            sched: Scheduler::new(n, have),
            rng: StdRng::seed_from_u64(seed),
            name: meta.name.clone(),
            root: meta.root,
            config,
            me,
            sources: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            linked: 0,
            dropped: 0,
            progress,
            fetched: 0,
            actions: Vec::new(),
            now: Instant::now(),
            book,
            metrics,
        }
    }

    /// True when every chunk is stored.
    pub(crate) fn is_done(&self) -> bool {
        self.sched.is_done()
    }

    /// Progress so far.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The actions decided since the last call, in order.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Handles one input. An error ends the download.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Result<(), Error> {
        self.now = now;
        match input {
            Input::Locations(Ok(loc)) => self.on_locations(loc, now)?,
            Input::Locations(Err(e)) => debug!(error = %e, "locations request failed"),
            Input::Connected { source, have, want } => self.on_connected(source, &have, want),
            Input::Received { source, asked, chunk, want } => self.on_received(source, asked, chunk, want),
            Input::DontHave { source, chunk, want } => {
                if self.answered(source, want) {
                    self.sched.release(chunk, source, true);
                    self.top_up_all();
                }
            }
            Input::Announced { source, chunks } => {
                // Not `any`: every chunk must be counted.
                let gained = chunks.into_iter().fold(false, |g, chunk| self.sched.gained(source, chunk) | g);
                if gained {
                    self.top_up(source);
                }
            }
            Input::Ended { source, result } => self.on_ended(source, result, now),
            Input::Stored { source, chunk, bytes } => self.on_stored(source, chunk, bytes),
            Input::Bad { source, chunk, bytes } => self.on_bad(source, chunk, bytes)?,
            Input::Discarded { source, bytes } => {
                if let Some(r) = self.sources.get_mut(&source) {
                    r.report.wasted_bytes += bytes;
                    self.metrics.wasted_bytes.inc_by(bytes);
                }
            }
            Input::Failed(e) => return Err(e),
            Input::Tick => {
                self.retry_due(now);
                // Connecting sources whose grace ended no longer hold slower ones back.
                self.top_up_all();
            }
        }
        Ok(())
    }

    /// When the next source's backoff ends, if any source waits for one: the driver sends
    /// [`Input::Tick`] then, so a source is retried on a schedule of its own.
    /// Also when a connecting source stops keeping chunks from slower ones.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        let retry = (self.linked < self.config.max_sources)
            .then(|| {
                self.sources
                    .values()
                    .filter(|r| r.link == Link::Down && r.report.dropped.is_none() && r.listed)
                    .filter_map(|r| r.retry_at)
                    .min()
            })
            .flatten();
        let grace = self
            .sources
            .values()
            .filter(|r| r.link == Link::Connecting)
            .filter_map(|r| r.connecting.as_ref().map(|(t, _)| *t + CONNECT_GRACE))
            .filter(|&t| t > self.now)
            .min();
        retry.into_iter().chain(grace).min()
    }

    /// Connects the sources whose backoff is over (up to the cap), earliest first.
    fn retry_due(&mut self, now: Instant) {
        let mut due: Vec<(Instant, SourceId)> = self
            .sources
            .iter()
            .filter(|(_, r)| r.link == Link::Down && r.report.dropped.is_none() && r.listed)
            .filter_map(|(&id, r)| r.retry_at.filter(|&t| t <= now).map(|t| (t, id)))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            if self.linked >= self.config.max_sources {
                break;
            }
            let Some(rec) = self.sources.get_mut(&id) else { continue };
            rec.link = Link::Connecting;
            rec.retry_at = None;
            // What it holds is not known here: it keeps nothing from slower sources.
            rec.connecting = None;
            self.linked += 1;
            self.actions.push(Action::Connect { source: id, addr: rec.report.addr });
        }
        self.progress.active_sources = self.linked;
    }

    /// The error for a deadline that passed now.
    pub(crate) fn deadline_error(&self) -> Error {
        Error::Deadline {
            missing: self.sched.num_chunks() - self.sched.have_count(),
            first: self.sched.first_missing().unwrap_or(0),
        }
    }

    /// The whole-file check found chunks bad on disk: those missing from `have` (the partial's
    /// bitmap after the check) are fetched again.
    pub(crate) fn lost(&mut self, have: &Bitmap, bytes_done: u64) {
        for c in 0..self.sched.num_chunks() {
            if !have.get(c) && self.sched.has(c) {
                self.sched.lost(c);
                self.progress.chunks_done -= 1;
            }
        }
        self.progress.bytes_done = bytes_done;
        self.top_up_all();
    }

    /// The per-source reports worth showing (most bytes first) and the chunks fetched.
    pub(crate) fn into_reports(self) -> (Vec<SourceReport>, u32) {
        let mut reports: Vec<SourceReport> = self
            .sources
            .into_values()
            .map(|r| r.report)
            .filter(|r| r.bytes + r.wasted_bytes + r.duplicate_bytes > 0 || r.bad_chunks > 0 || r.dropped.is_some())
            .collect();
        reports.sort_by_key(|s| std::cmp::Reverse(s.bytes));
        (reports, self.fetched)
    }

    fn on_connected(&mut self, id: SourceId, have: &Have, want: usize) {
        let Some(rec) = self.sources.get_mut(&id) else { return };
        if rec.link != Link::Connecting || rec.report.dropped.is_some() {
            return;
        }
        rec.link = Link::Up { outstanding: 0, want };
        rec.connecting = None;
        self.sched.update_source(id, have);
        debug!(source = %rec.report.addr, "connected to source");
        // Slower sources held back for it may now take what it does not.
        self.top_up_all();
    }

    /// Counts an answer from `id`; false if the source is no longer linked (its answer is
    /// stale: it was dropped or ended).
    fn answered(&mut self, id: SourceId, now_want: usize) -> bool {
        match self.sources.get_mut(&id).map(|r| &mut r.link) {
            Some(Link::Up { outstanding, want }) => {
                *outstanding = outstanding.saturating_sub(1);
                *want = now_want;
                true
            }
            _ => false,
        }
    }

    fn on_received(&mut self, id: SourceId, asked: u32, chunk: u32, want: usize) {
        if !self.answered(id, want) {
            return;
        }
        if asked != chunk {
            if self.sched.has(chunk) {
                if let Some(r) = self.sources.get_mut(&id) {
                    r.useless += 1;
                }
            }
            self.sched.substitute(asked, chunk, id);
            // The chunk asked for is free again, for anyone.
            self.top_up_all();
        } else {
            self.top_up(id);
        }
    }

    fn on_stored(&mut self, id: SourceId, chunk: u32, bytes: u64) {
        let rec = self.sources.get_mut(&id);
        match self.sched.complete(chunk, id) {
            Completion::New => {
                self.fetched += 1;
                self.metrics.chunks_verified.inc();
                self.progress.chunks_done += 1;
                self.progress.bytes_done += bytes;
                if let Some(r) = rec {
                    r.report.bytes += bytes;
                    r.report.chunks += 1;
                    // A success: the next failure starts the backoff over.
                    r.failures = 0;
                }
                self.actions.push(Action::Stored { chunk });
                if self.sched.needed_count() == 0 && !self.sched.is_done() {
                    // Endgame: sources that had nothing new to fetch may now duplicate slow chunks.
                    self.top_up_all();
                }
            }
            Completion::Duplicate => {
                if let Some(r) = rec {
                    r.report.duplicate_bytes += bytes;
                    self.metrics.duplicate_bytes.inc_by(bytes);
                }
            }
        }
    }

    fn on_bad(&mut self, id: SourceId, chunk: u32, bytes: u64) -> Result<(), Error> {
        let Some(rec) = self.sources.get_mut(&id) else { return Ok(()) };
        if rec.report.dropped.is_some() {
            // Verified in parallel after its source was dropped: counted as discarded, so a
            // source is charged exactly `bad_data_strikes` bad chunks.
            rec.report.wasted_bytes += bytes;
            self.metrics.wasted_bytes.inc_by(bytes);
            return Ok(());
        }
        rec.report.bad_chunks += 1;
        rec.report.wasted_bytes += bytes;
        rec.strikes += 1;
        self.metrics.chunks_failed.inc();
        self.metrics.wasted_bytes.inc_by(bytes);
        self.metrics.source_strikes.inc();
        warn!(chunk, source = %rec.report.addr, "chunk failed verification; discarded");
        let strikes = rec.strikes;
        let attempts = self.sched.failed(chunk, id);
        if attempts >= self.config.max_chunk_failures {
            return Err(Error::ChunkFailed { chunk, attempts });
        }
        if strikes >= self.config.bad_data_strikes {
            self.drop_source(id, SourceError::BadData { strikes });
        }
        self.top_up_all();
        Ok(())
    }

    /// Drops a source for this download: its chunks go back to the pool, its task is ended and it
    /// is never connected again.
    fn drop_source(&mut self, id: SourceId, why: SourceError) {
        let Some(rec) = self.sources.get_mut(&id) else { return };
        warn!(source = %rec.report.addr, error = %why, "dropping source for this download");
        self.metrics.source_dropped(DropReason::of(&why));
        rec.report.dropped = Some(why.to_string());
        if rec.link != Link::Down {
            rec.link = Link::Down;
            rec.connecting = None;
            self.linked -= 1;
            self.actions.push(Action::Drop { source: id });
        }
        self.dropped += 1;
        self.sched.remove_source(id);
        self.progress.active_sources = self.linked;
    }

    fn on_ended(&mut self, id: SourceId, result: Result<(), SourceError>, now: Instant) {
        let Some(rec) = self.sources.get_mut(&id) else { return };
        let was = rec.link;
        if was == Link::Down {
            // Dropped already (its end was decided here) or a repeated end.
            return;
        }
        rec.link = Link::Down;
        rec.connecting = None;
        self.linked -= 1;
        self.progress.active_sources = self.linked;
        self.sched.remove_source(id);
        match result {
            Ok(()) => {}
            // The source closed a connection that had nothing to answer: its idle timeout, not a
            // failure. Connected again at the next poll, without backoff.
            Err(SourceError::Closed) if matches!(was, Link::Up { outstanding: 0, .. }) => {
                debug!(source = %rec.report.addr, "source closed an idle connection");
                rec.failures = 0;
                rec.retry_at = None;
            }
            Err(e) => {
                self.metrics.source_dropped(DropReason::of(&e));
                rec.failures += 1;
                let backoff = Duration::from_millis(250) * 2u32.pow(rec.failures.min(5));
                rec.retry_at = Some(now + backoff);
                debug!(source = %rec.report.addr, error = %e, ?backoff, "source ended");
            }
        }
        if let Link::Up { .. } = was {
            self.top_up_all();
        }
    }

    /// Sends `id` requests until it has as many outstanding as it wants, or nothing useful is
    /// left for it.
    fn top_up(&mut self, id: SourceId) {
        if !matches!(self.sources.get(&id).map(|r| r.link), Some(Link::Up { outstanding, want }) if outstanding < want)
        {
            return;
        }
        let reserved = match self.reserved_for_faster(id) {
            Reserved::Nothing => None,
            Reserved::These(bits) => Some(bits),
            Reserved::All => {
                // Everything it holds is better fetched elsewhere: it waits.
                if let Some(rec) = self.sources.get_mut(&id) {
                    if matches!(rec.link, Link::Up { outstanding: 0, .. }) && rec.idle_since.is_none() {
                        rec.idle_since = Some(self.now);
                    }
                }
                return;
            }
        };
        let Some(rec) = self.sources.get_mut(&id) else { return };
        let Link::Up { outstanding, want } = &mut rec.link else { return };
        while *outstanding < *want {
            let Some(chunk) = self.sched.pick_avoiding(id, &mut self.rng, reserved.as_ref()) else { break };
            // A seed may hand out a chunk nobody has yet instead: see PeerRequest::GetFresh.
            let fresh = self.sched.source_is_complete(id) && rec.useless < MAX_USELESS_SUBSTITUTES;
            self.actions.push(Action::Request { source: id, chunk, fresh });
            *outstanding += 1;
        }
        if *outstanding > 0 {
            rec.idle_since = None;
        } else if rec.idle_since.is_none() {
            rec.idle_since = Some(self.now);
        }
    }

    /// At the source cap, makes room for a new source by disconnecting the one that has had
    /// nothing to give for longest (at least [`IDLE_EVICTION`]); false if none qualifies. Not a
    /// failure: it may be connected again when it has something.
    pub(super) fn make_room(&mut self) -> bool {
        let now = self.now;
        let idlest = self
            .sources
            .iter()
            .filter(|(_, r)| matches!(r.link, Link::Up { outstanding: 0, .. }))
            .filter_map(|(&id, r)| r.idle_since.filter(|&t| now.duration_since(t) >= IDLE_EVICTION).map(|t| (t, id)))
            .min();
        let Some((_, id)) = idlest else { return false };
        if let Some(rec) = self.sources.get_mut(&id) {
            debug!(source = %rec.report.addr, "disconnecting a source with nothing to give, for another");
            rec.link = Link::Down;
            rec.idle_since = None;
        }
        self.metrics.source_dropped(DropReason::Evicted);
        self.linked -= 1;
        self.sched.remove_source(id);
        self.actions.push(Action::Drop { source: id });
        true
    }

    /// [`Coordinator::top_up`] for every connected source, fastest first: after chunks were
    /// freed.
    fn top_up_all(&mut self) {
        let mut ids: Vec<(f64, SourceId)> = self
            .sources
            .iter()
            .filter(|(_, r)| matches!(r.link, Link::Up { outstanding, want } if outstanding < want))
            .map(|(&id, r)| (self.book.rate(r.report.addr).unwrap_or(f64::INFINITY), id))
            .collect();
        ids.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, id) in ids {
            self.top_up(id);
        }
    }

    /// The chunks that sources at least [`OUTRANK`] times faster than `id` hold, while they are
    /// connected or connecting (for [`CONNECT_GRACE`]): `id` leaves those to them. Nothing for
    /// a source of unknown rate.
    fn reserved_for_faster(&self, id: SourceId) -> Reserved {
        let Some(rec) = self.sources.get(&id) else { return Reserved::Nothing };
        // A source that just failed or stalled (rate 0) counts every other as faster.
        let Some(mine) = self.book.rate(rec.report.addr) else { return Reserved::Nothing };
        let window = match rec.link {
            Link::Up { want, .. } => want.max(1) as f64,
            _ => 1.0,
        };
        let n = self.sched.num_chunks();
        // The faster sources and what they hold (None: everything), and what they deliver
        // together, a source of unknown rate counted as just fast enough.
        let mut faster: Vec<Option<&[u8]>> = Vec::new();
        let mut faster_rate = 0.0;
        for (&other, r) in &self.sources {
            if other == id || r.report.dropped.is_some() {
                continue;
            }
            let rate = self.book.rate(r.report.addr);
            if !rate.is_none_or(|f| f > 0.0 && f >= OUTRANK * mine) {
                continue;
            }
            let held = match (&r.link, &r.connecting) {
                (Link::Up { .. }, _) if self.sched.source_is_complete(other) => None,
                (Link::Up { .. }, _) => match self.sched.source_have(other) {
                    Some(b) => Some(b.as_bytes()),
                    None => continue,
                },
                (Link::Connecting, Some((since, have))) if self.now < *since + CONNECT_GRACE => match have {
                    Have::Complete => None,
                    Have::Partial(b) if b.len() == n => Some(b.as_bytes()),
                    Have::Partial(_) => continue,
                },
                _ => continue,
            };
            faster_rate += rate.unwrap_or(OUTRANK * mine);
            faster.push(held);
        }
        // More work left than the faster sources get through while this one delivers its window:
        // it takes its share.
        if mine > 0.0 && self.sched.needed_count() as f64 > SPARE_WORK * window * faster_rate / mine {
            return Reserved::Nothing;
        }
        if faster.iter().any(Option::is_none) {
            return Reserved::All;
        }
        let mut bits: Option<Vec<u8>> = None;
        for held in faster.into_iter().flatten() {
            let into = bits.get_or_insert_with(|| vec![0; n.div_ceil(8) as usize]);
            into.iter_mut().zip(held).for_each(|(i, h)| *i |= h);
        }
        match bits.and_then(|b| Bitmap::from_parts(n, b).ok()) {
            Some(b) => Reserved::These(b),
            None => Reserved::Nothing,
        }
    }
}

#[path = "locations.rs"]
mod locations;

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
