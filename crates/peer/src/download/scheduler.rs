//! The rarest-first chunk state of one download: a synchronous structure owned by the download's
//! coordinator (nothing else touches it) and tested without tokio.
//!
//! Invariant: every chunk is exactly one of HAVE (stored and verified), IN FLIGHT (requested from
//! one or more sources, its owners), or NEEDED (no owner). A source's in-flight set is exactly the
//! chunks it owns. `needed` and `inflight` list exactly the NEEDED and IN FLIGHT chunks.
//!
//! Choice: a source is given the NEEDED chunk it holds with the lowest availability (how many peers
//! in the swarm hold it, as last reported by the tracker, plus what sources announced since), ties
//! broken at random so that downloaders starting together spread over different chunks. No pick
//! scans every chunk: the rarest is taken among a random window of [`SCAN_WINDOW`] needed chunks,
//! and when the source holds none of those, among the first [`SCAN_WINDOW`] it holds found by a
//! byte-wise AND of its bitmap with the needed set from a random place (n/8 byte operations at
//! most). When no NEEDED chunk is left (endgame), a source is given an IN FLIGHT chunk it holds
//! that fewer than [`ENDGAME_OWNERS`] sources are fetching: the first valid copy wins.

use std::collections::{HashMap, HashSet};

use proto::{Bitmap, Have};
use rand::Rng;

use super::pool::Pool;

/// Needed chunks examined per pick.
pub(crate) const SCAN_WINDOW: usize = 4096;

/// Most sources fetching one chunk at once in endgame.
pub(crate) const ENDGAME_OWNERS: usize = 2;
/// Files with fewer chunks have no endgame: for them it would fetch most of the file twice, and
/// a folder of small files would cost its sources two copies. A stuck chunk still moves on when
/// its source stalls.
pub(crate) const ENDGAME_MIN_CHUNKS: usize = 4;

/// Identifies a source within one download.
pub(crate) type SourceId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    Have,
    Needed,
    InFlight(Vec<SourceId>),
}

#[derive(Debug)]
struct Source {
    have: Bitmap,
    /// Bits set in `have`, kept so that telling a seed needs no count.
    held: u32,
    /// Chunks the source said it does not hold: stale news (a tracker poll) cannot add them back.
    denied: Bitmap,
    inflight: HashSet<u32>,
}

/// The scheduler. See the module docs for its invariant.
#[derive(Debug)]
pub(crate) struct Scheduler {
    state: Vec<ChunkState>,
    needed: Pool,
    inflight: Pool,
    availability: Vec<u32>,
    sources: HashMap<SourceId, Source>,
    /// Hash failures per chunk, across sources.
    failures: Vec<u32>,
    have_count: u32,
    /// Chunk entries examined by picks, for the tests that bound it.
    #[cfg(test)]
    examined: std::cell::Cell<u64>,
}

/// What became of a chunk handed in by a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// First copy: it counts.
    New,
    /// Another source's copy already won (endgame).
    Duplicate,
}

impl Scheduler {
    /// A scheduler for `num_chunks` chunks, of which those in `have` are already stored.
    pub(crate) fn new(num_chunks: u32, have: &Bitmap) -> Self {
        let n = num_chunks as usize;
        let mut s = Self {
            state: vec![ChunkState::Needed; n],
            needed: Pool::new(num_chunks),
            inflight: Pool::new(num_chunks),
            availability: vec![0; n],
            sources: HashMap::new(),
            failures: vec![0; n],
            have_count: 0,
            #[cfg(test)]
            examined: std::cell::Cell::new(0),
        };
        for i in 0..num_chunks {
            if have.get(i) {
                s.state[i as usize] = ChunkState::Have;
                s.have_count += 1;
            } else {
                s.needed.insert(i);
            }
        }
        s
    }

    /// Number of chunks.
    pub(crate) fn num_chunks(&self) -> u32 {
        self.state.len() as u32
    }

    /// Chunks stored.
    pub(crate) fn have_count(&self) -> u32 {
        self.have_count
    }

    /// True when every chunk is stored.
    pub(crate) fn is_done(&self) -> bool {
        self.have_count == self.num_chunks()
    }

    /// Whether chunk `i` is stored.
    pub(crate) fn has(&self, i: u32) -> bool {
        self.state.get(i as usize) == Some(&ChunkState::Have)
    }

    /// NEEDED chunks: when zero, picks are endgame picks.
    pub(crate) fn needed_count(&self) -> usize {
        self.needed.len()
    }

    /// Replaces the swarm-wide availability counts (from the tracker). Ignored if the length is
    /// wrong.
    pub(crate) fn set_availability(&mut self, availability: Vec<u32>) {
        if availability.len() == self.state.len() {
            self.availability = availability;
        }
    }

    /// Adds a source, or adds to what it holds: peers only ever gain chunks, and news of a source
    /// arrives by several paths (its welcome, its announcements, the tracker) that may be stale,
    /// so bits are only added, never cleared, except by [`Scheduler::release`]'s "don't have".
    /// Availability is left alone: this news comes with (or after) the tracker's counts, which
    /// already include it.
    pub(crate) fn update_source(&mut self, id: SourceId, have: &Have) {
        let n = self.num_chunks();
        let have = have.to_bitmap(n);
        if have.len() != n {
            return;
        }
        match self.sources.get_mut(&id) {
            Some(s) => {
                for c in have.iter_ones() {
                    if !s.denied.get(c) && s.have.set(c) {
                        s.held += 1;
                    }
                }
            }
            None => {
                let held = have.count();
                self.sources.insert(id, Source { have, held, denied: Bitmap::new(n), inflight: HashSet::new() });
            }
        }
    }

    /// The source announced that it now holds chunk `c`. Returns true if we need that chunk.
    /// Availability counts it at once: the tracker's count catches up at its next poll.
    pub(crate) fn gained(&mut self, id: SourceId, c: u32) -> bool {
        let Some(s) = self.sources.get_mut(&id) else { return false };
        if s.denied.get(c) {
            // It said it did not have it; it has it now.
            s.denied.clear(c);
        }
        if !s.have.set(c) {
            return false;
        }
        s.held += 1;
        if let Some(a) = self.availability.get_mut(c as usize) {
            *a += 1;
        }
        !self.has(c)
    }

    /// The chunks a source holds, as far as this download knows.
    pub(crate) fn source_have(&self, id: SourceId) -> Option<&Bitmap> {
        self.sources.get(&id).map(|s| &s.have)
    }

    /// Whether the source holds every chunk (a seed).
    pub(crate) fn source_is_complete(&self, id: SourceId) -> bool {
        self.sources.get(&id).is_some_and(|s| s.held == self.num_chunks())
    }

    /// Whether the source holds chunk `i`.
    #[cfg(test)]
    pub(crate) fn source_has(&self, id: SourceId, i: u32) -> bool {
        self.sources.get(&id).is_some_and(|s| s.have.get(i))
    }

    /// Chunks the source is fetching (requested, or received and not yet verified).
    #[cfg(test)]
    pub(crate) fn inflight_of(&self, id: SourceId) -> usize {
        self.sources.get(&id).map_or(0, |s| s.inflight.len())
    }

    /// `id` was asked for chunk `asked` and sent `sent` instead (see
    /// [`proto::peer::PeerRequest::GetFresh`]): `asked` is released, and `sent` is now in flight
    /// from `id` (unless already stored: its copy will then be a duplicate).
    pub(crate) fn substitute(&mut self, asked: u32, sent: u32, id: SourceId) {
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
        self.needed.remove(sent);
        self.inflight.insert(sent);
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.insert(sent);
            if s.have.set(sent) {
                s.held += 1;
            }
        }
    }

    /// The lowest chunk not stored yet (a byte scan; for error reports).
    pub(crate) fn first_missing(&self) -> Option<u32> {
        self.state.iter().position(|s| *s != ChunkState::Have).map(|c| c as u32)
    }

    /// A stored chunk turned out bad on disk (the whole-file check failed): it is NEEDED again.
    pub(crate) fn lost(&mut self, c: u32) {
        if self.state.get(c as usize) == Some(&ChunkState::Have) {
            self.state[c as usize] = ChunkState::Needed;
            self.needed.insert(c);
            self.have_count -= 1;
        }
    }

    /// Removes a source; its in-flight chunks go back to NEEDED unless another source has them.
    pub(crate) fn remove_source(&mut self, id: SourceId) {
        if let Some(src) = self.sources.remove(&id) {
            for c in src.inflight {
                self.drop_owner(c, id);
            }
        }
    }

    /// Picks the next chunk for `id` to fetch, marking it in flight; `None` when the source holds
    /// nothing useful right now.
    #[cfg(test)]
    pub(crate) fn pick(&mut self, id: SourceId, rng: &mut impl Rng) -> Option<u32> {
        self.pick_avoiding(id, rng, None)
    }

    /// [`Scheduler::pick`], leaving alone the chunks in `reserved` (kept for faster sources).
    pub(crate) fn pick_avoiding(&mut self, id: SourceId, rng: &mut impl Rng, reserved: Option<&Bitmap>) -> Option<u32> {
        let src = self.sources.get(&id)?;
        let chosen = self.rarest_needed(src, rng, reserved).or_else(|| {
            if self.needed.len() == 0 && self.state.len() >= ENDGAME_MIN_CHUNKS {
                self.endgame(id, src, rng, reserved)
            } else {
                None
            }
        })?;
        self.needed.remove(chosen);
        self.inflight.insert(chosen);
        match &mut self.state[chosen as usize] {
            ChunkState::InFlight(owners) => owners.push(id),
            st => *st = ChunkState::InFlight(vec![id]),
        }
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.insert(chosen);
        }
        Some(chosen)
    }

    fn drop_owner(&mut self, c: u32, id: SourceId) {
        if let Some(s) = self.sources.get_mut(&id) {
            s.inflight.remove(&c);
        }
        if let Some(ChunkState::InFlight(owners)) = self.state.get_mut(c as usize) {
            owners.retain(|&o| o != id);
            if owners.is_empty() {
                self.state[c as usize] = ChunkState::Needed;
                self.inflight.remove(c);
                self.needed.insert(c);
            }
        }
    }

    /// A verified copy of chunk `c` arrived from `id`. The first copy wins; every owner is
    /// released (other owners' copies will be duplicates).
    pub(crate) fn complete(&mut self, c: u32, id: SourceId) -> Completion {
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
                self.needed.remove(c);
                self.inflight.remove(c);
                self.have_count += 1;
                Completion::New
            }
        }
    }

    /// Chunk `c` from `id` failed its hash. Returns the chunk's failures so far (across
    /// sources); the chunk goes back to NEEDED unless another source is fetching it.
    pub(crate) fn failed(&mut self, c: u32, id: SourceId) -> u32 {
        self.drop_owner(c, id);
        match self.failures.get_mut(c as usize) {
            Some(f) => {
                *f += 1;
                *f
            }
            None => 0,
        }
    }

    /// `id` says it does not hold `c` (or could not deliver it): forget that it has it and
    /// release the chunk.
    pub(crate) fn release(&mut self, c: u32, id: SourceId, dont_have: bool) {
        if dont_have {
            if let Some(s) = self.sources.get_mut(&id) {
                if s.have.get(c) {
                    s.have.clear(c);
                    s.held -= 1;
                }
                s.denied.set(c);
            }
        }
        self.drop_owner(c, id);
    }

    /// How many missing chunks no current source holds: one byte-wise OR of the sources' bitmaps,
    /// not a lookup per chunk and source.
    pub(crate) fn unavailable(&self) -> u32 {
        let n = self.num_chunks();
        let mut held = Bitmap::new(n).as_bytes().to_vec();
        for s in self.sources.values() {
            for (h, b) in held.iter_mut().zip(s.have.as_bytes()) {
                *h |= b;
            }
        }
        let (needed, inflight) = (self.needed.bits.as_bytes(), self.inflight.bits.as_bytes());
        held.iter().zip(needed).zip(inflight).map(|((h, a), b)| ((a | b) & !h).count_ones()).sum()
    }
}

#[path = "pick.rs"]
mod pick;

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
