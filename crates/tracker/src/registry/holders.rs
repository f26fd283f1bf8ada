//! One file's holders: who holds it, which chunks each has, and how many holders each chunk has.
//!
//! [`Holders`] keeps several arrays in step, and only its methods change them, so that File
//! Locations and File List cost O(reply) rather than O(holders) (a popular file may have
//! thousands of holders, and with that many, cache misses are what File Locations costs):
//! - `holders`: every holder's [`Holding`], keyed by peer: `Complete(i)`, `Partial(i)` or `Empty`
//!   (registered, no chunk yet: not a source);
//! - `complete`: a [`Slot`] (peer and the address it serves at) per complete holder;
//! - `partial`: a slot per partial holder, with its bitmap in `rows` (one row of `row_len` bytes
//!   per slot, in the same order, contiguous rather than a heap allocation per holder) and its
//!   chunk count in `counts` (so a Chunk Register knows at once whether the holding became full);
//! - `availability`: per chunk, how many holders have it.
//!
//! Invariants (checked by [`Holders::check_invariants`]):
//! - `complete` lists exactly the holders whose holding is `Complete`, `partial` exactly those
//!   whose holding is `Partial`, and each holding's index points at its own slot;
//! - `rows.len() == partial.len() * row_len` and `counts.len() == partial.len()`;
//! - every row is a valid bitmap of `num_chunks` bits (no bit at or past the chunk count), neither
//!   empty (that holding is `Empty`) nor full (it is promoted to `Complete`), and `counts[i]` is
//!   the number of bits set in row `i`;
//! - `availability[c]` equals the number of complete holders plus the rows with bit `c` set;
//! - each slot's address is where its peer currently serves (the caller keeps this by calling
//!   [`Holders::moved`] when a peer's endpoint changes), as the registry keeps it: an unspecified
//!   IP is a holder on the tracker's own host, listed per caller by [`OwnHost`].
//!
//! Adding, promoting or removing a holding pushes or swap-removes its slot (and row and count),
//! fixing the index of the holding moved into its place: every change is O(1) in the number of
//! holders, O(chunks) at most.

mod sample;

use std::net::SocketAddr;

use proto::tracker::SourceInfo;
use proto::{Bitmap, Have};
use rand::seq::SliceRandom;

use super::host::OwnHost;
use super::{PeerId, PeerMap};
use sample::sample;

/// A holder in the `complete` or `partial` list, with where it serves, so File Locations reads
/// addresses from the list instead of looking each peer up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    peer: PeerId,
    addr: SocketAddr,
}

/// One peer's holding of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Every chunk; the index in `complete`.
    Complete(usize),
    /// Some chunks; the index in `partial`, `rows` and `counts`.
    Partial(usize),
    /// Registered, no chunk yet: not a source.
    Empty,
}

/// The holders of one file, with their chunks and the file's availability (see the module docs
/// for the invariants).
#[derive(Debug)]
pub(super) struct Holders {
    num_chunks: u32,
    holders: PeerMap<Holding>,
    /// Holders with every chunk.
    complete: Vec<Slot>,
    /// Holders with some chunks but not all.
    partial: Vec<Slot>,
    /// The bitmaps of the `partial` holders, one row of `row_len` bytes each in the same order.
    rows: Vec<u8>,
    row_len: usize,
    /// How many chunks each `partial` holder has (its row's set bits).
    counts: Vec<u32>,
    availability: Vec<u32>,
}

impl Holders {
    /// No holders of a file of `num_chunks` chunks.
    pub(super) fn new(num_chunks: u32) -> Self {
        let n = num_chunks as usize;
        Self {
            num_chunks,
            holders: PeerMap::default(),
            complete: Vec::new(),
            partial: Vec::new(),
            rows: Vec::new(),
            row_len: n.div_ceil(8),
            counts: Vec::new(),
            availability: vec![0; n],
        }
    }

    /// Holders, sources or not.
    pub(super) fn len(&self) -> usize {
        self.holders.len()
    }

    /// No holder left: the file is to be dropped.
    pub(super) fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Whether `peer` holds the file (even with no chunk yet).
    pub(super) fn contains(&self, peer: PeerId) -> bool {
        self.holders.contains_key(&peer)
    }

    /// Every holder, in no particular order.
    pub(super) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.holders.keys().copied()
    }

    /// Holders with at least one chunk.
    pub(super) fn sources(&self) -> u32 {
        (self.complete.len() + self.partial.len()) as u32
    }

    /// Holders with every chunk.
    pub(super) fn complete_sources(&self) -> u32 {
        self.complete.len() as u32
    }

    /// Per chunk, how many holders have it.
    pub(super) fn availability(&self) -> &[u32] {
        &self.availability
    }

    /// `peer`, serving at `addr`, holds `have` (replacing what it held before). The bitmap's
    /// length was checked against the chunk count on the way in.
    pub(super) fn add(&mut self, peer: PeerId, addr: SocketAddr, have: Have) {
        self.remove(peer);
        match have {
            Have::Partial(b) if !b.is_full() => {
                b.iter_ones().for_each(|i| self.availability[i as usize] += 1);
                if b.count() == 0 {
                    self.holders.insert(peer, Holding::Empty);
                } else {
                    self.place_partial(peer, addr, b.as_bytes());
                }
            }
            // A full bitmap is a complete holding.
            _ => {
                self.availability.iter_mut().for_each(|a| *a += 1);
                self.place_complete(peer, addr);
            }
        }
    }

    /// `peer` holds the file no more.
    pub(super) fn remove(&mut self, peer: PeerId) {
        match self.holders.get(&peer).copied() {
            Some(Holding::Complete(_)) => self.availability.iter_mut().for_each(|a| *a -= 1),
            Some(Holding::Partial(slot)) => {
                let held: Vec<u32> = self.row_ones(slot).collect();
                held.into_iter().for_each(|i| self.availability[i as usize] -= 1);
            }
            Some(Holding::Empty) | None => {}
        }
        self.unplace(peer);
        self.holders.remove(&peer);
    }

    /// `peer`, serving at `addr`, has `chunks` (each below the chunk count, checked by the
    /// caller; duplicates and chunks already held are harmless): marks them held, and promotes a
    /// partial holding that became full. One lookup of the holding, then O(1) per chunk. An empty
    /// list changes nothing (an `Empty` holding stays empty rather than getting an empty row).
    pub(super) fn add_chunks(&mut self, peer: PeerId, addr: SocketAddr, chunks: &[u32]) {
        let slot = match self.holders.get(&peer).copied().unwrap_or(Holding::Empty) {
            Holding::Complete(_) => return,
            _ if chunks.is_empty() => return,
            Holding::Partial(slot) => slot,
            Holding::Empty => {
                self.place_partial(peer, addr, &vec![0; self.row_len]);
                self.partial.len() - 1
            }
        };
        let row = slot * self.row_len;
        for &chunk in chunks {
            let (byte, bit) = (row + chunk as usize / 8, 1u8 << (chunk % 8));
            if self.rows[byte] & bit == 0 {
                self.rows[byte] |= bit;
                self.availability[chunk as usize] += 1;
                self.counts[slot] += 1;
            }
        }
        if self.counts[slot] == self.num_chunks {
            self.unplace(peer);
            self.place_complete(peer, addr);
        }
    }

    /// The address `peer` serves at changed: its slot follows.
    pub(super) fn moved(&mut self, peer: PeerId, addr: SocketAddr) {
        let slot = match self.holders.get(&peer) {
            Some(Holding::Complete(i)) => self.complete.get_mut(*i),
            Some(Holding::Partial(i)) => self.partial.get_mut(*i),
            _ => None,
        };
        if let Some(s) = slot {
            s.addr = addr;
        }
    }

    /// File Locations' sources for `caller`: up to `cap` holders other than the caller, chosen
    /// at random with complete and partial holders mixed (half from each group when both have
    /// enough, the rest from whichever has more), shuffled. Also the number of sources other than
    /// the caller. Each source is listed where `host` says the caller reaches it (a holder on the
    /// tracker's own host at the address the caller reached the tracker at): one comparison per
    /// listed source. O(cap).
    pub(super) fn draw(
        &self,
        caller: PeerId,
        cap: usize,
        host: OwnHost,
        rng: &mut impl rand::Rng,
    ) -> (Vec<SourceInfo>, u32) {
        // The caller is not its own source: leave it out of the counts and the draw.
        let (caller_complete, caller_partial) = match self.holders.get(&caller) {
            Some(Holding::Complete(_)) => (1, 0),
            Some(Holding::Partial(_)) => (0, 1),
            _ => (0, 0),
        };
        let complete_n = self.complete.len() - caller_complete;
        let partial_n = self.partial.len() - caller_partial;
        let from_complete = complete_n.min(cap.div_ceil(2).max(cap.saturating_sub(partial_n)));
        let from_partial = partial_n.min(cap - from_complete);
        let mut sources: Vec<SourceInfo> = Vec::with_capacity(from_complete + from_partial);
        let take_complete = |i: usize| {
            let s = self.complete[i];
            (s.peer != caller).then_some(SourceInfo { addr: host.reach(s.addr), have: Have::Complete })
        };
        sample(self.complete.len(), from_complete, rng, take_complete, &mut sources);
        let take_partial = |i: usize| {
            let s = self.partial[i];
            (s.peer != caller).then(|| SourceInfo { addr: host.reach(s.addr), have: self.have(Holding::Partial(i)) })
        };
        sample(self.partial.len(), from_partial, rng, take_partial, &mut sources);
        sources.shuffle(rng);
        (sources, (complete_n + partial_n) as u32)
    }

    fn row(&self, slot: usize) -> &[u8] {
        &self.rows[slot * self.row_len..(slot + 1) * self.row_len]
    }

    /// The chunks of a partial holder's row, ascending.
    fn row_ones(&self, slot: usize) -> impl Iterator<Item = u32> + '_ {
        self.row(slot)
            .iter()
            .enumerate()
            .flat_map(|(byte, &bits)| (0..8).filter(move |b| bits & (1 << b) != 0).map(move |b| (byte * 8 + b) as u32))
    }

    /// A holding as the protocol says it.
    fn have(&self, h: Holding) -> Have {
        let n = self.num_chunks;
        match h {
            Holding::Complete(_) => Have::Complete,
            // Rows only ever hold valid bitmaps (no bit at or past the chunk count).
            Holding::Partial(slot) => {
                Have::Partial(Bitmap::from_parts(n, self.row(slot).to_vec()).unwrap_or_else(|_| Bitmap::new(n)))
            }
            Holding::Empty => Have::Partial(Bitmap::new(n)),
        }
    }

    fn place_complete(&mut self, peer: PeerId, addr: SocketAddr) {
        self.complete.push(Slot { peer, addr });
        self.holders.insert(peer, Holding::Complete(self.complete.len() - 1));
    }

    fn place_partial(&mut self, peer: PeerId, addr: SocketAddr, bits: &[u8]) {
        self.partial.push(Slot { peer, addr });
        self.rows.extend_from_slice(bits);
        self.counts.push(bits.iter().map(|b| b.count_ones()).sum());
        self.holders.insert(peer, Holding::Partial(self.partial.len() - 1));
    }

    /// Takes `peer` out of its list (and its row and count with it) by swap-remove, fixing the
    /// index of the holder moved into its place. Leaves its holding `Empty`; availability is the
    /// caller's to adjust.
    fn unplace(&mut self, peer: PeerId) {
        let Some(h) = self.holders.get_mut(&peer) else { return };
        let (list, slot) = match std::mem::replace(h, Holding::Empty) {
            Holding::Complete(slot) => (&mut self.complete, slot),
            Holding::Partial(slot) => {
                let (w, last) = (self.row_len, self.partial.len() - 1);
                self.rows.copy_within(last * w..(last + 1) * w, slot * w);
                self.rows.truncate(last * w);
                self.counts.swap_remove(slot);
                (&mut self.partial, slot)
            }
            Holding::Empty => return,
        };
        list.swap_remove(slot);
        if let Some(moved) = list.get(slot).map(|s| s.peer) {
            if let Some(Holding::Complete(i) | Holding::Partial(i)) = self.holders.get_mut(&moved) {
                *i = slot;
            }
        }
    }

    /// Checks every invariant of the module docs, panicking on the first that is broken; `name`
    /// labels the messages and `endpoint` says where each peer serves. For tests and fuzzing: it
    /// walks every holder and every chunk.
    pub(super) fn check_invariants(&self, name: &str, endpoint: impl Fn(PeerId) -> Option<SocketAddr>) {
        let mut avail = vec![0u32; self.num_chunks as usize];
        let (mut complete, mut partial) = (0, 0);
        for (&p, &h) in &self.holders {
            let listen = endpoint(p);
            match h {
                Holding::Complete(i) => {
                    complete += 1;
                    let slot = self.complete[i];
                    assert_eq!((slot.peer, Some(slot.addr)), (p, listen), "{name} complete slot");
                    avail.iter_mut().for_each(|a| *a += 1);
                }
                Holding::Partial(i) => {
                    partial += 1;
                    let slot = self.partial[i];
                    assert_eq!((slot.peer, Some(slot.addr)), (p, listen), "{name} partial slot");
                    let Have::Partial(b) = self.have(h) else { unreachable!("a partial row") };
                    assert_eq!(b.as_bytes(), self.row(i), "{name}: a row is a valid bitmap");
                    assert!(b.count() > 0 && !b.is_full(), "{name}: a partial row is neither empty nor full");
                    assert_eq!(b.count(), self.counts[i], "{name}: a partial holder's count");
                    b.iter_ones().for_each(|c| avail[c as usize] += 1);
                }
                Holding::Empty => {}
            }
        }
        assert_eq!(self.rows.len(), self.partial.len() * self.row_len, "{name} rows");
        assert_eq!(self.counts.len(), self.partial.len(), "{name} counts");
        assert_eq!(avail, self.availability, "{name} availability");
        assert_eq!((complete, partial), (self.complete.len(), self.partial.len()), "{name} lists");
    }
}

#[cfg(test)]
mod tests;
