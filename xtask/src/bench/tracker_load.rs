//! `bench tracker`: a load generator speaking the tracker protocol (the proto crate's codec) holds
//! many sessions against a tracker process: P peers each register F files, then C of the sessions
//! issue File Locations and Chunk Register requests, first as fast as the tracker answers
//! (throughput), then at a fixed offered rate (latency without queueing of our own making). The
//! idle sessions keep themselves alive as real peers do. Reports requests/s, latency percentiles,
//! and the tracker's resident memory per registered (peer, file).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::{DEFAULT_MAX_FRAME, MIN_CHUNK_SIZE};
use proto::tracker::{Register, RegisterFile, TrackerRequest, TrackerResponse};
use proto::{Bitmap, FileMeta, Have, Hello};
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::single::start_tracker;
use super::util::{fill, proc_status_mib, Bins, Report};

/// Requests per second the tracker must sustain.
const RPS_TARGET: f64 = 100_000.0;
/// p99 latency at that rate, ms.
const P99_TARGET_MS: f64 = 5.0;
/// Resident memory per registered (peer, file), KiB.
const RSS_TARGET_KIB: f64 = 2.0;
/// Throughput while `/metrics` and the swarm page's data are fetched every second, over the
/// throughput without: at least this.
const SCRAPE_TARGET: f64 = 0.97;

type Conn = Framed<TcpStream, LoadCodec>;

#[path = "tracker_load_codec.rs"]
mod codec;
use codec::LoadCodec;

/// What the load generator is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Peers (sessions) registered.
    pub(crate) peers: usize,
    /// Files each peer registers (the same files for all: a popular swarm).
    pub(crate) files: usize,
    /// Chunks per file.
    pub(crate) chunks: u32,
    /// Sessions issuing requests.
    pub(crate) active: usize,
    /// Seconds of each measured phase.
    pub(crate) secs: u64,
}

/// Latency percentiles from samples in microseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

pub(crate) fn run(bins: &Bins, setup: Setup) -> anyhow::Result<Report> {
    // Each session is a socket here and another in the tracker; the tracker is its own process.
    let cap = (setup.peers + 100).to_string();
    // HTTP on, as an operator runs it; scraped only in the phases that measure what that costs.
    let http = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").context("pick a port for HTTP")?;
        probe.local_addr()?
    };
    let (tracker, addr) = start_tracker(bins, &["--max-connections", &cap, "--http", &http.to_string()])?;
    let addr: SocketAddr = addr.parse().context("tracker address")?;
    let rss_empty = proc_status_mib(tracker.pid(), "VmRSS:").unwrap_or(0.0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let r = rt.block_on(load(setup, addr, http, tracker.pid(), rss_empty));
    // Sessions close with the runtime, before the tracker is stopped.
    drop(rt);
    r
}

fn metas(setup: &Setup) -> Vec<FileMeta> {
    let mut state = 17u64;
    (0..setup.files)
        .map(|i| {
            let mut data = vec![0u8; setup.chunks as usize * MIN_CHUNK_SIZE as usize - 100];
            fill(&mut data, &mut state);
            FileMeta::from_bytes(&format!("load/file-{i:04}"), MIN_CHUNK_SIZE, &data)
        })
        .collect()
}

async fn connect(addr: SocketAddr) -> anyhow::Result<(Framed<TcpStream, TrackerClientCodec>, u64)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut conn = Framed::new(stream, TrackerClientCodec::new(DEFAULT_MAX_FRAME));
    conn.send(TrackerRequest::Hello(Hello::current())).await?;
    match conn.next().await {
        Some(Ok(Ok(TrackerResponse::Welcome(w)))) => Ok((conn, w.keepalive_ms)),
        other => bail!("handshake failed: {other:?}"),
    }
}

/// Opens a session for peer `i` and registers every file: even peers complete, odd peers a
/// random half of the chunks.
async fn register(addr: SocketAddr, i: usize, metas: Arc<Vec<FileMeta>>) -> anyhow::Result<(Conn, u64)> {
    let (mut conn, keepalive) = connect(addr).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let files = metas
        .iter()
        .map(|m| {
            let have = if i % 2 == 0 {
                Have::Complete
            } else {
                let mut b = Bitmap::new(m.num_chunks());
                (0..m.num_chunks()).filter(|_| rng.random_bool(0.5)).for_each(|c| {
                    b.set(c);
                });
                Have::Partial(b)
            };
            RegisterFile { meta: m.clone(), have }
        })
        .collect();
    let port = 10_000 + (i % 50_000) as u16;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    conn.send(TrackerRequest::Register(Register { listen, files })).await?;
    match conn.next().await {
        Some(Ok(Ok(TrackerResponse::Registered { results }))) if results.iter().all(Result::is_ok) => {
            let codec = LoadCodec::new()?;
            Ok((conn.map_codec(|_| codec), keepalive))
        }
        other => bail!("register failed: {other:?}"),
    }
}

/// The request mix: half File Locations, half Chunk Register, random files and chunks; or, to
/// measure the floor that round trips alone set, only keep-alives.
fn request(rng: &mut impl Rng, setup: &Setup, keepalive_only: bool) -> TrackerRequest {
    if keepalive_only {
        return TrackerRequest::KeepAlive;
    }
    let name = format!("load/file-{:04}", rng.random_range(0..setup.files));
    if rng.random_bool(0.5) {
        TrackerRequest::FileLocations { name }
    } else {
        TrackerRequest::ChunkRegister { name, chunk: rng.random_range(0..setup.chunks) }
    }
}

fn ok(resp: Option<Result<bool, proto::CodecError>>) -> anyhow::Result<()> {
    match resp {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => bail!("unexpected reply (an error or another kind)"),
        Some(Err(e)) => bail!("framing failed: {e}"),
        None => bail!("the tracker closed the session"),
    }
}

/// Closed loop: `depth` requests in flight, the next sent as soon as a reply is in (depth 1: the
/// way a peer's session talks to the tracker).
async fn closed_loop(
    mut conn: Conn,
    setup: Setup,
    until: Instant,
    seed: u64,
    load: Load,
) -> anyhow::Result<(Conn, Vec<u32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut lat = Vec::new();
    let mut sent: VecDeque<Instant> = VecDeque::new();
    loop {
        while sent.len() < load.depth && Instant::now() < until {
            conn.feed(request(&mut rng, &setup, load.keepalive_only)).await?;
            sent.push_back(Instant::now());
        }
        if sent.is_empty() {
            return Ok((conn, lat));
        }
        conn.flush().await?;
        ok(conn.next().await)?;
        if let Some(t) = sent.pop_front() {
            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }
}

/// What a closed-loop phase sends.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    /// Requests in flight per session.
    depth: usize,
    /// Only keep-alives (the round-trip floor), not the File Locations / Chunk Register mix.
    keepalive_only: bool,
}

/// Open loop: one request every `period` whatever the replies do, latency measured from when
/// each was due, so a slow tracker cannot hide its delays by slowing the generator down.
async fn open_loop(
    mut conn: Conn,
    setup: Setup,
    period: Duration,
    until: Instant,
    seed: u64,
) -> anyhow::Result<(Conn, Vec<u32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Sessions start spread over one period.
    let mut next = Instant::now() + period.mul_f64(rng.random_range(0.0..1.0));
    let mut due: VecDeque<Instant> = VecDeque::new();
    let mut lat = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next), if next < until => {
                conn.send(request(&mut rng, &setup, false)).await?;
                due.push_back(next);
                next += period;
            }
            r = conn.next(), if !due.is_empty() => {
                ok(r)?;
                if let Some(t) = due.pop_front() {
                    lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
            else => break,
        }
    }
    Ok((conn, lat))
}

/// What every session is told to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Keep alive and wait.
    Idle,
    /// Active sessions: closed loop until the instant.
    Closed(Instant, Load),
    /// Active sessions: open loop at the period until the instant.
    Open(Duration, Instant),
    /// Close.
    Done,
}

/// One session for the whole run: keeps itself alive whenever idle (as a real peer does), and
/// when active runs each measured phase, sending back its latencies.
async fn session(
    mut conn: Conn,
    keepalive_ms: u64,
    active: Option<u64>,
    setup: Setup,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    results: tokio::sync::mpsc::UnboundedSender<anyhow::Result<Vec<u32>>>,
) {
    let every = Duration::from_millis(keepalive_ms.max(100));
    // Keep-alives on a schedule of their own, started at a random point, that phase changes do not
    // reset: real peers' keep-alives are spread out, not all sent at the same instant.
    let mut next_keepalive = Instant::now() + every.mul_f64(rand::random_range(0.0..1.0));
    loop {
        let current = *phase.borrow_and_update();
        let measured = match (current, active) {
            (Phase::Done, _) => return,
            (Phase::Closed(until, load), Some(seed)) => {
                closed_loop(conn, setup, until, seed, load).await.map(|(c, l)| (c, Some(l)))
            }
            (Phase::Open(period, until), Some(seed)) => {
                open_loop(conn, setup, period, until, seed).await.map(|(c, l)| (c, Some(l)))
            }
            _ => Ok((conn, None)),
        };
        match measured {
            Ok((c, lat)) => {
                conn = c;
                if let Some(lat) = lat {
                    let _ = results.send(Ok(lat));
                }
            }
            Err(e) => {
                let _ = results.send(Err(e));
                return;
            }
        }
        // Idle until the next phase, keeping the session alive.
        loop {
            tokio::select! {
                r = phase.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive += every;
                    let alive = async {
                        conn.send(TrackerRequest::KeepAlive).await?;
                        ok(conn.next().await)
                    };
                    if let Err(e) = alive.await {
                        let _ = results.send(Err(e));
                        return;
                    }
                }
            }
        }
    }
}

/// Runs one measured phase on the active sessions; returns their latencies, sorted, and the
/// phase's length in seconds.
async fn measure(
    phase: &tokio::sync::watch::Sender<Phase>,
    results: &mut tokio::sync::mpsc::UnboundedReceiver<anyhow::Result<Vec<u32>>>,
    active: usize,
    next: Phase,
) -> anyhow::Result<(Vec<u32>, f64)> {
    let start = Instant::now();
    phase.send_replace(next);
    let mut lat = Vec::new();
    for _ in 0..active {
        match results.recv().await {
            Some(r) => lat.extend(r?),
            None => bail!("sessions ended early"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    phase.send_replace(Phase::Idle);
    lat.sort_unstable();
    Ok((lat, secs))
}

/// Fetches `/metrics` and the swarm page's file list from the tracker's HTTP every second, as a
/// Prometheus server and an open page would, until dropped; counts the answers.
async fn scrape(http: SocketAddr, done: Arc<std::sync::atomic::AtomicU64>) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for path in ["/metrics", "/api/v1/files"] {
            let mut s = TcpStream::connect(http).await.context("connect to the tracker's HTTP")?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes()).await?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await?;
            anyhow::ensure!(
                reply.starts_with(b"HTTP/1.1 200"),
                "GET {path}: {}",
                String::from_utf8_lossy(&reply[..reply.len().min(80)])
            );
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn load(
    setup: Setup,
    addr: SocketAddr,
    http: SocketAddr,
    tracker_pid: u32,
    rss_empty: f64,
) -> anyhow::Result<Report> {
    let metas = Arc::new(metas(&setup));

    // Registration, `active` sessions at a time; each registered session then keeps itself alive.
    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Idle);
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let mut sessions = tokio::task::JoinSet::new();
    let mut pending = tokio::task::JoinSet::new();
    let (mut next, mut registered) = (0, 0);
    while registered < setup.peers {
        while next < setup.peers && pending.len() < setup.active {
            let metas = metas.clone();
            let i = next;
            pending.spawn(async move { register(addr, i, metas).await.map(|s| (i, s)) });
            next += 1;
        }
        let Some(r) = pending.join_next().await else { break };
        let (i, (conn, keepalive)) = r??;
        let active = (i < setup.active).then_some(i as u64);
        sessions.spawn(session(conn, keepalive, active, setup, phase_rx.clone(), results_tx.clone()));
        registered += 1;
    }
    let reg_secs = start.elapsed().as_secs_f64();
    let rss = proc_status_mib(tracker_pid, "VmRSS:").context("tracker RSS")?;
    let holdings = (setup.peers * setup.files) as f64;

    // The floor round trips alone set on this machine: keep-alives, closed loop.
    let phase_len = Duration::from_secs(setup.secs);
    let closed = |depth, keepalive_only| Phase::Closed(Instant::now() + phase_len, Load { depth, keepalive_only });
    let (lat_floor, secs) = measure(&phase, &mut results, setup.active, closed(1, true)).await?;
    let rps_floor = lat_floor.len() as f64 / secs;

    // Throughput: closed loop.
    let (lat_closed, secs) = measure(&phase, &mut results, setup.active, closed(1, false)).await?;
    let rps_closed = lat_closed.len() as f64 / secs;

    // The same while scraped every second, alternating with unscraped runs so that drift on this
    // shared machine falls on both sides.
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut plain, mut scraped) = (lat_closed.len() as f64 / secs, 0.0);
    for round in 0..2 {
        let scraper = tokio::spawn(scrape(http, scrapes.clone()));
        let (lat, secs) = measure(&phase, &mut results, setup.active, closed(1, false)).await?;
        scraper.abort();
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), scraper).await.map(|r| r.map_err(|_| ())) {
            return Err(e.context("scraping the tracker's HTTP"));
        }
        scraped += lat.len() as f64 / secs;
        if round == 0 {
            let (lat, secs) = measure(&phase, &mut results, setup.active, closed(1, false)).await?;
            plain += lat.len() as f64 / secs;
        }
    }
    let scrape_ratio = scraped / plain;
    let scrapes = scrapes.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(scrapes > 0, "no scrape of the tracker's HTTP succeeded");

    // The same with 8 requests in flight per session: the tracker's capacity once round trips
    // are not the limit (it answers what is buffered in one write).
    let (lat_deep, secs) = measure(&phase, &mut results, setup.active, closed(8, false)).await?;
    let rps_deep = lat_deep.len() as f64 / secs;

    // Latency at half the measured capacity, then at the target rate: open loop. The overload
    // comes last so that nothing it leaves behind colours the other figures.
    let open = |rate: f64| Phase::Open(Duration::from_secs_f64(setup.active as f64 / rate), Instant::now() + phase_len);
    let half = (rps_closed / 2.0).min(RPS_TARGET);
    let (lat_half, _) = measure(&phase, &mut results, setup.active, open(half)).await?;
    let (lat_open, secs) = measure(&phase, &mut results, setup.active, open(RPS_TARGET)).await?;
    let rps_open = lat_open.len() as f64 / secs;
    let rss_end = proc_status_mib(tracker_pid, "VmRSS:").unwrap_or(rss);
    phase.send_replace(Phase::Done);
    while sessions.join_next().await.is_some() {}
    if let Ok(Err(e)) = results.try_recv() {
        return Err(e.context("a session failed"));
    }

    let mut r = Report::new(
        "tracker",
        format!(
            "{} peers x {} files ({} chunks each) registered; {} sessions issuing File Locations / Chunk Register 50/50, {} s per phase",
            setup.peers, setup.files, setup.chunks, setup.active, setup.secs
        ),
    );
    r.row("registration: (peer, file) registrations per second", holdings / reg_secs, "/s");
    r.row("reference: keep-alive round trips, closed loop (no registry work)", rps_floor, "req/s");
    r.at_least("throughput, closed loop (1 request in flight per session)", rps_closed, "req/s", RPS_TARGET);
    r.row("  throughput / keep-alive round trips", rps_closed / rps_floor, "ratio");
    r.at_least(
        "  with /metrics and the page's data fetched every second / without",
        scrape_ratio,
        "ratio",
        SCRAPE_TARGET,
    );
    r.row("  HTTP answers during those phases", scrapes as f64, "");
    r.row("  p50 latency, closed loop", percentile(&lat_closed, 0.50), "ms");
    r.row("  p99 latency, closed loop", percentile(&lat_closed, 0.99), "ms");
    r.row("throughput, closed loop, 8 requests in flight per session", rps_deep, "req/s");
    r.row("  p50 latency, 8 in flight", percentile(&lat_deep, 0.50), "ms");
    r.row("  p99 latency, 8 in flight", percentile(&lat_deep, 0.99), "ms");
    r.row("offered load, open loop", RPS_TARGET, "req/s");
    r.row("  answered, open loop", rps_open, "req/s");
    r.row("  p50 latency, open loop", percentile(&lat_open, 0.50), "ms");
    r.at_most("  p99 latency, open loop", percentile(&lat_open, 0.99), "ms", P99_TARGET_MS);
    r.row("  p99.9 latency, open loop", percentile(&lat_open, 0.999), "ms");
    r.row("offered load, open loop at half the closed-loop throughput", half, "req/s");
    r.row("  p50 latency", percentile(&lat_half, 0.50), "ms");
    r.row("  p99 latency", percentile(&lat_half, 0.99), "ms");
    r.row("  p99.9 latency", percentile(&lat_half, 0.999), "ms");
    r.row("tracker RSS, empty", rss_empty, "MiB");
    r.row("tracker RSS, all registered", rss, "MiB");
    r.row("tracker RSS, after the load", rss_end, "MiB");
    r.at_most("tracker RSS per registered (peer, file)", rss.max(rss_end) * 1024.0 / holdings, "KiB", RSS_TARGET_KIB);
    r.note("the load generator runs on the same 2 cores as the tracker: the figures include its cost");
    r.note(format!(
        "closed-loop latency is mostly queueing: {} requests always in flight (Little's law: latency = in flight / throughput)",
        setup.active
    ));
    Ok(r)
}
