//! The coordinator's decisions, driven by hand: inputs in, actions out, time chosen by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::limits::MIN_CHUNK_SIZE;
use proto::tracker::{Locations, SourceInfo};
use proto::{Bitmap, FileMeta, Have};
use tokio::time::Instant;

use super::*;
use crate::error::{Error, SourceError};

const CHUNK: u64 = MIN_CHUNK_SIZE as u64;

fn meta(chunks: u32) -> FileMeta {
    let data: Vec<u8> = (0..chunks as usize * CHUNK as usize).map(|i| (i / CHUNK as usize) as u8).collect();
    FileMeta::from_bytes("f", MIN_CHUNK_SIZE, &data)
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 7000 + i))
}

fn have(n: u32, ones: &[u32]) -> Have {
    Have::Partial(Bitmap::with_ones(n, ones.iter().copied()))
}

struct Fixture {
    meta: FileMeta,
    c: Coordinator,
    now: Instant,
    /// The sources' rates, as the process measured them.
    book: Arc<SourceBook>,
}

impl Fixture {
    fn new(chunks: u32, seed: u64) -> Self {
        Self::with(chunks, seed, DownloadConfig::default(), None)
    }

    fn with(chunks: u32, seed: u64, config: DownloadConfig, me: Option<SocketAddr>) -> Self {
        let meta = meta(chunks);
        let book = SourceBook::new(2);
        let c = Coordinator::new(
            &meta,
            &Bitmap::new(chunks),
            0,
            config,
            me,
            seed,
            book.clone(),
            Arc::new(crate::metrics::Metrics::new(Arc::default())),
        );
        Fixture { meta, c, now: Instant::now(), book }
    }

    fn n(&self) -> u32 {
        self.meta.num_chunks()
    }

    fn feed(&mut self, input: Input) -> Vec<Action> {
        self.c.handle(input, self.now).unwrap();
        self.c.take_actions()
    }

    fn locations(&mut self, sources: Vec<(SocketAddr, Have)>, availability: Vec<u32>) -> Result<Vec<Action>, Error> {
        let total = sources.len() as u32;
        let loc = Locations {
            root: self.meta.root,
            num_chunks: self.n(),
            total_sources: total,
            sources: sources.into_iter().map(|(addr, have)| SourceInfo { addr, have }).collect(),
            availability,
        };
        self.c.handle(Input::Locations(Ok(loc)), self.now)?;
        Ok(self.c.take_actions())
    }

    /// Lists the sources and completes their handshakes; returns the requests sent on connect.
    fn connect(&mut self, sources: &[(u16, Have)], want: usize) -> Vec<Action> {
        let avail = vec![1; self.n() as usize];
        let listed = sources.iter().map(|(i, h)| (addr(*i), h.clone())).collect();
        let actions = self.locations(listed, avail).unwrap();
        let mut out = Vec::new();
        for a in actions {
            let Action::Connect { source, addr: at } = a else { panic!("{a:?}") };
            let have = sources.iter().find(|(i, _)| addr(*i) == at).map(|(_, h)| h.clone()).unwrap();
            out.extend(self.feed(Input::Connected { source, have, want }));
        }
        out
    }

    fn id_of(&self, i: u16) -> SourceId {
        self.c.by_addr[&addr(i)]
    }
}

fn requests(actions: &[Action]) -> Vec<(SourceId, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { source, chunk, .. } => Some((*source, *chunk)),
            _ => None,
        })
        .collect()
}

#[test]
fn rarest_first_with_random_ties() {
    let mut f = Fixture::new(4, 1);
    let connect = f.locations(vec![(addr(1), Have::Complete)], vec![3, 1, 2, 5]).unwrap();
    let [Action::Connect { source, .. }] = connect[..] else { panic!("{connect:?}") };
    let asked = f.feed(Input::Connected { source, have: Have::Complete, want: 2 });
    assert_eq!(requests(&asked), vec![(source, 1), (source, 2)]);
    assert!(asked.iter().all(|a| matches!(a, Action::Request { fresh: true, .. })), "a seed may substitute");

    // Equal availability: the first chunk asked for varies with the seed.
    let mut firsts = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let mut f = Fixture::new(8, seed);
        let asked = f.connect(&[(1, Have::Complete)], 1);
        firsts.insert(requests(&asked)[0].1);
    }
    assert!(firsts.len() >= 5, "{firsts:?}");
}

#[test]
fn requests_are_topped_up_to_the_depth_the_source_wants() {
    let mut f = Fixture::new(10, 2);
    let asked = f.connect(&[(1, Have::Complete)], 3);
    assert_eq!(requests(&asked).len(), 3);
    let (id, first) = requests(&asked)[0];
    // One answer, and the source now wants 5: three more go out.
    let more = f.feed(Input::Received { source: id, asked: first, chunk: first, want: 5 });
    assert_eq!(requests(&more).len(), 3);
    // Stored: recorded, announced; nothing more to send (5 outstanding).
    let stored = f.feed(Input::Stored { source: id, chunk: first, bytes: CHUNK });
    assert_eq!(stored, vec![Action::Stored { chunk: first }]);
    assert_eq!(f.c.progress().chunks_done, 1);
    assert_eq!(f.c.progress().bytes_done, CHUNK);
}

#[test]
fn endgame_duplicates_the_last_chunk_and_the_first_copy_wins() {
    let mut f = Fixture::new(4, 3);
    let asked = f.connect(&[(1, Have::Complete)], 4);
    assert_eq!(requests(&asked).len(), 4, "source 1 holds every chunk in flight");
    // A second source: nothing is NEEDED, so it duplicates one in-flight chunk.
    let dup = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 2);
    let s2 = f.id_of(2);
    let dup = requests(&dup);
    assert_eq!(dup.len(), 2, "two of the chunks, each with at most two owners: {dup:?}");
    let (_, c) = dup[0];
    f.feed(Input::Received { source: s2, asked: c, chunk: c, want: 2 });
    assert_eq!(f.feed(Input::Stored { source: s2, chunk: c, bytes: CHUNK }), vec![Action::Stored { chunk: c }]);
    let s1 = f.id_of(1);
    f.feed(Input::Received { source: s1, asked: c, chunk: c, want: 2 });
    assert!(f.feed(Input::Stored { source: s1, chunk: c, bytes: CHUNK }).is_empty(), "a duplicate");
    // The node's metrics count the same: one chunk verified, one duplicate copy.
    assert_eq!((f.c.metrics.chunks_verified.get(), f.c.metrics.duplicate_bytes.get()), (1, CHUNK));
    let (reports, fetched) = f.c.into_reports();
    assert_eq!(fetched, 1);
    let r1 = reports.iter().find(|r| r.addr == addr(1)).unwrap();
    assert_eq!((r1.bytes, r1.duplicate_bytes), (0, CHUNK), "a source of duplicates only is reported");
}

#[test]
fn a_stalled_source_loses_its_chunks_to_others_and_backs_off() {
    let mut f = Fixture::new(12, 4);
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 3);
    let (s1, s2) = (f.id_of(1), f.id_of(2));
    let mine: Vec<u32> = requests(&asked).iter().filter(|(s, _)| *s == s1).map(|r| r.1).collect();
    let theirs: Vec<u32> = requests(&asked).iter().filter(|(s, _)| *s == s2).map(|r| r.1).collect();
    assert_eq!((mine.len(), theirs.len()), (3, 3));
    // Source 1 stalls: its chunks are needed again, and source 2 takes them with its next answer.
    f.feed(Input::Ended { source: s1, result: Err(SourceError::Stalled) });
    let moved = f.feed(Input::Received { source: s2, asked: theirs[0], chunk: theirs[0], want: 12 });
    let to2: Vec<u32> = requests(&moved).iter().filter(|(s, _)| *s == s2).map(|r| r.1).collect();
    for c in &mine {
        assert!(to2.contains(c), "chunk {c} of the stalled source reassigned: {moved:?}");
    }
    // Listed again at once: not reconnected during its backoff; reconnected after.
    let again = f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2; 12]).unwrap();
    assert!(!again.iter().any(|a| matches!(a, Action::Connect { .. })), "{again:?}");
    f.now += Duration::from_secs(1);
    let later = f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2; 12]).unwrap();
    assert_eq!(later, vec![Action::Connect { source: s1, addr: addr(1) }]);
}

#[test]
fn a_source_is_dropped_after_its_strikes_and_never_connected_again() {
    let config = DownloadConfig { bad_data_strikes: 2, max_chunk_failures: 10, ..DownloadConfig::default() };
    let mut f = Fixture::with(8, 5, config, None);
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 2);
    let s1 = f.id_of(1);
    let of1: Vec<u32> = requests(&asked).iter().filter(|(s, _)| *s == s1).map(|r| r.1).collect();
    f.feed(Input::Received { source: s1, asked: of1[0], chunk: of1[0], want: 2 });
    let first = f.feed(Input::Bad { source: s1, chunk: of1[0], bytes: CHUNK });
    assert!(!first.contains(&Action::Drop { source: s1 }), "one strike: kept");
    f.feed(Input::Received { source: s1, asked: of1[1], chunk: of1[1], want: 2 });
    let second = f.feed(Input::Bad { source: s1, chunk: of1[1], bytes: CHUNK });
    assert!(second.contains(&Action::Drop { source: s1 }), "{second:?}");
    // A copy verified after the drop is charged as discarded, not as a third strike.
    f.feed(Input::Bad { source: s1, chunk: of1[0], bytes: CHUNK });
    // Its end (the task it was told to end) changes nothing; listed again, it is not connected.
    f.feed(Input::Ended { source: s1, result: Ok(()) });
    f.now += Duration::from_secs(60);
    let again = f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2; 8]).unwrap();
    assert!(!again.iter().any(|a| matches!(a, Action::Connect { .. })), "{again:?}");
    // The node's metrics: two strikes, two failed copies, the discarded one wasted too, one drop.
    let m = f.c.metrics.clone();
    assert_eq!((m.source_strikes.get(), m.chunks_failed.get(), m.wasted_bytes.get()), (2, 2, 3 * CHUNK));
    assert!(m.encode().contains("p2p_peer_sources_dropped_total{reason=\"bad_data\"} 1"));
    let (reports, _) = f.c.into_reports();
    let r1 = reports.iter().find(|r| r.addr == addr(1)).unwrap();
    assert_eq!((r1.bad_chunks, r1.wasted_bytes), (2, 3 * CHUNK));
    assert!(r1.dropped.as_deref().unwrap().contains("bad data 2 times"), "{r1:?}");
}

#[test]
fn a_chunk_that_fails_everywhere_or_only_dropped_sources_hold_ends_the_download() {
    let config = DownloadConfig { bad_data_strikes: 1, max_chunk_failures: 2, ..DownloadConfig::default() };
    let mut f = Fixture::with(1, 6, config.clone(), None);
    let asked = requests(&f.connect(&[(1, Have::Complete), (2, Have::Complete)], 1));
    assert_eq!(asked.len(), 1, "the only chunk, from one source (no endgame for tiny files): {asked:?}");
    f.c.handle(Input::Bad { source: asked[0].0, chunk: 0, bytes: CHUNK }, f.now).unwrap();
    let again = requests(&f.c.take_actions());
    assert_eq!(again.len(), 1, "asked again from the other: {again:?}");
    assert_ne!(again[0].0, asked[0].0);
    let err = f.c.handle(Input::Bad { source: again[0].0, chunk: 0, bytes: CHUNK }, f.now).unwrap_err();
    assert!(matches!(err, Error::ChunkFailed { chunk: 0, attempts: 2 }), "{err:?}");

    // Only dropped sources hold the missing chunk: the download cannot finish.
    let config = DownloadConfig { max_chunk_failures: 10, ..config };
    let mut f = Fixture::with(2, 7, config, None);
    let asked = f.connect(&[(1, have(2, &[1])), (2, have(2, &[0]))], 1);
    let s1 = f.id_of(1);
    assert!(requests(&asked).contains(&(s1, 1)));
    f.feed(Input::Bad { source: s1, chunk: 1, bytes: CHUNK });
    let err = f.locations(vec![(addr(1), have(2, &[1])), (addr(2), have(2, &[0]))], vec![1, 1]).unwrap_err();
    assert!(matches!(err, Error::NoHonestSource { chunk: 1, dropped: 1 }), "{err:?}");
}

#[test]
fn a_source_dying_mid_chunk_hands_it_to_another_and_its_late_copy_still_counts() {
    let mut f = Fixture::new(1, 8);
    let asked = f.connect(&[(1, Have::Complete)], 1);
    let s1 = f.id_of(1);
    assert_eq!(requests(&asked), vec![(s1, 0)]);
    // The data arrived and went to the writer; then the connection died.
    f.feed(Input::Received { source: s1, asked: 0, chunk: 0, want: 1 });
    f.feed(Input::Ended { source: s1, result: Err(SourceError::TaskFailed) });
    // Another source takes the chunk over at once.
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 1);
    let s2 = f.id_of(2);
    assert_eq!(requests(&asked), vec![(s2, 0)]);
    // The dead source's copy, verified, wins; the other's is a duplicate.
    assert_eq!(f.feed(Input::Stored { source: s1, chunk: 0, bytes: CHUNK }), vec![Action::Stored { chunk: 0 }]);
    assert!(f.c.is_done());
    assert!(f.feed(Input::Stored { source: s2, chunk: 0, bytes: CHUNK }).is_empty());
}

/// Review defect 4: a source with nothing to fetch is woken by the news itself, not by polling.
#[test]
fn news_of_new_holders_brings_work_at_once() {
    let mut f = Fixture::new(4, 9);
    let asked = f.connect(&[(1, have(4, &[]))], 4);
    assert!(requests(&asked).is_empty());
    let s1 = f.id_of(1);
    assert_eq!(requests(&f.feed(Input::Announced { source: s1, chunks: vec![2] })), vec![(s1, 2)]);
    // A tracker poll that lists it with more chunks does the same, and a new holder is connected.
    let polled = f.locations(vec![(addr(1), have(4, &[2, 3])), (addr(2), have(4, &[0]))], vec![1; 4]).unwrap();
    assert!(requests(&polled).contains(&(s1, 3)), "{polled:?}");
    assert!(polled.contains(&Action::Connect { source: f.id_of(2), addr: addr(2) }), "{polled:?}");
}

/// Review defect 6: the idle timeout of a source that had nothing to answer is not a failure.
#[test]
fn an_idle_close_is_not_a_failure_but_a_close_with_requests_outstanding_is() {
    let mut f = Fixture::new(2, 10);
    f.connect(&[(1, have(2, &[])), (2, Have::Complete)], 1);
    let (s1, s2) = (f.id_of(1), f.id_of(2));
    f.feed(Input::Ended { source: s1, result: Err(SourceError::Closed) });
    f.feed(Input::Ended { source: s2, result: Err(SourceError::Closed) });
    let again = f.locations(vec![(addr(1), have(2, &[])), (addr(2), Have::Complete)], vec![1, 1]).unwrap();
    assert_eq!(again, vec![Action::Connect { source: s1, addr: addr(1) }], "only the idle one, without backoff");
}

/// Review defect 7: this peer's own endpoint is never a source of its download.
#[test]
fn the_peer_itself_is_never_a_source() {
    let mut f = Fixture::with(2, 11, DownloadConfig::default(), Some(addr(1)));
    let actions = f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2, 2]).unwrap();
    assert_eq!(actions, vec![Action::Connect { source: 1, addr: addr(2) }]);
}

#[test]
fn at_most_max_sources_are_linked() {
    let config = DownloadConfig { max_sources: 2, ..DownloadConfig::default() };
    let mut f = Fixture::with(2, 12, config, None);
    let listed = (1..=5).map(|i| (addr(i), Have::Complete)).collect();
    let actions = f.locations(listed, vec![5, 5]).unwrap();
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::Connect { .. })).count(), 2);
    assert_eq!(f.c.progress().active_sources, 2);
}

#[test]
fn the_deadline_reports_what_is_missing() {
    let mut f = Fixture::new(3, 13);
    let asked = f.connect(&[(1, Have::Complete)], 1);
    let (s, c) = requests(&asked)[0];
    f.feed(Input::Received { source: s, asked: c, chunk: c, want: 1 });
    f.feed(Input::Stored { source: s, chunk: c, bytes: CHUNK });
    let first = (0..3).find(|&x| x != c).unwrap();
    assert!(matches!(f.c.deadline_error(), Error::Deadline { missing: 2, first: fx } if fx == first));
}

#[test]
fn content_replaced_on_the_tracker_ends_the_download() {
    let mut f = Fixture::new(2, 14);
    let other = meta(3);
    let loc =
        Locations { root: other.root, num_chunks: 3, total_sources: 0, sources: vec![], availability: vec![0; 3] };
    let err = f.c.handle(Input::Locations(Ok(loc)), f.now).unwrap_err();
    assert!(matches!(err, Error::ContentChanged(ref n) if n == "f"), "{err:?}");
}

#[test]
fn a_whole_file_mismatch_fetches_the_bad_chunks_again() {
    let mut f = Fixture::new(2, 15);
    let asked = f.connect(&[(1, Have::Complete)], 2);
    let s = f.id_of(1);
    for (_, c) in requests(&asked) {
        f.feed(Input::Received { source: s, asked: c, chunk: c, want: 2 });
        f.feed(Input::Stored { source: s, chunk: c, bytes: CHUNK });
    }
    assert!(f.c.is_done());
    f.c.lost(&Bitmap::with_ones(2, [0]), CHUNK);
    assert_eq!(requests(&f.c.take_actions()), vec![(s, 1)]);
    assert_eq!((f.c.progress().chunks_done, f.c.progress().bytes_done), (1, CHUNK));
}

/// A source that failed is connected again when its backoff ends, on a schedule of its own (not
/// at the next tracker poll), and a delivered chunk starts the backoff over.
#[test]
fn a_failed_source_is_retried_when_its_backoff_ends_and_success_resets_it() {
    let mut f = Fixture::new(4, 16);
    let asked = f.connect(&[(1, Have::Complete)], 1);
    let s1 = f.id_of(1);
    assert_eq!(requests(&asked).len(), 1);
    f.feed(Input::Ended { source: s1, result: Err(SourceError::TaskFailed) });
    let first = f.c.next_retry().unwrap();
    assert_eq!(first - f.now, Duration::from_millis(500));
    assert!(f.feed(Input::Tick).is_empty(), "not before its time");
    f.now = first;
    assert_eq!(f.feed(Input::Tick), vec![Action::Connect { source: s1, addr: addr(1) }]);
    assert_eq!(f.c.next_retry(), None);
    // Fails again: a longer wait. Then it delivers a chunk, and the next failure waits 500 ms again.
    f.feed(Input::Ended { source: s1, result: Err(SourceError::TaskFailed) });
    assert_eq!(f.c.next_retry().unwrap() - f.now, Duration::from_secs(1));
    f.now += Duration::from_secs(1);
    f.feed(Input::Tick);
    let asked = f.feed(Input::Connected { source: s1, have: Have::Complete, want: 1 });
    let (_, c2) = requests(&asked)[0];
    f.feed(Input::Received { source: s1, asked: c2, chunk: c2, want: 1 });
    f.feed(Input::Stored { source: s1, chunk: c2, bytes: CHUNK });
    f.feed(Input::Ended { source: s1, result: Err(SourceError::TaskFailed) });
    assert_eq!(f.c.next_retry().unwrap() - f.now, Duration::from_millis(500));
}

/// A source the tracker no longer lists has probably left: it is not retried on its own
/// schedule (only if it is listed again).
#[test]
fn a_source_no_longer_listed_is_not_retried() {
    let mut f = Fixture::new(4, 17);
    f.connect(&[(1, Have::Complete), (2, Have::Complete)], 1);
    let s1 = f.id_of(1);
    f.feed(Input::Ended { source: s1, result: Err(SourceError::TaskFailed) });
    assert!(f.c.next_retry().is_some());
    f.locations(vec![(addr(2), Have::Complete)], vec![1; 4]).unwrap();
    assert_eq!(f.c.next_retry(), None, "gone from the tracker's list");
    f.now += Duration::from_secs(60);
    assert!(f.feed(Input::Tick).is_empty());
    let back = f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2; 4]).unwrap();
    assert_eq!(back, vec![Action::Connect { source: s1, addr: addr(1) }]);
}

/// At the source cap, a connected source that has had nothing to give for a while makes room for
/// a new one (without counting as a failure); one that only just ran dry does not.
#[test]
fn at_the_cap_an_idle_source_makes_room_for_a_new_one() {
    let config = DownloadConfig { max_sources: 1, ..DownloadConfig::default() };
    let mut f = Fixture::with(4, 18, config, None);
    let asked = f.connect(&[(1, have(4, &[]))], 2);
    assert!(requests(&asked).is_empty());
    let s1 = f.id_of(1);
    let listed = || vec![(addr(1), have(4, &[])), (addr(2), Have::Complete)];
    assert!(f.locations(listed(), vec![1; 4]).unwrap().is_empty(), "idle for less than the eviction time");
    f.now += IDLE_EVICTION;
    let made_room = f.locations(listed(), vec![1; 4]).unwrap();
    assert_eq!(made_room, vec![Action::Drop { source: s1 }, Action::Connect { source: f.id_of(2), addr: addr(2) }]);
    assert_eq!(f.c.progress().active_sources, 1);
    f.feed(Input::Ended { source: s1, result: Ok(()) });
    assert_eq!(f.c.progress().active_sources, 1, "its end changes nothing");
}

fn chunks_of(actions: &[Action], source: SourceId) -> Vec<u32> {
    let mut c: Vec<u32> = requests(actions).into_iter().filter(|&(s, _)| s == source).map(|(_, c)| c).collect();
    c.sort_unstable();
    c
}

/// A seed known to deliver at less than half another source's rate leaves the chunks that source
/// holds to it, while it connects and once connected, and is asked for the rest; a source of
/// unknown rate counts as fast.
#[test]
fn faster_sources_choose_first() {
    for fast_rate in [Some(1_000_000.0), None] {
        let mut f = Fixture::new(4, 17);
        f.book.record(addr(1), 100_000.0);
        if let Some(r) = fast_rate {
            f.book.record(addr(2), r);
        }
        let partial = have(4, &[0, 1]);
        let listed = vec![(addr(1), Have::Complete), (addr(2), partial.clone())];
        assert_eq!(f.locations(listed, vec![2, 2, 1, 1]).unwrap().len(), 2, "both are connected");
        let (seed, fast) = (f.id_of(1), f.id_of(2));
        let asked = f.feed(Input::Connected { source: seed, have: Have::Complete, want: 4 });
        assert_eq!(chunks_of(&asked, seed), vec![2, 3], "the seed leaves 0 and 1 to the faster peer");
        let asked = f.feed(Input::Connected { source: fast, have: partial, want: 4 });
        assert_eq!(chunks_of(&asked, fast), vec![0, 1]);
    }
}

/// A slow seed waits for a faster complete source that is connecting, for at most
/// CONNECT_GRACE; and while a faster complete source is connected it is not asked at all, until
/// that source ends.
#[test]
fn a_slow_seed_waits_for_a_faster_one_within_limits() {
    let mut f = Fixture::new(4, 18);
    f.book.record(addr(1), 100_000.0);
    f.book.record(addr(2), 1_000_000.0);
    f.locations(vec![(addr(1), Have::Complete), (addr(2), Have::Complete)], vec![2; 4]).unwrap();
    let slow = f.id_of(1);
    assert!(requests(&f.feed(Input::Connected { source: slow, have: Have::Complete, want: 4 })).is_empty());
    assert_eq!(f.c.next_retry(), Some(f.now + CONNECT_GRACE), "woken when the grace ends");
    assert!(requests(&f.feed(Input::Tick)).is_empty(), "not before");
    f.now += CONNECT_GRACE;
    let asked = f.feed(Input::Tick);
    assert_eq!(chunks_of(&asked, slow), vec![0, 1, 2, 3], "the faster one took too long to connect");

    // Connected, the fast source is asked for what the slow one freed; the slow one for nothing
    // more while the fast one is there.
    let mut f = Fixture::new(8, 19);
    f.book.record(addr(1), 100_000.0);
    f.book.record(addr(2), 1_000_000.0);
    let asked = f.connect(&[(2, Have::Complete), (1, Have::Complete)], 4);
    let (slow, fast) = (f.id_of(1), f.id_of(2));
    assert_eq!((chunks_of(&asked, fast).len(), chunks_of(&asked, slow).len()), (4, 0));
    let freed = f.feed(Input::Ended { source: fast, result: Err(SourceError::Stalled) });
    assert_eq!(chunks_of(&freed, slow).len(), 4, "the slow seed takes over when the fast one ends");
}

/// A slower source is held back only while the faster ones can take all the work left: with
/// plenty needed, a peer measured slower than a complete seed is asked too (a downloader kept on
/// the seed alone was the slowest of a swarm of 32); near the end it leaves the rest to the seed.
#[test]
fn a_slower_source_takes_its_share_while_there_is_plenty_of_work() {
    let mut f = Fixture::new(200, 20);
    // The seed five times faster than the peer: with a window of 4, the seed gets through
    // 2 x 4 x 5 = 40 chunks while the peer delivers its window.
    f.book.record(addr(1), 500_000.0);
    f.book.record(addr(2), 100_000.0);
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 4);
    let (seed, peer) = (f.id_of(1), f.id_of(2));
    assert_eq!((chunks_of(&asked, seed).len(), chunks_of(&asked, peer).len()), (4, 4), "both are asked");

    let mut f = Fixture::new(30, 21);
    f.book.record(addr(1), 500_000.0);
    f.book.record(addr(2), 100_000.0);
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 4);
    let (seed, peer) = (f.id_of(1), f.id_of(2));
    assert_eq!((chunks_of(&asked, seed).len(), chunks_of(&asked, peer).len()), (4, 0), "30 needed: the seed's");
}

/// A source that just failed (its rate recorded as 0) is held back by any faster one, however
/// much work is left.
#[test]
fn a_source_that_just_failed_leaves_the_work_to_faster_ones() {
    let mut f = Fixture::new(200, 22);
    f.book.record(addr(1), 500_000.0);
    f.book.record(addr(2), 0.0);
    let asked = f.connect(&[(1, Have::Complete), (2, Have::Complete)], 4);
    let (seed, peer) = (f.id_of(1), f.id_of(2));
    assert_eq!((chunks_of(&asked, seed).len(), chunks_of(&asked, peer).len()), (4, 0));
}
