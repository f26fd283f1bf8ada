//! What the tracker says at `info`, captured from a running tracker: sessions opened and closed,
//! Register refusals in one line per request, and the periodic summary with the right counts.

#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{file, Client};
use proto::tracker::{Register, RequestError, TrackerRequest, TrackerResponse};
use tracker::{Config, Tracker};

/// Log output, shared with the subscriber that writes it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_owned).collect()
    }

    /// Waits (up to 10 s) until `done` holds of the lines so far, and returns them.
    async fn until(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never logged: {what}\n{}", self.lines().join("\n"));
    }
}

/// The summary lines' request counts, by kind (register, locations, chunk register, other),
/// summed over every line so far, and how many lines there were.
fn summed(lines: &[String]) -> ([u64; 4], usize) {
    let mut sum = [0; 4];
    let mut n = 0;
    for line in lines.iter().filter(|l| l.contains("requests/s over the last")) {
        n += 1;
        // "(9: register 1, locations 3, chunk register 2, other 3)"
        let counts = line.rsplit_once(": register ").unwrap().1.trim_end_matches(')');
        let counts = format!("register {counts}");
        let numbers: Vec<u64> = counts.split(", ").map(|kv| kv.rsplit_once(' ').unwrap().1.parse().unwrap()).collect();
        sum.iter_mut().zip(numbers).for_each(|(s, n)| *s += n);
    }
    (sum, n)
}

#[tokio::test]
async fn the_tracker_says_what_happens() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test's runtime runs every task of the tracker on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = Config { summary_interval: Duration::from_millis(200), ..Config::default() };
    let tracker = Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.unwrap();

    let mut a = Client::connect(tracker.addr()).await;
    let me = a.welcome.observed;
    capture
        .until("the session opened", |l| {
            l.iter().any(|l| l.contains(&format!("session opened from {me} (to 127.0.0.1)")))
        })
        .await;
    // Three Registers: accepted; refused whole; two of three files refused.
    let register = |listen: SocketAddr, files| TrackerRequest::Register(Register { listen, files });
    let own = SocketAddr::from(([127, 0, 0, 1], 7000));
    a.call(register(own, vec![file("f", 1)])).await;
    let elsewhere = SocketAddr::from(([10, 9, 9, 9], 7000));
    let refused = a.call(register(elsewhere, vec![])).await;
    let foreign = RequestError::ForeignEndpoint { announced: elsewhere, observed: me.ip() };
    assert_eq!(refused, TrackerResponse::Error(foreign.clone()));
    let mut bad_name = file("x", 3);
    bad_name.meta.name = "../x".into();
    let TrackerResponse::Registered { results } =
        a.call(register(own, vec![file("f", 2), file("g", 1), bad_name])).await
    else {
        panic!("no results");
    };
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 2);
    // Three File Locations, two Chunk Registers, and two others.
    for _ in 0..3 {
        a.call(TrackerRequest::FileLocations { name: "f".into() }).await;
    }
    a.call(TrackerRequest::ChunkRegister { name: "g".into(), chunk: 0 }).await;
    a.call(TrackerRequest::ChunkRegisterBatch { name: "g".into(), chunks: vec![0, 1] }).await;
    a.call(TrackerRequest::KeepAlive).await;
    a.call(TrackerRequest::FileList { after: None }).await;
    drop(a);

    let lines = capture
        .until("the session closed", |l| l.iter().any(|l| l.contains(&format!("session from {me} closed after"))))
        .await;
    let has = |text: &str| lines.iter().any(|l| l.contains(text));
    assert!(has(&format!("Register from {me} refused: {foreign}")), "{lines:#?}");
    let conflict = "name already registered with different content";
    assert!(has(&format!("Register from {me}: refused 2 of 3 files; the first, \"f\": {conflict}")), "{lines:#?}");
    assert!(has(", holding 2 files: the peer closed the connection"), "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains("WARN")), "{lines:#?}");

    // Every request counted once, by kind, over however many summaries it took; then a summary of
    // a registry left empty.
    let lines = capture.until("the counts", |l| summed(l).0 == [3, 3, 2, 2]).await;
    let seen = summed(&lines).1;
    let lines = capture.until("another summary", |l| summed(l).1 > seen).await;
    let last = lines.iter().rfind(|l| l.contains("requests/s")).unwrap();
    assert!(last.contains("INFO") && last.contains("0 sessions, 0 files, 0 holdings; 0.00 requests/s"), "{last}");
    assert_eq!(summed(&lines).0, [3, 3, 2, 2], "no request counted twice");

    // The summary stops with the tracker, which waits for it.
    tokio::time::timeout(Duration::from_secs(5), tracker.shutdown()).await.unwrap().unwrap();
    let stopped = capture.lines();
    let after = stopped.iter().position(|l| l.contains("tracker stopped")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(capture.lines().len(), after + 1, "nothing logged after the tracker stopped");
    println!("{}", capture.lines().join("\n"));
}
