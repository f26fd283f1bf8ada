//! The scheduler's choice of a chunk for a source: rarest needed chunk first (random ties), from a
//! bounded sample; in endgame, a chunk in flight with the fewest owners. See `scheduler.rs`.

use proto::Bitmap;
use rand::Rng;

use super::{ChunkState, Scheduler, Source, ENDGAME_OWNERS, SCAN_WINDOW};
use crate::download::scheduler::SourceId;

impl Scheduler {
    /// The rarest of `candidates`, ties broken uniformly at random.
    fn rarest(&self, candidates: impl Iterator<Item = u32>, rng: &mut impl Rng) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u32;
        for c in candidates {
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
    }

    pub(super) fn rarest_needed(&self, src: &Source, rng: &mut impl Rng, reserved: Option<&Bitmap>) -> Option<u32> {
        let len = self.needed.len();
        if len == 0 {
            return None;
        }
        let items = &self.needed.items;
        let held = |&c: &u32| {
            self.examine();
            src.have.get(c) && !reserved.is_some_and(|r| r.get(c))
        };
        if len <= SCAN_WINDOW {
            return self.rarest(items.iter().copied().filter(held), rng);
        }
        let start = rng.random_range(0..len);
        let window = (start..start + SCAN_WINDOW).map(|p| items[p % len]).filter(held);
        self.rarest(window, rng).or_else(|| {
            let sparse = self.sparse_candidates(&src.have, reserved, rng);
            self.rarest(sparse, rng)
        })
    }

    /// Up to [`SCAN_WINDOW`] chunks that the source holds and that are needed, found byte by byte
    /// from a random place: for a source holding few of many needed chunks, which sampling the
    /// needed list would miss.
    fn sparse_candidates<'a>(
        &'a self,
        have: &'a Bitmap,
        reserved: Option<&'a Bitmap>,
        rng: &mut impl Rng,
    ) -> impl Iterator<Item = u32> + 'a {
        let (h, w) = (have.as_bytes(), self.needed.bits.as_bytes());
        let r = reserved.map(Bitmap::as_bytes);
        let start = rng.random_range(0..h.len().max(1));
        (start..h.len())
            .chain(0..start)
            .filter_map(move |i| {
                self.examine();
                let free = r.and_then(|r| r.get(i)).map_or(0xff, |b| !b);
                let both = h[i] & w[i] & free;
                (both != 0).then_some((i, both))
            })
            .flat_map(|(i, both)| (0..8u32).filter(move |b| both & (1 << b) != 0).map(move |b| i as u32 * 8 + b))
            .take(SCAN_WINDOW)
    }

    /// Counts one entry (a chunk or a bitmap byte) examined by a pick, for the tests that bound
    /// the work of a pick.
    fn examine(&self) {
        #[cfg(test)]
        self.examined.set(self.examined.get() + 1);
    }

    pub(super) fn endgame(
        &self,
        id: SourceId,
        src: &Source,
        rng: &mut impl Rng,
        reserved: Option<&Bitmap>,
    ) -> Option<u32> {
        let mut best: Option<(usize, u32)> = None;
        let mut ties = 0u32;
        for &c in &self.inflight.items {
            self.examine();
            let ChunkState::InFlight(owners) = &self.state[c as usize] else { continue };
            if owners.len() >= ENDGAME_OWNERS
                || owners.contains(&id)
                || !src.have.get(c)
                || reserved.is_some_and(|r| r.get(c))
            {
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
}
