//! The scheduler's decisions and its invariant under random operations.

use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::download::pool::NONE;

impl Scheduler {
    fn check_invariant(&self) {
        let (mut needed, mut inflight, mut have) = (0, 0, 0);
        for (c, st) in self.state.iter().enumerate() {
            match st {
                ChunkState::Have => have += 1,
                ChunkState::Needed => {
                    needed += 1;
                    assert_eq!(self.needed.items[self.needed.pos[c]], c as u32);
                    assert!(self.needed.bits.get(c as u32) && !self.inflight.bits.get(c as u32));
                }
                ChunkState::InFlight(owners) => {
                    inflight += 1;
                    assert!(!owners.is_empty());
                    assert_eq!(self.needed.pos[c], NONE);
                    assert_eq!(self.inflight.items[self.inflight.pos[c]], c as u32);
                    assert!(self.inflight.bits.get(c as u32) && !self.needed.bits.get(c as u32));
                    for o in owners {
                        assert!(self.sources[o].inflight.contains(&(c as u32)), "owner {o} of {c}");
                    }
                }
            }
        }
        assert_eq!(needed, self.needed.len());
        assert_eq!(inflight, self.inflight.len());
        assert_eq!(have, self.have_count);
        for (id, s) in &self.sources {
            assert_eq!(s.held, s.have.count());
            for c in &s.inflight {
                assert!(matches!(&self.state[*c as usize], ChunkState::InFlight(o) if o.contains(id)));
            }
        }
    }
}

fn bitmap(n: u32, ones: &[u32]) -> Have {
    Have::Partial(Bitmap::with_ones(n, ones.iter().copied()))
}

#[test]
fn picks_rarest_first_and_only_what_the_source_has() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = Scheduler::new(4, &Bitmap::new(4));
    s.set_availability(vec![3, 1, 2, 5]);
    s.update_source(1, &Have::Complete);
    s.update_source(2, &bitmap(4, &[0, 3]));
    assert_eq!(s.pick(1, &mut rng), Some(1));
    assert_eq!(s.pick(1, &mut rng), Some(2));
    assert_eq!(s.pick(2, &mut rng), Some(0));
    assert_eq!(s.pick(2, &mut rng), Some(3));
    assert_eq!(s.pick(2, &mut rng), None, "nothing needed left it has; endgame only when none needed");
    s.check_invariant();
}

#[test]
fn ties_are_broken_at_random() {
    let mut counts = [0u32; 8];
    for seed in 0..400 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = Scheduler::new(8, &Bitmap::new(8));
        s.update_source(1, &Have::Complete);
        counts[s.pick(1, &mut rng).unwrap() as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 20), "{counts:?}");
}

#[test]
fn every_chunk_fetched_exactly_once_without_faults() {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 100;
    let mut s = Scheduler::new(n, &Bitmap::new(n));
    for id in 0..5 {
        s.update_source(id, &Have::Complete);
    }
    let mut got = vec![0; n as usize];
    while s.needed_count() > 0 {
        for id in 0..5 {
            if let Some(c) = s.pick(id, &mut rng) {
                assert_eq!(s.complete(c, id), Completion::New);
                got[c as usize] += 1;
            }
            s.check_invariant();
        }
    }
    assert!(s.is_done());
    assert!(got.iter().all(|&g| g == 1));
}

#[test]
fn failed_source_releases_its_chunks() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut s = Scheduler::new(6, &Bitmap::new(6));
    s.update_source(1, &Have::Complete);
    s.update_source(2, &Have::Complete);
    let a = s.pick(1, &mut rng).unwrap();
    let b = s.pick(1, &mut rng).unwrap();
    s.remove_source(1);
    s.check_invariant();
    let mut again = Vec::new();
    while let Some(c) = s.pick(2, &mut rng) {
        again.push(c);
    }
    assert!(again.contains(&a) && again.contains(&b));
    assert_eq!(again.len(), 6);
    s.check_invariant();
}

#[test]
fn hash_failure_requeues_and_counts_failures_per_chunk() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut s = Scheduler::new(2, &Bitmap::new(2));
    s.update_source(1, &Have::Complete);
    s.update_source(2, &Have::Complete);
    let c = s.pick(1, &mut rng).unwrap();
    assert_eq!(s.failed(c, 1), 1);
    s.check_invariant();
    // Needed again, from anyone; a second failure of the same chunk counts against the chunk.
    let mut again = None;
    while let Some(x) = s.pick(2, &mut rng) {
        if x == c {
            again = Some(x);
        }
    }
    assert_eq!(s.failed(again.unwrap(), 2), 2);
    assert!(!s.has(c));
    s.check_invariant();
}

#[test]
fn dont_have_updates_the_source() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut s = Scheduler::new(1, &Bitmap::new(1));
    s.update_source(1, &Have::Complete);
    let c = s.pick(1, &mut rng).unwrap();
    s.release(c, 1, true);
    assert_eq!(s.pick(1, &mut rng), None);
    assert_eq!(s.unavailable(), 1);
    s.check_invariant();
}

#[test]
fn endgame_duplicates_the_last_chunks_and_first_copy_wins() {
    let mut rng = StdRng::seed_from_u64(5);
    let n = ENDGAME_MIN_CHUNKS as u32;
    let mut s = Scheduler::new(n, &Bitmap::new(n));
    for id in 1..=3 {
        s.update_source(id, &Have::Complete);
    }
    let first: Vec<u32> = (0..n).map(|_| s.pick(1, &mut rng).unwrap()).collect();
    // Nothing needed left: sources 2 and 3 duplicate chunks in flight, different ones first.
    let d2 = s.pick(2, &mut rng).unwrap();
    let d3 = s.pick(3, &mut rng).unwrap();
    assert_ne!(d2, d3);
    assert!(first.contains(&d2) && first.contains(&d3));
    s.check_invariant();
    assert_eq!(s.complete(d2, 2), Completion::New);
    assert_eq!(s.complete(d2, 1), Completion::Duplicate);
    s.check_invariant();
    for c in first.iter().filter(|&&c| c != d2) {
        s.complete(*c, 1);
    }
    assert!(s.is_done());
    s.check_invariant();
}

#[test]
fn files_of_few_chunks_have_no_endgame() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = ENDGAME_MIN_CHUNKS as u32 - 1;
    let mut s = Scheduler::new(n, &Bitmap::new(n));
    s.update_source(1, &Have::Complete);
    s.update_source(2, &Have::Complete);
    for _ in 0..n {
        assert!(s.pick(1, &mut rng).is_some());
    }
    assert_eq!(s.pick(2, &mut rng), None, "a small file is not fetched twice");
}

#[test]
fn news_of_a_source_only_adds_chunks_and_dont_have_sticks() {
    let mut rng = StdRng::seed_from_u64(10);
    let mut s = Scheduler::new(3, &Bitmap::new(3));
    s.update_source(1, &bitmap(3, &[0, 1]));
    // A stale view without chunk 1 does not take it away.
    s.update_source(1, &bitmap(3, &[0]));
    assert!(s.source_has(1, 1));
    // "Don't have" does, and a stale view cannot bring it back; the source's own news can.
    s.set_availability(vec![5, 1, 5]);
    let c = s.pick(1, &mut rng).unwrap();
    assert_eq!(c, 1);
    s.release(c, 1, true);
    s.update_source(1, &Have::Complete);
    assert!(!s.source_has(1, 1) && s.source_has(1, 2));
    assert!(s.gained(1, 1), "needed, so worth knowing");
    assert!(s.source_has(1, 1));
    s.check_invariant();
}

#[test]
fn substitution_moves_ownership_to_the_chunk_sent() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut s = Scheduler::new(4, &Bitmap::new(4));
    s.update_source(1, &Have::Complete);
    s.update_source(2, &Have::Complete);
    assert!(s.source_is_complete(1));
    let asked = s.pick(1, &mut rng).unwrap();
    let other = (asked + 1) % 4;
    // Needed chunk sent instead: the asked one is needed again.
    s.substitute(asked, other, 1);
    s.check_invariant();
    assert_eq!(s.inflight_of(1), 1);
    assert_eq!(s.complete(other, 1), Completion::New);
    // A chunk in flight from another source: shared, first copy wins.
    let a2 = s.pick(2, &mut rng).unwrap();
    let a1 = s.pick(1, &mut rng).unwrap();
    s.substitute(a1, a2, 1);
    s.check_invariant();
    assert_eq!(s.complete(a2, 1), Completion::New);
    assert_eq!(s.complete(a2, 2), Completion::Duplicate);
    // A chunk already stored: nothing to own, the copy is a duplicate.
    let a1 = s.pick(1, &mut rng).unwrap();
    s.substitute(a1, other, 1);
    s.check_invariant();
    assert_eq!(s.complete(other, 1), Completion::Duplicate);
    assert!(!s.has(a1));
}

#[test]
fn lost_chunks_are_needed_again() {
    let mut have = Bitmap::new(3);
    have.set(0);
    have.set(2);
    let mut s = Scheduler::new(3, &have);
    assert_eq!(s.first_missing(), Some(1));
    s.lost(2);
    s.lost(1);
    assert_eq!(s.have_count(), 1);
    s.update_source(1, &Have::Complete);
    let mut rng = StdRng::seed_from_u64(11);
    let mut picked = vec![s.pick(1, &mut rng).unwrap(), s.pick(1, &mut rng).unwrap()];
    picked.sort();
    assert_eq!(picked, vec![1, 2]);
    s.check_invariant();
}

#[test]
fn resumes_with_chunks_already_held() {
    let mut have = Bitmap::new(5);
    have.set(0);
    have.set(4);
    let mut s = Scheduler::new(5, &have);
    assert_eq!(s.have_count(), 2);
    s.update_source(1, &Have::Complete);
    let mut rng = StdRng::seed_from_u64(6);
    let mut picked = Vec::new();
    while let Some(c) = s.pick(1, &mut rng) {
        picked.push(c);
    }
    picked.sort();
    assert_eq!(picked, vec![1, 2, 3]);
}

#[test]
fn large_files_use_a_window_but_still_find_sparse_chunks() {
    let n = 3 * SCAN_WINDOW as u32;
    let mut s = Scheduler::new(n, &Bitmap::new(n));
    s.update_source(1, &bitmap(n, &[n - 1]));
    let mut rng = StdRng::seed_from_u64(8);
    assert_eq!(s.pick(1, &mut rng), Some(n - 1));
    s.check_invariant();
}

/// Random operation sequences keep the invariant.
#[test]
fn random_operations_keep_the_invariant() {
    let mut rng = StdRng::seed_from_u64(9);
    for round in 0..50 {
        let n = rng.random_range(1..40);
        let mut s = Scheduler::new(n, &Bitmap::new(n));
        for _ in 0..300 {
            let id = rng.random_range(0..4u64);
            match rng.random_range(0..7) {
                0 => {
                    let ones: Vec<u32> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
                    s.update_source(id, &bitmap(n, &ones));
                }
                1 | 2 => {
                    s.pick(id, &mut rng);
                }
                3 => {
                    if let Some(&c) = s.sources.get(&id).and_then(|x| x.inflight.iter().next()) {
                        s.complete(c, id);
                    }
                }
                4 => {
                    if let Some(&c) = s.sources.get(&id).and_then(|x| x.inflight.iter().next()) {
                        s.failed(c, id);
                    }
                }
                5 => {
                    if let Some(&c) = s.sources.get(&id).and_then(|x| x.inflight.iter().next()) {
                        s.release(c, id, rng.random_bool(0.5));
                    }
                }
                _ => s.remove_source(id),
            }
            s.check_invariant();
        }
        let _ = round;
    }
}

/// No pick scans every chunk (review defect 5): a source holding one needed chunk among 2^18 is
/// served from a byte-wise intersection, and endgame looks only at chunks in flight.
#[test]
fn picks_examine_a_bounded_number_of_chunks_at_2_pow_18() {
    let n = proto::limits::MAX_CHUNKS_PER_FILE;
    let mut s = Scheduler::new(n, &Bitmap::new(n));
    let mut rng = StdRng::seed_from_u64(13);
    s.update_source(1, &bitmap(n, &[n / 3]));
    s.examined.set(0);
    assert_eq!(s.pick(1, &mut rng), Some(n / 3));
    assert_eq!(s.pick(1, &mut rng), None);
    // A window of the needed list, then one pass over the bitmap's bytes (n / 8), per pick.
    let bound = 2 * (SCAN_WINDOW as u64 + u64::from(n / 8));
    assert!(s.examined.get() <= bound, "examined {} > {bound}", s.examined.get());
    assert_eq!(s.unavailable(), n - 1);

    // Endgame at 2^18: everything stored but a few chunks in flight from a seed.
    let mut have = Bitmap::full(n);
    for c in [5, 70_000, n - 1] {
        have.clear(c);
    }
    let mut s = Scheduler::new(n, &have);
    s.update_source(1, &Have::Complete);
    s.update_source(2, &Have::Complete);
    while s.pick(1, &mut rng).is_some() {}
    s.examined.set(0);
    assert!(s.pick(2, &mut rng).is_some(), "endgame duplicate");
    assert!(s.examined.get() <= 3, "examined {}", s.examined.get());
    s.check_invariant();
}
