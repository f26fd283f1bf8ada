//! The rarest-first chunk scheduler of one download: a synchronous state machine, shared by the
//! download's per-source tasks behind a mutex and tested without tokio.
//!
//! Invariant: every chunk is exactly one of HAVE (stored and verified), IN FLIGHT (requested from
//! one or more sources, its owners), or NEEDED (no owner). A source's in-flight set is exactly the
//! chunks it owns. `needed` lists exactly the NEEDED chunks.
//!
//! Choice: a source is given the NEEDED chunk it holds with the lowest availability (how many peers
//! in the swarm hold it, as last reported by the tracker, plus what sources announced since), ties
//! broken at random so that downloaders starting together spread over different chunks. For very
//! large files the rarest is taken among a random window of [`SCAN_WINDOW`] needed chunks, keeping a
//! pick O(window). When no NEEDED chunk is left (endgame), a source is given an IN FLIGHT chunk it
//! holds that fewer than [`ENDGAME_OWNERS`] sources are fetching: the first valid copy wins.

use std::collections::{HashMap, HashSet};

use proto::{Bitmap, Have};
use rand::Rng;

/// Needed chunks examined per pick.
pub const SCAN_WINDOW: usize = 4096;

/// Most sources fetching one chunk at once in endgame.
pub const ENDGAME_OWNERS: usize = 2;

/// Identifies a source within one download.
pub type SourceId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    Have,
    Needed,
    InFlight(Vec<SourceId>),
}

#[derive(Debug)]
struct Source {
    have: Bitmap,
    /// Chunks the source said it does not hold: stale news (a tracker poll) cannot add them back.
    denied: Bitmap,
    inflight: HashSet<u32>,
}

/// The scheduler. See the module docs for its invariant.
#[derive(Debug)]
pub struct Scheduler {
    state: Vec<ChunkState>,
    /// NEEDED chunks, in no particular order, with each chunk's position in it.
    needed: Vec<u32>,
    needed_pos: Vec<usize>,
    availability: Vec<u32>,
    sources: HashMap<SourceId, Source>,
    failures: Vec<u32>,
    /// Hash failures per source. Kept when a source is removed: its copies still queued for
    /// verification are judged by the record it left.
    strikes: HashMap<SourceId, u32>,
    have_count: u32,
}

/// What became of a chunk handed in by a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// First copy: store it.
    New,
    /// Another source's copy already won (endgame): discard.
    Duplicate,
}

const NONE: usize = usize::MAX;

impl Scheduler {
    /// A scheduler for `num_chunks` chunks, of which those in `have` are already stored.
    pub fn new(num_chunks: u32, have: &Bitmap) -> Self {
        let n = num_chunks as usize;
        let mut s = Self {
            state: vec![ChunkState::Needed; n],
            needed: Vec::with_capacity(n),
            needed_pos: vec![NONE; n],
            availability: vec![0; n],
            sources: HashMap::new(),
            failures: vec![0; n],
            strikes: HashMap::new(),
            have_count: 0,
        };
        for i in 0..num_chunks {
            if have.get(i) {
                s.state[i as usize] = ChunkState::Have;
                s.have_count += 1;
            } else {
                s.push_needed(i);
            }
        }
        s
    }

    fn push_needed(&mut self, i: u32) {
        self.needed_pos[i as usize] = self.needed.len();
        self.needed.push(i);
    }

    fn take_needed(&mut self, i: u32) {
        let pos = self.needed_pos[i as usize];
        if pos == NONE {
            return;
        }
        self.needed.swap_remove(pos);
        if let Some(&moved) = self.needed.get(pos) {
            self.needed_pos[moved as usize] = pos;
        }
        self.needed_pos[i as usize] = NONE;
    }

    /// Number of chunks.
    pub fn num_chunks(&self) -> u32 {
        self.state.len() as u32
    }

    /// Chunks stored.
    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// True when every chunk is stored.
    pub fn is_done(&self) -> bool {
        self.have_count == self.num_chunks()
    }

    /// Whether chunk `i` is stored.
    pub fn has(&self, i: u32) -> bool {
        self.state.get(i as usize) == Some(&ChunkState::Have)
    }

    /// Replaces the swarm-wide availability counts (from the tracker). Ignored if the length is
    /// wrong.
    pub fn set_availability(&mut self, availability: Vec<u32>) {
        if availability.len() == self.state.len() {
            self.availability = availability;
        }
    }

    /// Adds a source, or adds to what it holds: peers only ever gain chunks, and news of a source
    /// arrives by several paths (its welcome, its announcements, the tracker) that may be stale,
    /// so bits are only added, never cleared, except by [`Scheduler::release`]'s "don't have".
    /// Availability is left alone: this news comes with (or after) the tracker's counts, which
    /// already include it.
    pub fn update_source(&mut self, id: SourceId, have: &Have) {
        let n = self.num_chunks();
        let have = have.to_bitmap(n);
        if have.len() != n {
            return;
        }
        match self.sources.get_mut(&id) {
            Some(s) => {
                for c in have.iter_ones() {
                    if !s.denied.get(c) {
                        s.have.set(c);
                    }
                }
            }
            None => {
                self.sources.insert(id, Source { have, denied: Bitmap::new(n), inflight: HashSet::new() });
            }
        }
    }

    /// The source announced that it now holds chunk `c`. Returns true if we need that chunk.
    /// Availability counts it at once: the tracker's count catches up at its next poll.
    pub fn gained(&mut self, id: SourceId, c: u32) -> bool {
        let Some(s) = self.sources.get_mut(&id) else { return false };
        if s.denied.get(c) {
            // It said it did not have it; it has it now.
            s.denied.clear(c);
        }
        if !s.have.set(c) {
            return false;
        }
        if let Some(a) = self.availability.get_mut(c as usize) {
            *a += 1;
        }
        !self.has(c)
    }

    /// Whether the source holds every chunk (a seed).
    pub fn source_is_complete(&self, id: SourceId) -> bool {
        self.sources.get(&id).is_some_and(|s| s.have.is_full())
    }

    /// `id` was asked for chunk `asked` and sent `sent` instead (see
    /// [`proto::peer::PeerRequest::GetFresh`]): `asked` is released, and `sent` is now in flight
    /// from `id` (unless already stored: its copy will then be a duplicate).
    pub fn substitute(&mut self, asked: u32, sent: u32, id: SourceId) {
        self.drop_owner(asked, id);
        if sent >= self.num_chunks() || !self.sources.contains_key(&id) {
            return;
        }
        match &mut self.state[sent as usize] {
            ChunkState::Have => return,
            ChunkState::InFlight(owners) if owners.contains(&id) => return,
            ChunkState::InFlight(owners) => owners.push(id),
            st @ ChunkState::Needed => *st = ChunkState::InFlight(vec![id]),
        }
        self.take_needed(sent);
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.insert(sent);
            s.have.set(sent);
        }
    }

    /// Hash failures charged to the source so far.
    pub fn strikes(&self, id: SourceId) -> u32 {
        self.strikes.get(&id).copied().unwrap_or(0)
    }

    /// The lowest chunk not stored yet.
    pub fn first_missing(&self) -> Option<u32> {
        self.state.iter().position(|s| *s != ChunkState::Have).map(|c| c as u32)
    }

    /// A stored chunk turned out bad on disk (the whole-file check failed): it is NEEDED again.
    pub fn lost(&mut self, c: u32) {
        if self.state.get(c as usize) == Some(&ChunkState::Have) {
            self.state[c as usize] = ChunkState::Needed;
            self.push_needed(c);
            self.have_count -= 1;
        }
    }

    /// Removes a source; its in-flight chunks go back to NEEDED unless another source has them.
    pub fn remove_source(&mut self, id: SourceId) {
        if let Some(src) = self.sources.remove(&id) {
            for c in src.inflight {
                self.drop_owner(c, id);
            }
        }
    }

    /// Whether the source holds chunk `i`.
    pub fn source_has(&self, id: SourceId, i: u32) -> bool {
        self.sources.get(&id).is_some_and(|s| s.have.get(i))
    }

    /// Chunks the source is fetching.
    pub fn inflight_of(&self, id: SourceId) -> usize {
        self.sources.get(&id).map_or(0, |s| s.inflight.len())
    }

    /// Picks the next chunk for `id` to fetch, marking it in flight; `None` when the source holds
    /// nothing useful right now.
    pub fn pick(&mut self, id: SourceId, rng: &mut impl Rng) -> Option<u32> {
        let src = self.sources.get(&id)?;
        let chosen = self.rarest_needed(src, rng).or_else(|| {
            if self.needed.is_empty() {
                self.endgame(id, src, rng)
            } else {
                None
            }
        })?;
        self.take_needed(chosen);
        match &mut self.state[chosen as usize] {
            ChunkState::InFlight(owners) => owners.push(id),
            st => *st = ChunkState::InFlight(vec![id]),
        }
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.insert(chosen);
        }
        Some(chosen)
    }

    fn rarest_needed(&self, src: &Source, rng: &mut impl Rng) -> Option<u32> {
        let len = self.needed.len();
        if len == 0 {
            return None;
        }
        let pick_from = |range: &mut dyn Iterator<Item = usize>, rng: &mut dyn rand::RngCore| {
            let mut best: Option<(u32, u32)> = None;
            let mut ties = 0u32;
            for pos in range {
                let c = self.needed[pos];
                if !src.have.get(c) {
                    continue;
                }
                let a = self.availability[c as usize];
                match best {
                    Some((ba, _)) if a > ba => {}
                    Some((ba, _)) if a == ba => {
                        ties += 1;
                        if rng.random_range(0..ties) == 0 {
                            best = Some((a, c));
                        }
                    }
                    _ => {
                        best = Some((a, c));
                        ties = 1;
                    }
                }
            }
            best.map(|(_, c)| c)
        };
        if len <= SCAN_WINDOW {
            return pick_from(&mut (0..len), rng);
        }
        let start = rng.random_range(0..len);
        let window = (start..start + SCAN_WINDOW).map(|p| p % len);
        pick_from(&mut window.into_iter(), rng).or_else(|| pick_from(&mut (0..len), rng))
    }

    fn endgame(&self, id: SourceId, src: &Source, rng: &mut impl Rng) -> Option<u32> {
        let mut best: Option<(usize, u32)> = None;
        let mut ties = 0u32;
        for (c, st) in self.state.iter().enumerate() {
            let ChunkState::InFlight(owners) = st else { continue };
            let c = c as u32;
            if owners.len() >= ENDGAME_OWNERS || owners.contains(&id) || !src.have.get(c) {
                continue;
            }
            match best {
                Some((n, _)) if owners.len() > n => {}
                Some((n, _)) if owners.len() == n => {
                    ties += 1;
                    if rng.random_range(0..ties) == 0 {
                        best = Some((n, c));
                    }
                }
                _ => {
                    best = Some((owners.len(), c));
                    ties = 1;
                }
            }
        }
        best.map(|(_, c)| c)
    }

    fn drop_owner(&mut self, c: u32, id: SourceId) {
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.remove(&c);
        }
        if let Some(ChunkState::InFlight(owners)) = self.state.get_mut(c as usize) {
            owners.retain(|&o| o != id);
            if owners.is_empty() {
                self.state[c as usize] = ChunkState::Needed;
                self.push_needed(c);
            }
        }
    }

    /// A verified copy of chunk `c` arrived from `id`. The first copy wins; every owner is
    /// released (other owners' copies will be discarded as duplicates).
    pub fn complete(&mut self, c: u32, id: SourceId) -> Completion {
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.remove(&c);
        }
        let Some(st) = self.state.get_mut(c as usize) else { return Completion::Duplicate };
        match std::mem::replace(st, ChunkState::Have) {
            ChunkState::Have => Completion::Duplicate,
            old => {
                if let ChunkState::InFlight(owners) = old {
                    for o in owners {
                        if let Some(s) = self.sources.get_mut(&o) {
                            s.inflight.remove(&c);
                        }
                    }
                }
                self.take_needed(c);
                self.have_count += 1;
                Completion::New
            }
        }
    }

    /// Chunk `c` from `id` failed its hash. Returns the source's strike count; the chunk goes
    /// back to NEEDED unless another source is fetching it.
    pub fn failed(&mut self, c: u32, id: SourceId) -> u32 {
        if let Some(f) = self.failures.get_mut(c as usize) {
            *f += 1;
        }
        self.drop_owner(c, id);
        let strikes = self.strikes.entry(id).or_insert(0);
        *strikes += 1;
        *strikes
    }

    /// Hash failures so far for chunk `c`.
    pub fn failures(&self, c: u32) -> u32 {
        self.failures.get(c as usize).copied().unwrap_or(0)
    }

    /// `id` says it does not hold `c` (or could not deliver it): forget that it has it and
    /// release the chunk.
    pub fn release(&mut self, c: u32, id: SourceId, dont_have: bool) {
        if dont_have {
            if let Some(s) = self.sources.get_mut(&id) {
                s.have.clear(c);
                s.denied.set(c);
            }
        }
        self.drop_owner(c, id);
    }

    /// NEEDED or IN FLIGHT chunks that no current source holds.
    pub fn unavailable(&self) -> Vec<u32> {
        (0..self.num_chunks()).filter(|&c| !self.has(c) && !self.sources.values().any(|s| s.have.get(c))).collect()
    }

    #[cfg(test)]
    fn check_invariant(&self) {
        let mut needed = 0;
        let mut have = 0;
        for (c, st) in self.state.iter().enumerate() {
            match st {
                ChunkState::Have => have += 1,
                ChunkState::Needed => {
                    needed += 1;
                    assert_eq!(self.needed[self.needed_pos[c]], c as u32);
                }
                ChunkState::InFlight(owners) => {
                    assert!(!owners.is_empty());
                    assert_eq!(self.needed_pos[c], NONE);
                    for o in owners {
                        assert!(self.sources[o].inflight.contains(&(c as u32)), "owner {o} of {c}");
                    }
                }
            }
        }
        assert_eq!(needed, self.needed.len());
        assert_eq!(have, self.have_count);
        for (id, s) in &self.sources {
            for c in &s.inflight {
                assert!(matches!(&self.state[*c as usize], ChunkState::InFlight(o) if o.contains(id)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn bitmap(n: u32, ones: &[u32]) -> Have {
        let mut b = Bitmap::new(n);
        ones.iter().for_each(|&i| {
            b.set(i);
        });
        Have::Partial(b)
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
        while !s.needed.is_empty() {
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
    fn hash_failure_requeues_and_counts_strikes() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut s = Scheduler::new(2, &Bitmap::new(2));
        s.update_source(1, &Have::Complete);
        let c = s.pick(1, &mut rng).unwrap();
        assert_eq!(s.failed(c, 1), 1);
        assert_eq!(s.failures(c), 1);
        s.check_invariant();
        let c2 = s.pick(1, &mut rng).unwrap();
        assert_eq!(s.failed(c2, 1), 2);
        assert!(!s.has(c) && !s.has(c2));
        s.check_invariant();
        // A removed source keeps its record.
        s.remove_source(1);
        assert_eq!(s.strikes(1), 2);
    }

    #[test]
    fn dont_have_updates_the_source() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut s = Scheduler::new(1, &Bitmap::new(1));
        s.update_source(1, &Have::Complete);
        let c = s.pick(1, &mut rng).unwrap();
        s.release(c, 1, true);
        assert_eq!(s.pick(1, &mut rng), None);
        assert_eq!(s.unavailable(), vec![0]);
        s.check_invariant();
    }

    #[test]
    fn endgame_duplicates_the_last_chunks_and_first_copy_wins() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut s = Scheduler::new(2, &Bitmap::new(2));
        for id in 1..=3 {
            s.update_source(id, &Have::Complete);
        }
        let a = s.pick(1, &mut rng).unwrap();
        let b = s.pick(1, &mut rng).unwrap();
        // Nothing needed left: source 2 duplicates one of 1's chunks, source 3 the other.
        let d2 = s.pick(2, &mut rng).unwrap();
        let d3 = s.pick(3, &mut rng).unwrap();
        assert_ne!(d2, d3);
        assert!([a, b].contains(&d2) && [a, b].contains(&d3));
        s.check_invariant();
        assert_eq!(s.complete(d2, 2), Completion::New);
        assert_eq!(s.complete(d2, 1), Completion::Duplicate);
        s.check_invariant();
        assert_eq!(s.pick(2, &mut rng), None, "at most ENDGAME_OWNERS per chunk");
        assert_eq!(s.complete(d3, 3), Completion::New);
        assert!(s.is_done());
        s.check_invariant();
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
}
