//! One source's connection loop: sends the requests the coordinator decides, matches answers to
//! them, hands chunk bytes to the writer and tells the coordinator what the source said. It makes
//! no decision of its own beyond the protocol: what to ask for, whether to go on and when to give
//! up on bad data are the coordinator's; the stall deadline and the pipeline depth it wants
//! (measured from its own rate) are this connection's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::peer::{PeerResponse, MAX_HAVE_MANY};
use proto::FileMeta;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::book::SourceBook;
use super::coordinator::Input;
use super::scheduler::SourceId;
use super::types::DownloadConfig;
use super::writer::Arrived;
use crate::connection::PeerConn;
use crate::error::{PeerProtocolError, SourceError};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// A request the coordinator wants sent: the chunk, and whether a fresh substitute is welcome.
pub(crate) type Request = (u32, bool);

/// What every source task of one download shares.
pub(crate) struct SourceContext {
    pub(crate) meta: Arc<FileMeta>,
    pub(crate) config: DownloadConfig,
    /// The process-wide download cap.
    pub(crate) limiter: Arc<RateLimiter>,
    /// To the coordinator.
    pub(crate) inbox: mpsc::UnboundedSender<Input>,
    /// To the writer; bounded, so a source slows down when storage lags.
    pub(crate) arrived: mpsc::Sender<Arrived>,
    /// Connections per source, shared with the process's other downloads.
    pub(crate) book: Arc<SourceBook>,
    /// The node's metrics: connections open, bytes received by source.
    pub(crate) metrics: Arc<Metrics>,
}

/// Tells the coordinator that a source's task ended, however it ends: returning, cancelled, or
/// unwinding from a panic (then as [`SourceError::TaskFailed`]).
struct EndNotice<'a> {
    inbox: &'a mpsc::UnboundedSender<Input>,
    source: SourceId,
    result: Option<Result<(), SourceError>>,
}

impl Drop for EndNotice<'_> {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or(Err(SourceError::TaskFailed));
        let _ = self.inbox.send(Input::Ended { source: self.source, result });
    }
}

/// Runs one source until it ends or `token` is cancelled (the coordinator dropped it, or the
/// download stopped); the coordinator hears of the end either way.
pub(crate) async fn run(
    cx: Arc<SourceContext>,
    source: SourceId,
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Request>,
    token: CancellationToken,
) {
    let mut notice = EndNotice { inbox: &cx.inbox, source, result: None };
    let result = token.run_until_cancelled(connection(&cx, source, addr, requests, &token)).await;
    notice.result = Some(result.unwrap_or(Ok(())));
}

async fn connection(
    cx: &SourceContext,
    source: SourceId,
    addr: SocketAddr,
    mut requests: mpsc::UnboundedReceiver<Request>,
    token: &CancellationToken,
) -> Result<(), SourceError> {
    // Held for as long as the connection lives; the wait counts as connecting.
    let _slot = cx.book.acquire(addr).await;
    let result = exchange(cx, source, addr, &mut requests, token).await;
    // A source that could not be reached or stalled is worth nothing now: it is not preferred
    // over anyone until it delivers again. (Closing an idle connection is no fault.)
    if result.as_ref().is_err_and(|e| !matches!(e, SourceError::Closed)) {
        cx.book.record(addr, 0.0);
    }
    result
}

async fn exchange(
    cx: &SourceContext,
    source: SourceId,
    addr: SocketAddr,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    token: &CancellationToken,
) -> Result<(), SourceError> {
    let cfg = &cx.config;
    let n = cx.meta.num_chunks();
    let (mut conn, have) = PeerConn::open(addr, &cx.meta, cfg.connect_timeout).await?;
    let _connected = cx.metrics.source_connected();
    let received = cx.metrics.downloaded.tally(&addr.to_string());
    // What earlier connections to this source delivered sets the first requests' depth.
    let mut window = Window::new(cfg.pipeline, cx.meta.chunk_size, cx.book.rate(addr));
    if cx.inbox.send(Input::Connected { source, have, want: window.depth() }).is_err() {
        return Ok(());
    }
    // Each request sent, with whether the source may answer another chunk instead (GetFresh).
    let mut inflight: VecDeque<Request> = VecDeque::new();
    // When the oldest outstanding request must be answered by. Only answers (a chunk or "don't
    // have") move it: announcements alone do not keep a source that never delivers.
    let mut answer_by = Instant::now();
    loop {
        let resp = tokio::select! {
            // Requests first, so the pipeline refills before the next answer is read.
            biased;
            req = requests.recv() => {
                // The coordinator is gone: the download is over.
                let Some(req) = req else { return Ok(()) };
                if inflight.is_empty() {
                    answer_by = Instant::now() + cfg.stall_timeout;
                    // Time without requests is not the source's slowness.
                    window.resume();
                }
                let mut next = Some(req);
                while let Some((chunk, fresh)) = next {
                    conn.request(chunk, fresh).await?;
                    inflight.push_back((chunk, fresh));
                    next = requests.try_recv().ok();
                }
                conn.flush().await?;
                continue;
            }
            r = answer(&mut conn, (!inflight.is_empty()).then_some(answer_by)) => r?,
        };
        let input = match resp {
            PeerResponse::Chunk { chunk, data } => {
                check_range(chunk, n)?;
                let asked = expect_front(&mut inflight, chunk, true)?;
                window.arrived(data.len(), || conn.rtt());
                if let Some(rate) = window.rate {
                    conn.pace(rate);
                }
                received.add(data.len() as u64);
                // Only chunks big enough that their transfer, not the round trip, sets the time
                // say what the source's rate is.
                if let Some(rate) = window.rate.filter(|_| data.len() >= RATE_SAMPLE_MIN) {
                    cx.book.record(addr, rate);
                }
                let _ = cx.inbox.send(Input::Received { source, asked, chunk, want: window.depth() });
                cx.limiter.acquire(data.len()).await;
                let arrived = Arrived { source, chunk, data, from: token.clone() };
                if cx.arrived.send(arrived).await.is_err() {
                    // The writer is gone: the download is stopping.
                    return Ok(());
                }
                // From now: time spent here (the rate cap, a slow disk) is not the source's.
                answer_by = Instant::now() + cfg.stall_timeout;
                continue;
            }
            PeerResponse::DontHave { chunk } => {
                expect_front(&mut inflight, chunk, false)?;
                answer_by = Instant::now() + cfg.stall_timeout;
                Input::DontHave { source, chunk, want: window.depth() }
            }
            PeerResponse::Have { chunk } => {
                check_range(chunk, n)?;
                Input::Announced { source, chunks: vec![chunk] }
            }
            PeerResponse::HaveMany { chunks } => {
                if chunks.len() > MAX_HAVE_MANY {
                    return Err(SourceError::Protocol(PeerProtocolError::TooManyHaves { got: chunks.len() }));
                }
                for &chunk in &chunks {
                    check_range(chunk, n)?;
                }
                Input::Announced { source, chunks }
            }
            PeerResponse::Error(e) => return Err(SourceError::Refused(e)),
            PeerResponse::Welcome { .. } => return Err(SourceError::Protocol(PeerProtocolError::UnexpectedWelcome)),
        };
        if cx.inbox.send(input).is_err() {
            return Ok(());
        }
    }
}

/// The source's next message; by `deadline` if requests are outstanding.
async fn answer(conn: &mut PeerConn, deadline: Option<Instant>) -> Result<PeerResponse, SourceError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, conn.next()).await.map_err(|_| SourceError::Stalled)?,
        None => conn.next().await,
    }
}

fn check_range(chunk: u32, num_chunks: u32) -> Result<(), SourceError> {
    if chunk < num_chunks {
        Ok(())
    } else {
        Err(SourceError::Protocol(PeerProtocolError::ChunkOutOfRange { chunk, num_chunks }))
    }
}

/// Takes the oldest outstanding request, which `chunk` answers: the same index, or, for a fresh
/// request answered with a chunk, any index in range. Returns the index asked for.
fn expect_front(inflight: &mut VecDeque<Request>, chunk: u32, with_data: bool) -> Result<u32, SourceError> {
    match inflight.front() {
        Some(&(c, fresh)) if c == chunk || (fresh && with_data) => {
            inflight.pop_front();
            Ok(c)
        }
        other => Err(SourceError::Protocol(PeerProtocolError::Unrequested { chunk, expected: other.map(|r| r.0) })),
    }
}

/// How many requests to keep in flight to one source: enough to cover [`PIPELINE_WINDOW`] of its
/// measured rate (so a fast source saturates the link), and one more than what arrives in a round
/// trip (so a source is not left waiting for the next request), at least 1 and at most the configured
/// pipeline. A slow source is therefore not handed chunks it would take seconds to deliver while
/// faster peers could have served them: this is what lets downloaders trade rather than all queue
/// on the seed. And a source that many downloaders share is asked for one chunk at a time by each
/// when the round trip is short: its queue of requests, which every new chunk waits behind on its
/// way through the swarm, stays one per downloader.
struct Window {
    max: usize,
    chunk_size: f64,
    /// Bytes per second, smoothed; `None` until the first chunk arrives.
    rate: Option<f64>,
    /// The connection's round-trip time, seconds, sampled every [`RTT_EVERY`] arrivals; `None`
    /// where the kernel does not tell (then at least 2 requests are kept in flight).
    rtt: Option<f64>,
    arrivals: u64,
    last: Instant,
}

/// The smallest chunk whose arrival updates the source's rate in the [`SourceBook`].
const RATE_SAMPLE_MIN: usize = 32 * 1024;

/// Time worth of data kept requested from each source.
const PIPELINE_WINDOW: f64 = 0.1;

/// Arrivals between two readings of the connection's round-trip time (a system call each).
const RTT_EVERY: u64 = 8;

/// Chunks arriving per round trip below which one request in flight keeps a source busy enough.
const ROUND_TRIP_NEGLIGIBLE: f64 = 0.1;

impl Window {
    fn new(max: usize, chunk_size: u32, known: Option<f64>) -> Self {
        let rate = known.filter(|r| *r > 0.0);
        let chunk_size = f64::from(chunk_size.max(1));
        Self { max: max.max(1), chunk_size, rate, rtt: None, arrivals: 0, last: Instant::now() }
    }

    /// Requests go out after a time without any: the next arrival is timed from now.
    fn resume(&mut self) {
        self.last = Instant::now();
    }

    fn depth(&self) -> usize {
        let Some(r) = self.rate else { return 2.min(self.max) };
        let cover = (r * PIPELINE_WINDOW / self.chunk_size).ceil();
        // What arrives in a round trip, in chunks, plus the one being sent. Below a tenth of a
        // chunk the source waits at most a tenth of a chunk's time for the next request.
        let round_trip = self.rtt.map_or(2.0, |rtt| {
            let per_trip = r * rtt / self.chunk_size;
            if per_trip < ROUND_TRIP_NEGLIGIBLE {
                1.0
            } else {
                (1.0 + per_trip).ceil()
            }
        });
        (cover.max(round_trip) as usize).clamp(1, self.max)
    }

    /// A chunk of `bytes` arrived; `rtt` reads the connection's round-trip time when it is due.
    fn arrived(&mut self, bytes: usize, rtt: impl FnOnce() -> Option<Duration>) {
        if self.arrivals % RTT_EVERY == 0 {
            self.rtt = rtt().map(|d| d.as_secs_f64());
        }
        self.arrivals += 1;
        self.record(bytes);
    }

    fn record(&mut self, bytes: usize) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-6);
        self.last = now;
        let sample = bytes as f64 / dt;
        self.rate = Some(self.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 64 * 1024;

    fn window(rate: f64, rtt: Option<f64>) -> Window {
        let mut w = Window::new(8, CHUNK, Some(rate));
        w.rtt = rtt;
        w
    }

    /// Two requests before anything is known; then enough for the rate's window and the round
    /// trip: one for a slow source on a short round trip (a shared source's queue stays short),
    /// two where the round trip is unknown, more as the round trip or the rate grows, never more
    /// than the pipeline.
    #[test]
    fn the_depth_covers_the_rate_and_the_round_trip() {
        assert_eq!(Window::new(8, CHUNK, None).depth(), 2);
        let kib = 1024.0;
        assert_eq!(window(130.0 * kib, Some(0.005)).depth(), 1, "a shared source on a LAN");
        assert_eq!(window(130.0 * kib, None).depth(), 2, "round trip unknown");
        // 1.2 MiB/s over 100 ms: 1.9 chunks arrive per round trip.
        assert_eq!(window(1200.0 * kib, Some(0.1)).depth(), 3);
        // 500 KiB/s over 60 ms: half a chunk per round trip, so two in flight.
        assert_eq!(window(500.0 * kib, Some(0.06)).depth(), 2);
        // 1 MiB/s: 100 ms of it is 1.6 chunks.
        assert_eq!(window(1024.0 * kib, Some(0.0005)).depth(), 2);
        assert_eq!(window(1e9, Some(0.0001)).depth(), 8, "at most the pipeline");
        assert_eq!(Window::new(1, CHUNK, None).depth(), 1);
    }

    /// The round-trip time is read at the first arrival and then every RTT_EVERY.
    #[test]
    fn the_round_trip_is_read_every_few_arrivals() {
        let mut w = Window::new(8, CHUNK, None);
        let mut reads = 0;
        for _ in 0..2 * RTT_EVERY + 1 {
            w.arrived(CHUNK as usize, || {
                reads += 1;
                Some(Duration::from_millis(1))
            });
        }
        assert_eq!(reads, 3);
        assert_eq!(w.rtt, Some(0.001));
    }
}
