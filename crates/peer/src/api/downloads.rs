//! The API's downloads: one record per batch started through it, with its progress (from the
//! batch's watch channel), a rate over the last few seconds, its state and, once ended, its
//! report. Running downloads are capped by a semaphore (a permit is taken before anything is
//! resolved, and held by the download's task); finished records are kept, newest first, up to a
//! cap, so a client polling in a loop cannot make the node hold an unbounded history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::types::{ActiveFile, DownloadState, FileResult, SeedPolicy, SourceBytes, Status, Summary};
use crate::batch::{BatchProgress, BatchReport};
use crate::error::Error;
use crate::task::TaskGroup;

/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Progress samples closer together than this are merged, so a fast download does not pile up
/// thousands of samples per window.
const SAMPLE_SPACING: Duration = Duration::from_millis(100);

/// Every download started through the API. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Downloads {
    inner: Arc<Mutex<Inner>>,
    max_finished: usize,
}

struct Inner {
    next_id: u64,
    records: BTreeMap<u64, Record>,
    /// Finished ids, oldest first: the oldest is forgotten past `max_finished`.
    finished: VecDeque<u64>,
}

struct Record {
    seed: Option<SeedPolicy>,
    started_at: SystemTime,
    started: Instant,
    files: usize,
    progress: watch::Receiver<BatchProgress>,
    meter: RateMeter,
    state: DownloadState,
    ended: Option<(SystemTime, Instant)>,
    report: Option<BatchReport>,
    error: Option<String>,
    /// The batch's own task group: cancelling it stops this download alone.
    group: TaskGroup,
    /// Cancelled by the download's task as it ends, for `DELETE` to wait on.
    over: CancellationToken,
}

/// What the task running a download needs to report to its record.
pub(crate) struct Handle {
    downloads: Downloads,
    id: u64,
    progress: watch::Receiver<BatchProgress>,
    /// Held while the download runs: the cap on running downloads.
    _permit: OwnedSemaphorePermit,
    over: CancellationToken,
    /// The batch's outcome, recorded when the handle is dropped: however the task ends (a panic
    /// included), the record leaves `running` and `DELETE` stops waiting.
    result: Option<Result<BatchReport, Error>>,
}

impl Downloads {
    pub(crate) fn new(max_finished: usize) -> Downloads {
        let inner = Inner { next_id: 1, records: BTreeMap::new(), finished: VecDeque::new() };
        Downloads { inner: Arc::new(Mutex::new(inner)), max_finished }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new running download; its task reports through the handle.
    pub(crate) fn add(
        &self,
        files: usize,
        seed: Option<SeedPolicy>,
        progress: watch::Receiver<BatchProgress>,
        group: TaskGroup,
        permit: OwnedSemaphorePermit,
    ) -> (String, Handle) {
        let over = CancellationToken::new();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let now = Instant::now();
        let mut meter = RateMeter::default();
        meter.record(now, progress.borrow().bytes_done);
        inner.records.insert(
            id,
            Record {
                seed,
                started_at: SystemTime::now(),
                started: now,
                files,
                progress: progress.clone(),
                meter,
                state: DownloadState::Running,
                ended: None,
                report: None,
                error: None,
                group,
                over: over.clone(),
            },
        );
        let handle = Handle { downloads: self.clone(), id, progress, _permit: permit, over, result: None };
        (id.to_string(), handle)
    }

    /// Every record, oldest first.
    pub(crate) fn list(&self) -> Vec<Summary> {
        let now = Instant::now();
        self.lock().records.iter().map(|(id, r)| r.summary(*id, now)).collect()
    }

    /// One record in detail.
    pub(crate) fn status(&self, id: &str) -> Option<Status> {
        let id = id.parse::<u64>().ok()?;
        let inner = self.lock();
        inner.records.get(&id).map(|r| r.status(id, Instant::now()))
    }

    /// Cancels a running download and waits (at most `patience`) until it has stopped, so its
    /// partial downloads are on disk and its state final when this returns. A finished one is
    /// left as it is. `None` for an unknown id.
    pub(crate) async fn cancel(&self, id: &str, patience: Duration) -> Option<Status> {
        let key = id.parse::<u64>().ok()?;
        let over = {
            let mut inner = self.lock();
            let r = inner.records.get_mut(&key)?;
            if r.state == DownloadState::Running {
                // Marked now: it ends cancelled, unless every file was in place before the batch
                // noticed (then it is done, which the answer, given once it has ended, says).
                r.state = DownloadState::Cancelled;
                r.group.cancel();
            }
            r.over.clone()
        };
        let _ = tokio::time::timeout(patience, over.cancelled()).await;
        self.status(id)
    }

    /// Cancels every running download (the API is stopping).
    pub(crate) fn cancel_all(&self) {
        for r in self.lock().records.values_mut().filter(|r| r.state == DownloadState::Running) {
            r.state = DownloadState::Cancelled;
            r.group.cancel();
        }
    }

    fn finish(&self, id: u64, result: Result<BatchReport, Error>) {
        let mut inner = self.lock();
        let Some(r) = inner.records.get_mut(&id) else { return };
        let now = Instant::now();
        r.meter.record(now, r.progress.borrow().bytes_done);
        r.ended = Some((SystemTime::now(), now));
        let cancelled = r.state == DownloadState::Cancelled;
        r.state = match &result {
            Ok(report) if report.failed == 0 => DownloadState::Done,
            _ if cancelled => DownloadState::Cancelled,
            Err(Error::Cancelled) => DownloadState::Cancelled,
            _ => DownloadState::Failed,
        };
        match result {
            Ok(report) => {
                if report.failed > 0 {
                    r.error = Some(format!("{} of {} files failed", report.failed, report.files.len()));
                }
                r.report = Some(report);
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        inner.finished.push_back(id);
        while inner.finished.len() > self.max_finished {
            if let Some(old) = inner.finished.pop_front() {
                inner.records.remove(&old);
            }
        }
    }
}

impl Handle {
    /// Records progress (for the rate).
    fn sample(&self) {
        let bytes = self.progress.borrow().bytes_done;
        if let Some(r) = self.downloads.lock().records.get_mut(&self.id) {
            r.meter.record(Instant::now(), bytes);
        }
    }

    /// Runs the batch to its end, sampling its progress, and records the outcome. Once cancel
    /// is asked for, the batch gets `patience` to return by itself (its downloads stop cleanly,
    /// keeping their partials) before it is dropped (its tasks are cancelled already).
    pub(crate) async fn run(
        mut self,
        batch: impl std::future::Future<Output = Result<BatchReport, Error>>,
        cancel: CancellationToken,
        patience: Duration,
    ) {
        tokio::pin!(batch);
        let result = loop {
            tokio::select! {
                r = &mut batch => break r,
                Ok(()) = self.progress.changed() => self.sample(),
                () = cancel.cancelled() => {
                    break tokio::time::timeout(patience, &mut batch).await.unwrap_or(Err(Error::Cancelled));
                }
            }
        };
        self.result = Some(result);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::Io { action: "run the download", source: std::io::Error::other("its task ended unexpectedly") })
        });
        self.downloads.finish(self.id, result);
        self.over.cancel();
    }
}

impl Record {
    fn summary(&self, id: u64, now: Instant) -> Summary {
        let p = self.progress.borrow();
        let end = self.ended.map_or(now, |(_, at)| at);
        Summary {
            id: id.to_string(),
            state: self.state,
            files: self.files,
            files_done: p.files_done,
            files_failed: p.files_failed,
            bytes_total: p.bytes_total,
            bytes_done: p.bytes_done,
            rate_bytes_per_sec: if self.ended.is_some() { 0 } else { self.meter.rate(now) },
            sources: p.active.values().map(|f| f.active_sources).sum(),
            started_at: unix_secs(self.started_at),
            finished_at: self.ended.map(|(at, _)| unix_secs(at)),
            elapsed_secs: end.duration_since(self.started).as_secs_f64(),
            seed: self.seed,
            error: self.error.clone(),
        }
    }

    fn status(&self, id: u64, now: Instant) -> Status {
        let active = self
            .progress
            .borrow()
            .active
            .iter()
            .map(|(name, p)| ActiveFile {
                name: name.clone(),
                bytes_done: p.bytes_done,
                bytes_total: p.total,
                chunks_done: p.chunks_done,
                chunks_total: p.num_chunks,
                sources: p.active_sources,
                waiting_chunks: p.waiting_chunks,
            })
            .collect();
        let results = self.report.as_ref().map(|r| r.files.iter().map(file_result).collect());
        Status { summary: self.summary(id, now), active, results }
    }
}

fn file_result(f: &crate::batch::FileOutcome) -> FileResult {
    match &f.report {
        Some(r) => FileResult {
            name: f.name.clone(),
            ok: true,
            error: None,
            root: Some(r.root.clone()),
            bytes: Some(r.length),
            fetched_bytes: if r.already_complete { 0 } else { r.sources.iter().map(|s| s.bytes).sum() },
            already_complete: r.already_complete,
            elapsed_secs: r.elapsed_secs,
            sources: r.sources.iter().map(|s| SourceBytes { addr: s.addr.to_string(), bytes: s.bytes }).collect(),
        },
        None => FileResult {
            name: f.name.clone(),
            ok: false,
            error: f.error.clone(),
            root: None,
            bytes: None,
            fetched_bytes: 0,
            already_complete: false,
            elapsed_secs: 0.0,
            sources: Vec::new(),
        },
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Bytes per second over the last [`RATE_WINDOW`], from progress samples.
#[derive(Debug, Default)]
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn record(&mut self, now: Instant, bytes: u64) {
        match self.samples.back_mut() {
            Some(last) if now.duration_since(last.0) < SAMPLE_SPACING => last.1 = bytes,
            _ => self.samples.push_back((now, bytes)),
        }
        // One sample at or before the window's start is kept as the base.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    /// The rate between the window's base and now: it falls to zero when progress stops, even
    /// without new samples.
    fn rate(&self, now: Instant) -> u64 {
        let (Some(&(t0, b0)), Some(&(_, b1))) = (self.samples.front(), self.samples.back()) else { return 0 };
        // The latest sample at or before the window's start, else the oldest.
        let (t0, b0) =
            self.samples.iter().rev().find(|(t, _)| now.duration_since(*t) >= RATE_WINDOW).copied().unwrap_or((t0, b0));
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.05 {
            return 0;
        }
        (b1.saturating_sub(b0) as f64 / secs) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(d: &Downloads) -> (String, Handle) {
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let (_tx, rx) = watch::channel(BatchProgress::default());
        d.add(1, None, rx, TaskGroup::default(), permit)
    }

    #[tokio::test]
    async fn a_download_task_that_dies_is_recorded_as_failed() {
        let d = Downloads::new(10);
        let (id, handle) = add(&d);
        assert_eq!(d.status(&id).unwrap().summary.state, DownloadState::Running);
        drop(handle);
        let s = d.status(&id).unwrap().summary;
        assert_eq!(s.state, DownloadState::Failed);
        assert!(s.error.unwrap().contains("ended unexpectedly"));
        // DELETE does not wait for it.
        let s = tokio::time::timeout(Duration::from_secs(1), d.cancel(&id, Duration::from_secs(60))).await.unwrap();
        assert_eq!(s.unwrap().summary.state, DownloadState::Failed);
    }

    #[tokio::test]
    async fn running_records_are_kept_past_the_cap_on_finished_ones() {
        let d = Downloads::new(1);
        let (running, _keep) = add(&d);
        let ids: Vec<String> = (0..3).map(|_| add(&d).0).collect(); // each handle dropped: finished
        let listed: Vec<String> = d.list().into_iter().map(|s| s.id).collect();
        assert_eq!(listed, [running, ids[2].clone()]);
    }

    #[test]
    fn the_rate_covers_the_last_seconds_and_falls_to_zero_when_progress_stops() {
        let t = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.rate(t), 0);
        m.record(t, 0);
        for i in 1..=100u64 {
            m.record(t + Duration::from_millis(100 * i), i * 100_000);
        }
        // 1 MB/s all along.
        let now = t + Duration::from_secs(10);
        assert_eq!(m.rate(now), 1_000_000);
        assert!(m.samples.len() <= 52, "old samples are dropped: {}", m.samples.len());
        // Nothing for 10 s: nothing in the window.
        assert_eq!(m.rate(now + Duration::from_secs(10)), 0);
        // Samples closer than the spacing are merged.
        let mut m = RateMeter::default();
        for i in 0..1000u64 {
            m.record(t + Duration::from_micros(i), i);
        }
        assert_eq!(m.samples.len(), 1);
    }
}
