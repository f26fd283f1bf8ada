//! The tracker's budgets in bytes and its fairness, over real sockets: clients that never read
//! are bounded by the queued-bytes budget (RSS) and do not slow well-behaved clients (latency);
//! the connections furthest behind are dropped first; a slow but steady reader gets a large reply
//! whole (deadlines on progress); maximal Registers are checked off the async workers; the
//! metadata budgets refuse with typed errors; IPv4-mapped addresses are canonical.
//!
//! These tests measure the process's memory and latency, so they run one at a time (`SERIAL`)
//! and apart from the other tests (their own test binary). The largest metadata (2^18 chunks) is
//! built from arbitrary chunk hashes, as an attacker would (valid metadata needs no file data),
//! and its frames are written by hand: the test crate is not optimised, the tracker is.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proto::bitmap::Have;
use proto::codec::{TrackerClientCodec, LEN_PREFIX};
use proto::limits::{MAX_CHUNKS_PER_FILE, MIN_CHUNK_SIZE};
use proto::tracker::*;
use proto::{FileMeta, Hash, Hello};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{Decoder, Encoder};

/// Held for the whole of each test: their measurements must not see each other's connections.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Appends `v` as a postcard varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A file's metadata as postcard bytes, with arbitrary chunk hashes and the root they merge to.
struct BigMeta {
    name: String,
    chunks: usize,
    /// `FileMeta`'s postcard encoding.
    wire: Vec<u8>,
}

impl BigMeta {
    /// `chunks` chunk hashes from `hashes` (32 bytes each, its first hash replaced by `variant`
    /// so variants differ), merged to their root.
    fn new(name: &str, chunks: usize, hashes: &[u8], variant: u8) -> BigMeta {
        let mut bytes = hashes[..chunks * 32].to_vec();
        bytes[..32].fill(variant);
        let list: Vec<Hash> = bytes.chunks_exact(32).map(|c| Hash(c.try_into().unwrap())).collect();
        let length = chunks as u64 * u64::from(MIN_CHUNK_SIZE);
        let root = proto::meta::root_from_chunks(length, MIN_CHUNK_SIZE, &list);
        let mut wire = Vec::with_capacity(bytes.len() + 64);
        varint(&mut wire, name.len() as u64);
        wire.extend_from_slice(name.as_bytes());
        varint(&mut wire, length);
        varint(&mut wire, MIN_CHUNK_SIZE.into());
        wire.extend_from_slice(&root.0);
        varint(&mut wire, chunks as u64);
        wire.extend_from_slice(&bytes);
        BigMeta { name: name.into(), chunks, wire }
    }

    /// The whole File Meta reply frame the tracker sends for it.
    fn reply_frame(&self) -> Vec<u8> {
        let mut out = ((self.wire.len() + 1) as u32).to_be_bytes().to_vec();
        out.push(3);
        out.extend_from_slice(&self.wire);
        out
    }
}

/// Hash bytes for up to `MAX_CHUNKS_PER_FILE` chunks.
fn hash_pool(seed: u64) -> Vec<u8> {
    test_data(MAX_CHUNKS_PER_FILE as usize * 32, seed)
}

/// A whole Register frame: `files`, all complete, served at 127.0.0.1:`port`.
fn register_frame(port: u16, files: &[&BigMeta]) -> Vec<u8> {
    let mut body = vec![1, 0, 127, 0, 0, 1];
    varint(&mut body, port.into());
    varint(&mut body, files.len() as u64);
    for f in files {
        body.extend_from_slice(&f.wire);
        body.push(0);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The frame of one request, through the codec (small requests only: the test crate is slow).
fn request_frame(req: TrackerRequest) -> Vec<u8> {
    let mut buf = BytesMut::new();
    TrackerClientCodec::new(1 << 20).encode(req, &mut buf).unwrap();
    buf.to_vec()
}

/// Reads one whole frame (prefix included) off a raw stream.
async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; LEN_PREFIX];
    s.read_exact(&mut len).await.unwrap();
    let mut frame = len.to_vec();
    frame.resize(LEN_PREFIX + u32::from_be_bytes(len) as usize, 0);
    s.read_exact(&mut frame[LEN_PREFIX..]).await.unwrap();
    frame
}

/// A raw connection past the handshake; `rcvbuf` shrinks its receive buffer, so that little of
/// what the tracker sends can wait in the kernel instead of the tracker's memory.
async fn raw_session(addr: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(&request_frame(TrackerRequest::Hello(Hello::current()))).await.unwrap();
    let welcome = read_frame(&mut s).await;
    assert_eq!(welcome[LEN_PREFIX], 0, "a Welcome");
    s
}

/// Reads one whole frame (prefix included) off a blocking stream.
fn read_frame_blocking(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; LEN_PREFIX];
    s.read_exact(&mut len).unwrap();
    let mut frame = len.to_vec();
    frame.resize(LEN_PREFIX + u32::from_be_bytes(len) as usize, 0);
    s.read_exact(&mut frame[LEN_PREFIX..]).unwrap();
    frame
}

/// A client on a thread of its own, as a separate process would be (its copies of 16 MiB frames
/// do not run on the tracker's workers, nor compete with them for the CPU). It connects and Registers `frame` once (the warm-up:
/// the first large frames grow the processes' heaps), tells `ready`, waits for `go` and its
/// `delay`, then Registers `frame` `times` more times, expecting its `files` accepted, with a
/// Leave after each (so the next Register is checked afresh). Returns how many it sent then.
fn heavy_client(
    addr: SocketAddr,
    frame: &[u8],
    files: usize,
    times: usize,
    gates: &std::sync::Barrier,
    delay: Duration,
) -> usize {
    use std::io::Write;
    // It stands for another machine: at the lowest priority it takes only the CPU the tracker
    // leaves, instead of competing with it on a machine of two cores.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&request_frame(TrackerRequest::Hello(Hello::current()))).unwrap();
    read_frame_blocking(&mut s);
    let mut register = || {
        s.write_all(frame).unwrap();
        let mut reply = BytesMut::from(&read_frame_blocking(&mut s)[..]);
        match TrackerClientCodec::new(1 << 20).decode(&mut reply).unwrap().unwrap().unwrap() {
            TrackerResponse::Registered { results } => assert_eq!(results, vec![Ok(()); files]),
            other => panic!("{other:?}"),
        }
        s.write_all(&request_frame(TrackerRequest::Leave)).unwrap();
        assert_eq!(read_frame_blocking(&mut s), reply_frame(TrackerResponse::Left));
    };
    register();
    gates.wait();
    gates.wait();
    std::thread::sleep(delay);
    (0..times).for_each(|_| register());
    times
}

/// Registers `files` as complete through a session kept alive in the background.
async fn seed(
    addr: SocketAddr,
    port: u16,
    files: &[&BigMeta],
    small: Vec<(FileMeta, Have)>,
) -> tokio::task::JoinHandle<()> {
    let mut c = RawClient::connect(addr).await;
    if !files.is_empty() {
        c.send_raw(&register_frame(port, files)).await;
        match c.recv().await.unwrap() {
            TrackerResponse::Registered { results } => assert!(results.iter().all(Result::is_ok), "{results:?}"),
            other => panic!("{other:?}"),
        }
    }
    if !small.is_empty() {
        assert!(c.register(port, small).await.iter().all(Result::is_ok));
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(c.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        }
    })
}

/// Every client sends `req` once per `every` (the clients spread over the period, as real peers'
/// keep-alives are) for `dur`; returns the clients, every round trip (sorted) and the number of
/// failed requests.
async fn paced(
    clients: Vec<RawClient>,
    every: Duration,
    dur: Duration,
    req: TrackerRequest,
) -> (Vec<RawClient>, Vec<Duration>, usize) {
    let n = clients.len() as u32;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let req = req.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(start + every * i as u32 / n, every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let (mut lat, mut failed) = (Vec::new(), 0);
            while start.elapsed() < dur {
                tick.tick().await;
                let t = Instant::now();
                match c.call(req.clone()).await {
                    TrackerResponse::Error(_) => failed += 1,
                    _ => lat.push(t.elapsed()),
                }
            }
            (c, lat, failed)
        });
    }
    let (mut clients, mut all, mut failed) = (Vec::new(), Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (c, l, f) = r.unwrap();
        clients.push(c);
        all.extend(l);
        failed += f;
    }
    all.sort();
    (clients, all, failed)
}

/// Resets the largest resident set the kernel remembers for this process (Linux:
/// `/proc/self/clear_refs`); false where it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The largest resident set since [`reset_peak_rss`] (`VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0u64)
        * 1024
}

/// The hand-written frames are byte for byte the codec's.
#[test]
fn hand_written_frames_match_the_codec() {
    let pool = test_data(3 * 32, 5);
    let m = BigMeta::new("dir/x", 3, &pool, 9);
    let mut hashes: Vec<Hash> = pool.chunks_exact(32).map(|c| Hash(c.try_into().unwrap())).collect();
    hashes[0] = Hash([9; 32]);
    let length = 3 * u64::from(MIN_CHUNK_SIZE);
    let meta = FileMeta {
        name: "dir/x".into(),
        length,
        chunk_size: MIN_CHUNK_SIZE,
        root: proto::meta::root_from_chunks(length, MIN_CHUNK_SIZE, &hashes),
        chunk_hashes: hashes,
    };
    meta.validate().unwrap();
    let register = TrackerRequest::Register(Register {
        listen: "127.0.0.1:7000".parse().unwrap(),
        files: vec![RegisterFile { meta: meta.clone(), have: Have::Complete }],
    });
    assert_eq!(register_frame(7000, &[&m]), request_frame(register));
    let mut reply = BytesMut::new();
    proto::codec::TrackerServerCodec::new(1 << 20)
        .encode(TrackerResponse::FileMeta(Arc::new(meta)), &mut reply)
        .unwrap();
    assert_eq!(m.reply_frame(), reply.to_vec());
}

/// Item 2 of issue 9: 200 connections ask again and again for the File Meta of the largest file
/// (2^18 chunks, an 8 MiB reply) and never read. The tracker's memory grows by no more than its
/// queued-bytes budget, and well-behaved clients' request latency keeps its p99 within twice the
/// no-attack baseline measured just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_clients_are_bounded_by_the_queued_bytes_budget() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        const BUDGET: usize = 32 * MIB;
        let config = tracker::Config { max_queued_bytes: BUDGET, ..Default::default() };
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        let big = BigMeta::new("largest.bin", MAX_CHUNKS_PER_FILE as usize, &hash_pool(1), 1);
        let reply_len = big.reply_frame().len();
        let holder = seed(addr, 7000, &[&big], vec![(test_meta("f", 1, 8), Have::Complete)]).await;

        let mut good = Vec::new();
        for _ in 0..50 {
            good.push(RawClient::connect(addr).await);
        }
        let (every, phase) = (Duration::from_millis(20), Duration::from_millis(1500));
        let locate = TrackerRequest::FileLocations { name: "f".into() };
        // A warm-up, then the baseline.
        let (good, _, _) = paced(good, every, phase / 5, locate.clone()).await;
        let (good, base, failed) = paced(good, every, phase, locate.clone()).await;
        assert_eq!(failed, 0);

        let rss_before = rss_bytes();
        let peak_reset = reset_peak_rss();
        let ask = request_frame(TrackerRequest::FileMeta { name: big.name.clone() }).repeat(8);
        let attack = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..200 {
                let mut s = raw_session(addr, None).await;
                s.write_all(&ask).await.unwrap();
                held.push(s);
            }
            held
        });
        // The tracker's count of queued bytes, sampled throughout.
        let sample = async {
            let mut peak = 0;
            let start = Instant::now();
            while start.elapsed() < phase {
                peak = peak.max(t.queued_bytes());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        };
        let ((good, under, failed), peak_queued) = tokio::join!(paced(good, every, phase, locate), sample);
        let attackers = attack.await.unwrap();
        let peak = if peak_reset { peak_rss() } else { rss_bytes() };
        let growth = peak.saturating_sub(rss_before);
        let (base_p99, under_p99) = (percentile(&base, 0.99), percentile(&under, 0.99));
        println!(
            "200 non-reading clients x File Meta of 2^18 chunks ({reply_len} bytes a reply), queued-bytes budget {} MiB: \
             tracker RSS growth {:.1} MiB ({}), queued bytes at most {:.1} MiB; well-behaved clients' p99 \
             {base_p99:?} without, {under_p99:?} during ({} and {} requests, {failed} failures)",
            BUDGET / MIB,
            growth as f64 / MIB as f64,
            if peak_reset { "peak, VmHWM" } else { "after" },
            peak_queued as f64 / MIB as f64,
            base.len(),
            under.len(),
        );
        assert_eq!(failed, 0, "well-behaved clients failed during the attack");
        assert!(growth <= BUDGET as u64, "RSS grew {growth} bytes, budget {BUDGET}");
        assert!(peak_queued <= BUDGET);
        // 2x the baseline, with a millisecond of slack so scheduler noise on tiny latencies does
        // not decide the outcome (as in floods.rs).
        assert!(under_p99 <= base_p99 * 2 + Duration::from_millis(1), "p99 {base_p99:?} -> {under_p99:?}");

        drop(attackers);
        let reg = t.registry().clone();
        eventually("the attackers' sessions are gone", Duration::from_secs(10), || reg.stats().sessions == 51).await;
        eventually("nothing left queued", Duration::from_secs(5), || t.queued_bytes() == 0).await;
        drop(good);
        holder.abort();
        t.shutdown().await.unwrap();
    })
    .await;
}

/// The drop policy: when a reply would exceed the budget, the connection furthest behind (a
/// client that does not read) is dropped to make room, never one that reads; a reply that could
/// not fit even then is refused with a typed error, and the session goes on. (Which connections
/// go, in which order, is unit-tested in `tracker::backlog`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_furthest_behind_are_dropped_and_a_reply_too_large_is_refused() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        let large = BigMeta::new("large", MAX_CHUNKS_PER_FILE as usize, &hash_pool(2), 1);
        let large_len = large.reply_frame().len();
        let budget = large_len + 2 * MIB;
        let config = tracker::Config { max_queued_bytes: budget, ..Default::default() };
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        let holder = seed(addr, 7000, &[&large], vec![]).await;
        let ask = request_frame(TrackerRequest::FileMeta { name: large.name.clone() });

        // a asks and does not read: what the kernel does not take of its reply waits in the
        // tracker, more than the 2 MiB the budget has to spare besides one reply.
        let mut a = raw_session(addr, Some(16 * 1024)).await;
        a.write_all(&ask).await.unwrap();
        eventually(
            "a's reply waits in the tracker (the kernel took at most 6 MiB of it)",
            Duration::from_secs(5),
            || t.queued_bytes() > 2 * MIB,
        )
        .await;
        let behind = t.queued_bytes();

        // c reads: its reply needs the room a holds. Until a has stalled for the grace period
        // (`STALLED`, 1 s) c is told Overloaded and asks again; then a is dropped for it.
        let mut c = raw_session(addr, None).await;
        let asked = Instant::now();
        let overloaded =
            reply_frame(TrackerResponse::Error(RequestError::Overloaded { len: large_len as u64, max: budget as u64 }));
        let mut refusals = 0;
        loop {
            c.write_all(&ask).await.unwrap();
            let frame = read_frame(&mut c).await;
            if frame == large.reply_frame() {
                break;
            }
            assert_eq!(frame, overloaded, "c is refused with a typed error while a is not yet stalled");
            refusals += 1;
            assert!(asked.elapsed() < Duration::from_secs(10), "a was never dropped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (got, closed) = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            loop {
                match a.read(&mut buf).await {
                    Ok(0) | Err(_) => return (got, true),
                    Ok(n) => got += n,
                }
            }
        })
        .await
        .unwrap();
        assert!(closed && got < large_len, "a was dropped mid-reply ({got} of {large_len} bytes)");
        let reg = t.registry().clone();
        eventually("a's session is gone", Duration::from_secs(5), || reg.stats().sessions == 2).await;
        c.write_all(&request_frame(TrackerRequest::KeepAlive)).await.unwrap();
        assert_eq!(read_frame(&mut c).await, reply_frame(TrackerResponse::KeepAlive));
        assert!(!holder.is_finished(), "the holder, an idle reader, kept its session");
        println!(
            "drop policy: budget {budget} bytes; a non-reader with {behind} bytes unsent dropped for a reader's \
             {large_len}-byte reply (it had read {got} bytes) after {:?} ({refusals} Overloaded before)",
            asked.elapsed()
        );
        holder.abort();
        t.shutdown().await.unwrap();

        // A reply larger than the whole budget is refused with a typed error; the session goes on.
        let config = tracker::Config { max_queued_bytes: large_len - 1, ..Default::default() };
        let t = spawn_tracker(config).await;
        let holder = seed(t.addr(), 7000, &[&large], vec![]).await;
        let mut d = RawClient::connect(t.addr()).await;
        assert_eq!(
            d.call(TrackerRequest::FileMeta { name: large.name.clone() }).await,
            TrackerResponse::Error(RequestError::Overloaded { len: large_len as u64, max: large_len as u64 - 1 })
        );
        assert_eq!(d.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
        eventually("nothing left queued", Duration::from_secs(5), || t.queued_bytes() == 0).await;
        holder.abort();
        t.shutdown().await.unwrap();
    })
    .await;
}

/// The frame of one reply, through the codec (small replies only).
fn reply_frame(reply: TrackerResponse) -> Vec<u8> {
    let mut buf = BytesMut::new();
    proto::codec::TrackerServerCodec::new(1 << 20).encode(reply, &mut buf).unwrap();
    buf.to_vec()
}

/// Item 3: write deadlines measure progress. With a session timeout of 1 s, a client reading
/// the 8 MiB File Meta reply at about 3 MiB/s (nearly 3 s) gets all of it; one that stops
/// reading is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_gets_a_large_reply_whole() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        let config = tracker::Config { session_timeout: Duration::from_secs(1), ..Default::default() };
        let t = spawn_tracker(config).await;
        let addr = t.addr();
        let big = BigMeta::new("largest.bin", MAX_CHUNKS_PER_FILE as usize, &hash_pool(3), 1);
        let holder = seed(addr, 7000, &[&big], vec![]).await;
        let want = big.reply_frame();

        let mut slow = raw_session(addr, Some(64 * 1024)).await;
        let mut stopped = raw_session(addr, Some(64 * 1024)).await;
        let ask = request_frame(TrackerRequest::FileMeta { name: big.name.clone() });
        slow.write_all(&ask).await.unwrap();
        stopped.write_all(&ask).await.unwrap();
        let reg = t.registry().clone();
        // `stopped` never reads: no byte leaves for 1 s, and its session ends.
        let cut_off = tokio::spawn(async move {
            eventually("the stopped reader is cut off", Duration::from_secs(5), || reg.stats().sessions == 2).await;
        });

        // 32 KiB every 10 ms.
        let start = Instant::now();
        let mut got = Vec::with_capacity(want.len());
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut buf = vec![0u8; 32 * 1024];
        while got.len() < want.len() {
            tick.tick().await;
            let room = buf.len().min(want.len() - got.len());
            let n = slow.read(&mut buf[..room]).await.unwrap();
            assert!(n > 0, "the tracker closed the slow reader after {} of {} bytes", got.len(), want.len());
            got.extend_from_slice(&buf[..n]);
        }
        let took = start.elapsed();
        println!("slow reader: {} bytes in {took:?} with a 1 s session timeout", got.len());
        assert!(got == want, "the reply arrived whole and intact");
        assert!(took > Duration::from_secs(2), "the read was meant to be slow: {took:?}");
        cut_off.await.unwrap();
        // The slow reader's session is alive and well.
        slow.write_all(&request_frame(TrackerRequest::KeepAlive)).await.unwrap();
        assert_eq!(read_frame(&mut slow).await, reply_frame(TrackerResponse::KeepAlive));
        drop(stopped);
        holder.abort();
        t.shutdown().await.unwrap();
    })
    .await;
}

/// Item 5: Register's metadata checks (2^18 hash merges a file) run off the async workers, so
/// 200 sessions' keep-alive round trips keep their p99 within twice the baseline while 4
/// clients send maximal valid Registers (16 MiB frames, two files of 2^18 chunks), twice each.
/// (With the checks inline on the workers, this p99 was about 5 ms on a machine of two cores.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_registers_do_not_hold_up_keepalives() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        let t = spawn_tracker(tracker::Config::default()).await;
        let addr = t.addr();
        let pool = hash_pool(4);
        // Two files filling a 16 MiB frame; each client its own content, so every Register is
        // checked afresh (a Leave in between removes the files again).
        let frames: Vec<Vec<u8>> = (0..4u8)
            .map(|i| {
                let a = BigMeta::new(&format!("max/{i}/a"), MAX_CHUNKS_PER_FILE as usize, &pool, 2 * i + 1);
                let b = BigMeta::new(&format!("max/{i}/b"), MAX_CHUNKS_PER_FILE as usize - 8, &pool, 2 * i + 2);
                assert!(a.chunks + b.chunks > (MAX_CHUNKS_PER_FILE as usize * 2) - 16);
                register_frame(7000 + u16::from(i), &[&a, &b])
            })
            .collect();
        assert!(frames.iter().all(|f| f.len() - LEN_PREFIX <= proto::limits::DEFAULT_MAX_FRAME));
        let frame_len = frames[0].len();

        // The heavy clients connect and warm up, then wait. Once going, they start 100 ms apart,
        // as independent peers would, rather than in the same millisecond: the measure is of the
        // checks, not of 64 MiB landing at once.
        let gates = Arc::new(std::sync::Barrier::new(frames.len() + 1));
        let heavy: Vec<_> = frames
            .into_iter()
            .enumerate()
            .map(|(i, frame)| {
                let gates = gates.clone();
                let delay = Duration::from_millis(100) * i as u32;
                std::thread::spawn(move || heavy_client(addr, &frame, 2, 2, &gates, delay))
            })
            .collect();
        let wait = |gates: Arc<std::sync::Barrier>| async move {
            tokio::task::spawn_blocking(move || {
                gates.wait();
            })
            .await
            .unwrap()
        };
        wait(gates.clone()).await;

        let mut sessions = Vec::new();
        for _ in 0..200 {
            sessions.push(RawClient::connect(addr).await);
        }
        let (every, phase) = (Duration::from_millis(50), Duration::from_millis(1500));
        // A warm-up, then the baseline.
        let (sessions, _, _) = paced(sessions, every, phase / 5, TrackerRequest::KeepAlive).await;
        let (sessions, base, failed) = paced(sessions, every, phase, TrackerRequest::KeepAlive).await;
        assert_eq!(failed, 0);

        wait(gates).await;
        let (sessions, under, failed) = paced(sessions, every, phase, TrackerRequest::KeepAlive).await;
        let registers: usize = tokio::task::spawn_blocking(move || heavy.into_iter().map(|h| h.join().unwrap()).sum())
            .await
            .unwrap();
        let (base_p99, under_p99) = (percentile(&base, 0.99), percentile(&under, 0.99));
        println!(
            "200 sessions' keep-alives: p99 {base_p99:?} without, {under_p99:?} while 4 clients sent {registers} maximal \
             Registers ({frame_len} bytes, 2 x 2^18 chunks each) ({} and {} round trips, {failed} failures)",
            base.len(),
            under.len()
        );
        assert_eq!(failed, 0);
        // 2x the baseline, with 2.5 ms of slack: on two cores shared with the four clients'
        // hashing, scheduler noise alone has reached 1.6 ms; with the checks made inline on the
        // async workers this p99 measured 4.8-5.9 ms, so the test still tells the two apart.
        assert!(under_p99 <= base_p99 * 2 + Duration::from_micros(2500), "p99 {base_p99:?} -> {under_p99:?}");
        drop(sessions);
        t.shutdown().await.unwrap();
    })
    .await;
}

/// The metadata budgets over the wire: per session and in total, each a typed error, in
/// Register (per file) and Chunk Register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_budgets_refuse_with_typed_errors() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        let (a_meta, b_meta) = (test_meta("a", 1, 40), test_meta("b", 2, 40));
        let cost = tracker::registry::session_cost(&a_meta);
        let mut config = tracker::Config::default();
        config.limits.max_meta_bytes_per_session = cost + cost / 2;
        config.limits.max_meta_bytes_total = 2 * cost + cost / 2;
        let (per_session, total) = (config.limits.max_meta_bytes_per_session, config.limits.max_meta_bytes_total);
        let t = spawn_tracker(config).await;
        let mut x = RawClient::connect(t.addr()).await;
        let mut y = RawClient::connect(t.addr()).await;
        let mut z = RawClient::connect(t.addr()).await;
        assert_eq!(
            x.register(7000, vec![(a_meta.clone(), Have::Complete), (b_meta.clone(), Have::Complete)]).await,
            [Ok(()), Err(RejectReason::SessionMetaQuota { max: per_session })]
        );
        assert_eq!(y.register(7001, vec![(b_meta.clone(), Have::Complete)]).await, [Ok(())]);
        assert_eq!(
            z.register(7002, vec![(test_meta("c", 3, 40), Have::Complete)]).await,
            [Err(RejectReason::GlobalMetaQuota { max: total })]
        );
        // Chunk Register of a file not held yet adds a holding: x is at its budget.
        assert_eq!(
            x.call(TrackerRequest::ChunkRegister { name: "b".into(), chunk: 0 }).await,
            TrackerResponse::Error(RequestError::Quota(RejectReason::SessionMetaQuota { max: per_session }))
        );
        // z may hold a small file's row, and once y leaves, a new file.
        assert_eq!(
            z.call(TrackerRequest::ChunkRegister { name: "b".into(), chunk: 0 }).await,
            TrackerResponse::ChunkRegistered
        );
        y.call(TrackerRequest::Leave).await;
        assert_eq!(z.register(7002, vec![(test_meta("c", 3, 1), Have::Complete)]).await, [Ok(())]);
        t.registry().check_invariants();
        drop((x, y, z));
        let reg = t.registry().clone();
        eventually("every session closed", Duration::from_secs(5), || reg.stats().sessions == 0).await;
        assert_eq!(t.registry().meta_bytes(), 0);
        t.shutdown().await.unwrap();
    })
    .await;
}

/// Item 6: through a dual-stack listener an IPv4 client is seen as `::ffff:127.0.0.1`; the
/// tracker uses the canonical `127.0.0.1`, for the observed address, the same-IP check and the
/// endpoints it hands out, whichever form the endpoint was sent in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_addresses_are_canonical() {
    let _serial = SERIAL.lock().await;
    with_timeout(async {
        let Ok(t) = tracker::Tracker::bind("[::]:0".parse().unwrap(), tracker::Config::default()).await else {
            println!("no IPv6 here: skipped");
            return;
        };
        let v4 = SocketAddr::from(([127, 0, 0, 1], t.addr().port()));
        let mut a = RawClient::connect(v4).await;
        let mut b = RawClient::connect(v4).await;
        assert_eq!(a.welcome.observed.ip(), std::net::Ipv4Addr::LOCALHOST);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7000".parse().unwrap();
        let files = vec![RegisterFile { meta: test_meta("f", 1, 2), have: Have::Complete }];
        match a.call(TrackerRequest::Register(Register { listen: mapped, files })).await {
            TrackerResponse::Registered { results } => assert_eq!(results, [Ok(())]),
            other => panic!("{other:?}"),
        }
        match b.call(TrackerRequest::FileLocations { name: "f".into() }).await {
            TrackerResponse::FileLocations(l) => {
                assert_eq!(l.sources.iter().map(|s| s.addr).collect::<Vec<_>>(), ["127.0.0.1:7000".parse().unwrap()])
            }
            other => panic!("{other:?}"),
        }
        t.shutdown().await.unwrap();
    })
    .await;
}
