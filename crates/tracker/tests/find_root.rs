//! Find Root over real sockets: the files whose root starts with a prefix, from a session that
//! never registered; invalid prefixes refused with a typed error, the session carrying on; files
//! gone from the answers once their last holder leaves or its session ends; the cap and `more`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{file, Client};
use proto::limits::{MAX_ROOT_MATCHES, MIN_CHUNK_SIZE};
use proto::tracker::{FileSummary, Register, RegisterFile, RequestError, TrackerRequest, TrackerResponse};
use proto::{FileMeta, Hash, Have, PROTOCOL_VERSION};
use tracker::{Config, Tracker};

/// A one-chunk file: its only chunk hash is its root, so any root makes valid metadata.
fn rooted(name: &str, root: [u8; 32]) -> RegisterFile {
    let meta = FileMeta {
        name: name.into(),
        length: 1,
        chunk_size: MIN_CHUNK_SIZE,
        root: Hash(root),
        chunk_hashes: vec![Hash(root)],
    };
    RegisterFile { meta, have: Have::Complete }
}

/// A root of eight bytes `head`, then 24 bytes `tail`.
fn root(head: u8, tail: u8) -> [u8; 32] {
    let mut r = [tail; 32];
    r[..8].fill(head);
    r
}

async fn register(client: &mut Client, port: u16, files: Vec<RegisterFile>) {
    let n = files.len();
    let register = Register { listen: SocketAddr::from(([127, 0, 0, 1], port)), files };
    let reply = client.call(TrackerRequest::Register(register)).await;
    assert_eq!(reply, TrackerResponse::Registered { results: vec![Ok(()); n] });
}

/// Find Root's reply: the files and `more`.
async fn find(client: &mut Client, prefix: &str) -> (Vec<FileSummary>, bool) {
    match client.call(TrackerRequest::FindRoot { prefix: prefix.into() }).await {
        TrackerResponse::RootMatches { files, more } => (files, more),
        other => panic!("Find Root of {prefix:?} answered {other:?}"),
    }
}

/// The names Find Root lists, and `more`.
async fn names(client: &mut Client, prefix: &str) -> (Vec<String>, bool) {
    let (files, more) = find(client, prefix).await;
    (files.into_iter().map(|f| f.name).collect(), more)
}

fn listed(names: &[&str]) -> (Vec<String>, bool) {
    (names.iter().map(|n| n.to_string()).collect(), false)
}

async fn start() -> Tracker {
    Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Config::default()).await.unwrap()
}

#[tokio::test]
async fn prefixes_find_roots_names_and_nothing() {
    let tracker = start().await;
    let mut seed = Client::connect(tracker.addr()).await;
    // Two names of the same content (the same data, so the same root), two roots sharing their
    // first 16 hex digits, and one more.
    let files =
        vec![file("same/one", 1), file("same/two", 1), rooted("p/b", root(0x5e, 2)), rooted("p/a", root(0x5e, 1))];
    let same = files[0].meta.root;
    register(&mut seed, 7000, files).await;
    register(&mut seed, 7000, vec![rooted("other", root(0x77, 0))]).await;
    // A session that never registered may ask.
    let mut viewer = Client::connect(tracker.addr()).await;
    assert_eq!(viewer.welcome.version, PROTOCOL_VERSION);

    let exact = find(&mut viewer, &Hash(root(0x5e, 1)).to_string()).await;
    let summary = FileSummary {
        name: "p/a".into(),
        length: 1,
        root: Hash(root(0x5e, 1)),
        chunk_size: MIN_CHUNK_SIZE,
        sources: 1,
        complete_sources: 1,
    };
    assert_eq!(exact, (vec![summary], false), "the exact root, summarised as File List does");
    assert_eq!(names(&mut viewer, "5e5e5e5e5e5e5e5e").await, listed(&["p/a", "p/b"]), "16 digits, two roots");
    assert_eq!(names(&mut viewer, "5E5E5E5E5E5E5E5E02").await, listed(&["p/b"]), "upper case, 18 digits");
    assert_eq!(names(&mut viewer, &same.to_string()).await, listed(&["same/one", "same/two"]), "one root, two names");
    assert_eq!(names(&mut viewer, &same.to_string()[..16]).await, listed(&["same/one", "same/two"]));
    assert_eq!(names(&mut viewer, &same.to_string()[..16].to_uppercase()).await, listed(&["same/one", "same/two"]));
    assert_eq!(names(&mut viewer, "0123456789abcdef").await, listed(&[]), "no match");
    tracker.registry().check_invariants();
}

#[tokio::test]
async fn invalid_prefixes_are_typed_errors_and_the_session_goes_on() {
    let tracker = start().await;
    let mut seed = Client::connect(tracker.addr()).await;
    register(&mut seed, 7000, vec![rooted("f", root(0x33, 1))]).await;
    let mut viewer = Client::connect(tracker.addr()).await;
    let huge = "3".repeat(1 << 20);
    for (prefix, len) in
        [(&"3".repeat(15)[..], 15), (&"3".repeat(65), 65), ("333333333333333g", 16), ("", 0), (&huge, 1 << 20)]
    {
        let reply = viewer.call(TrackerRequest::FindRoot { prefix: prefix.into() }).await;
        assert_eq!(reply, TrackerResponse::Error(RequestError::InvalidRootPrefix { prefix_len: len }), "{len} bytes");
    }
    assert_eq!(viewer.call(TrackerRequest::KeepAlive).await, TrackerResponse::KeepAlive);
    assert_eq!(names(&mut viewer, "3333333333333333").await, listed(&["f"]));
}

/// A file leaves the answers when its last holder leaves (another holder keeps it), and when the
/// last holder's session ends.
#[tokio::test]
async fn files_go_with_their_last_holder() {
    let tracker = start().await;
    let (mut a, mut b) = (Client::connect(tracker.addr()).await, Client::connect(tracker.addr()).await);
    register(&mut a, 7000, vec![rooted("kept", root(0x66, 1)), rooted("gone", root(0x66, 2))]).await;
    register(&mut b, 7001, vec![rooted("kept", root(0x66, 1))]).await;
    let mut viewer = Client::connect(tracker.addr()).await;
    assert_eq!(names(&mut viewer, "6666666666666666").await, listed(&["kept", "gone"]));
    assert_eq!(a.call(TrackerRequest::Leave).await, TrackerResponse::Left);
    assert_eq!(names(&mut viewer, "6666666666666666").await, listed(&["kept"]));
    tracker.registry().check_invariants();
    // b's connection closes: its session ends once the tracker reads the end of the stream, which
    // no reply to the viewer waits for, so ask until it shows (each ask a round trip, no sleep).
    drop(b);
    let gone = async {
        while !find(&mut viewer, "6666666666666666").await.0.is_empty() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the session's files gone");
    tracker.registry().check_invariants();
}

/// At most `MAX_ROOT_MATCHES` files, the lowest (root, name) first; `more` only when some were
/// left out.
#[tokio::test]
async fn the_cap_and_more() {
    let tracker = start().await;
    let mut seed = Client::connect(tracker.addr()).await;
    let cap = MAX_ROOT_MATCHES as u8;
    // Registered in reverse: the order is the tracker's, not the registration's.
    register(&mut seed, 7000, (1..=cap).rev().map(|i| rooted(&format!("f{i:02}"), root(0x99, i))).collect()).await;
    let (files, more) = find(&mut seed, "9999999999999999").await;
    assert_eq!((files.len(), more), (MAX_ROOT_MATCHES, false), "exactly the cap: nothing left out");
    register(&mut seed, 7000, vec![rooted("f00", root(0x99, cap + 1))]).await;
    let want: Vec<String> = (1..=cap).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names(&mut seed, "9999999999999999").await, (want, true), "the highest root left out, and said so");
    // A longer prefix narrows it down.
    let prefix = Hash(root(0x99, cap + 1)).to_string();
    assert_eq!(find(&mut seed, &prefix[..18]).await.0.len(), 1);
}
