//! The registry: which files exist, which peers are online, and which chunks each peer holds.
//!
//! A cheap-to-clone handle around `Arc<RwLock<State>>` with synchronous methods, so no lock is
//! ever held across an `.await`. Every mutation is made on behalf of one session's [`PeerId`], and
//! no method takes another peer's id from the network: that is what makes impersonation impossible.
//!
//! Invariants (checked by [`Registry::check_invariants`], which the tests and the fuzz target call):
//! - a file is present iff at least one peer holds it (registered or chunk-registered);
//! - `peers[p].files` contains `f` iff `files[f].holders` contains `p`;
//! - `files[f].availability[i]` equals the number of holders that have chunk `i`;
//! - a partial holding is never full (it is promoted to `Complete`);
//! - `files[f].complete` lists exactly the holders whose holding is `Complete`, and
//!   `files[f].partial` exactly those with a partial holding of at least one chunk, with their
//!   bitmaps in the same order in `rows`; each holding knows its index. These lists make
//!   File Locations and File List cost O(reply), not O(holders): a popular file may have
//!   thousands of holders;
//! - `peers[p].meta_bytes` is the sum of [`session_cost`] over the files `p` holds, and the
//!   state's `meta_bytes` the sum of [`file_bytes`] over the files plus [`holding_bytes`] over
//!   every holding: the metadata budgets (`Limits::max_meta_bytes_per_session`, `_total`) are
//!   checked against these before anything is added.
//!
//! Addresses are stored canonical (`IpAddr::to_canonical`): a session from an IPv4-mapped IPv6
//! address (`::ffff:1.2.3.4`, what a dual-stack listener sees) is the IPv4 address it stands for,
//! in the same-IP check of Register and in File Locations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use proto::tracker::{FileSummary, Locations, RegisterFile, RejectReason, RequestError, SourceInfo};
use proto::{validate_name, Bitmap, FileMeta, Have};
use rand::seq::SliceRandom;
use tokio::sync::OnceCell;

use crate::config::Limits;

/// A session's identity inside the tracker. Assigned by the tracker, never sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

/// A map keyed by [`PeerId`]. Ids are assigned by the tracker, never chosen by a client, so a fast
/// unkeyed hash cannot be steered into collisions; the keyed default costs File Locations a
/// third of its time.
type PeerMap<V> = HashMap<PeerId, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a [`PeerId`].
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A holder in a file's `complete` or `partial` list, with where it serves, so File Locations
/// reads addresses from the list instead of looking each peer up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    peer: PeerId,
    addr: SocketAddr,
}

/// The shared registry handle.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<RwLock<State>>,
    limits: Arc<Limits>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<Arc<str>, FileEntry>,
    peers: PeerMap<PeerEntry>,
    next_id: u64,
    /// Metadata bytes held, by the estimate of [`file_bytes`] and [`holding_bytes`].
    meta_bytes: u64,
}

#[derive(Debug)]
struct FileEntry {
    meta: Arc<FileMeta>,
    /// The File Meta reply's whole frame, encoded on first request (by the server) and shared by
    /// every connection that sends it: a reply then costs neither an encode nor a copy.
    reply: Arc<OnceCell<Bytes>>,
    holders: PeerMap<Holding>,
    /// Holders with every chunk (see the module invariants).
    complete: Vec<Slot>,
    /// Holders with some chunks but not all.
    partial: Vec<Slot>,
    /// The bitmaps of the `partial` holders, one row of `row_len` bytes each in the same order:
    /// contiguous, so File Locations copies sampled rows from one array instead of chasing a
    /// heap allocation per holder.
    rows: Vec<u8>,
    row_len: usize,
    /// How many chunks each `partial` holder has (its row's set bits), so a Chunk Register knows
    /// at once whether the holding became complete.
    counts: Vec<u32>,
    availability: Vec<u32>,
}

/// One peer's holding of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Every chunk; the index in `complete`.
    Complete(usize),
    /// Some chunks; the index in `partial` and `rows`.
    Partial(usize),
    /// Registered, no chunk yet: not a source.
    Empty,
}

#[derive(Debug)]
struct PeerEntry {
    /// Address the session connects from; replaces an unspecified listen IP.
    observed: SocketAddr,
    /// Where the peer serves, once it has registered.
    listen: Option<SocketAddr>,
    files: HashSet<Arc<str>>,
    /// What its holdings cost, by [`session_cost`]: checked against the session's budget.
    meta_bytes: u64,
}

/// Counts for tests, logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Open sessions.
    pub sessions: usize,
    /// Distinct files.
    pub files: usize,
    /// (peer, file) registrations.
    pub holdings: usize,
}

impl FileEntry {
    fn new(meta: Arc<FileMeta>) -> Self {
        let n = meta.num_chunks() as usize;
        Self {
            meta,
            reply: Arc::default(),
            holders: PeerMap::default(),
            complete: Vec::new(),
            partial: Vec::new(),
            rows: Vec::new(),
            row_len: n.div_ceil(8),
            counts: Vec::new(),
            availability: vec![0; n],
        }
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
        let n = self.meta.num_chunks();
        match h {
            Holding::Complete(_) => Have::Complete,
            // Rows only ever hold valid bitmaps (no bit at or past the chunk count).
            Holding::Partial(slot) => {
                Have::Partial(Bitmap::from_parts(n, self.row(slot).to_vec()).unwrap_or_else(|_| Bitmap::new(n)))
            }
            Holding::Empty => Have::Partial(Bitmap::new(n)),
        }
    }

    /// Takes `peer` out of its list (and its row out of `rows`) by swap-remove, fixing the index
    /// of the holder moved into its place. Leaves its holding `Empty`.
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

    /// The address `peer` serves at changed: its slot follows.
    fn moved(&mut self, peer: PeerId, addr: SocketAddr) {
        let slot = match self.holders.get(&peer) {
            Some(Holding::Complete(i)) => self.complete.get_mut(*i),
            Some(Holding::Partial(i)) => self.partial.get_mut(*i),
            _ => None,
        };
        if let Some(s) = slot {
            s.addr = addr;
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

    fn add(&mut self, peer: PeerId, addr: SocketAddr, have: Have) {
        self.remove(peer);
        match have {
            Have::Partial(b) if !b.is_full() => {
                // The bitmap's length was checked against the chunk count on the way in.
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

    fn remove(&mut self, peer: PeerId) {
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

    /// Marks one chunk held; promotes a partial holding that became full.
    fn add_chunk(&mut self, peer: PeerId, addr: SocketAddr, chunk: u32) {
        let slot = match self.holders.get(&peer).copied().unwrap_or(Holding::Empty) {
            Holding::Complete(_) => return,
            Holding::Partial(slot) => slot,
            Holding::Empty => {
                self.place_partial(peer, addr, &vec![0; self.row_len]);
                self.partial.len() - 1
            }
        };
        let (byte, bit) = (slot * self.row_len + chunk as usize / 8, 1u8 << (chunk % 8));
        if self.rows[byte] & bit != 0 {
            return;
        }
        self.rows[byte] |= bit;
        self.availability[chunk as usize] += 1;
        self.counts[slot] += 1;
        if self.counts[slot] == self.meta.num_chunks() {
            self.unplace(peer);
            self.place_complete(peer, addr);
        }
    }

    /// Holders with at least one chunk.
    fn sources(&self) -> u32 {
        (self.complete.len() + self.partial.len()) as u32
    }
}

/// Up to `k` of the `n` indices of a list, turned into sources by `take` (which refuses the
/// caller): [`RUNS`] runs of consecutive indices starting at distinct random places. Each index
/// is as likely to be drawn as any other and the draw differs between calls, as with a uniform
/// sample, but memory is read in a few sequential runs instead of `k` random places: with
/// thousands of holders per file, cache misses are what File Locations costs. O(k).
fn sample<T>(n: usize, k: usize, rng: &mut impl rand::Rng, take: impl Fn(usize) -> Option<T>, out: &mut Vec<T>) {
    // One extra, in case the caller is drawn.
    let want = (k + 1).min(n);
    if want == 0 {
        return;
    }
    let before = out.len();
    if n <= 4 * want {
        // Few holders to draw from: a uniform sample costs as little.
        out.extend(floyd(n, want, rng).into_iter().filter_map(take));
    } else {
        // Runs of `len` start at distinct multiples of `len` (so they never overlap), all offset
        // by one random shift; the last run is shorter when `want` is not a multiple of `len`.
        let len = want.div_ceil(RUNS);
        let shift = rng.random_range(0..n);
        let mut left = want;
        for start in floyd(n / len, want.div_ceil(len), rng) {
            let run = len.min(left);
            left -= run;
            out.extend((0..run).filter_map(|i| take((start * len + i + shift) % n)));
        }
    }
    // The extra drawn in case of the caller: dropped at random, not the last, which would favour
    // some indices.
    while out.len() > before + k {
        let i = rng.random_range(before..out.len());
        out.swap_remove(i);
    }
}

/// `k` distinct indices below `n`, uniformly at random (Floyd's algorithm); O(k²), `k <= n`.
fn floyd(n: usize, k: usize, rng: &mut impl rand::Rng) -> Vec<usize> {
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    for j in n - k..n {
        let t = rng.random_range(0..=j);
        picked.push(if picked.contains(&t) { j } else { t });
    }
    picked
}

/// Runs a File Locations sample is drawn in (see [`sample`]).
const RUNS: usize = 8;

impl Registry {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { state: Arc::default(), limits: Arc::new(limits) }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    // A panic while holding the lock cannot leave the state half-updated in a way later readers
    // care about more than availability, so a poisoned lock is taken over rather than spreading
    // the panic to every session.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session for a connection from `observed`.
    pub fn open_session(&self, observed: SocketAddr) -> PeerId {
        let observed = canonical(observed);
        let mut st = self.write();
        st.next_id += 1;
        let id = PeerId(st.next_id);
        st.peers.insert(id, PeerEntry { observed, listen: None, files: HashSet::new(), meta_bytes: 0 });
        id
    }

    /// Closes a session: the same as Leave, and the id is forgotten.
    pub fn close_session(&self, peer: PeerId) {
        let mut st = self.write();
        st.remove_holdings(peer);
        st.peers.remove(&peer);
    }

    /// Register: sets the peer's endpoint and adds its files. One result per file. The same as
    /// [`Registry::check_register`] then [`Registry::apply_register`].
    pub fn register(
        &self,
        peer: PeerId,
        listen: SocketAddr,
        files: Vec<RegisterFile>,
    ) -> Result<Vec<Result<(), RejectReason>>, RequestError> {
        let checked = self.check_register(listen, files)?;
        self.apply_register(peer, checked)
    }

    /// The first half of a Register: the checks of the request and of each file that need no
    /// write lock (file count, port, names, metadata, bitmaps). Validating metadata merges up to
    /// 2^18 chunk hashes per file, so the server runs this half on the blocking pool; it is
    /// skipped for metadata identical to a file already registered (checked when it was first
    /// registered), so a swarm re-registering a popular file costs a comparison.
    pub fn check_register(
        &self,
        listen: SocketAddr,
        files: Vec<RegisterFile>,
    ) -> Result<CheckedRegister, RequestError> {
        if files.len() > self.limits.max_files_per_register {
            return Err(RequestError::TooManyFiles { got: files.len(), max: self.limits.max_files_per_register });
        }
        let listen = canonical(listen);
        if listen.port() == 0 {
            return Err(RequestError::BadEndpoint(listen));
        }
        let known: Vec<bool> = {
            let st = self.read();
            files.iter().map(|f| st.files.get(f.meta.name.as_str()).is_some_and(|e| *e.meta == f.meta)).collect()
        };
        let files = files.into_iter().zip(known).map(|(f, known)| check_file(f, !known)).collect();
        Ok(CheckedRegister { listen, files })
    }

    /// The second half of a Register, under the write lock: sets the endpoint and adds the files
    /// that passed [`Registry::check_register`], subject to conflicts and quotas. Fast: no
    /// hashing, no copy of metadata.
    pub fn apply_register(
        &self,
        peer: PeerId,
        checked: CheckedRegister,
    ) -> Result<Vec<Result<(), RejectReason>>, RequestError> {
        let CheckedRegister { listen, files: checked } = checked;
        let mut guard = self.write();
        let State { files: all, peers, meta_bytes, .. } = &mut *guard;
        let Some(entry) = peers.get_mut(&peer) else { return Err(RequestError::NotRegistered) };
        let addr =
            if listen.ip().is_unspecified() { SocketAddr::new(entry.observed.ip(), listen.port()) } else { listen };
        if !self.limits.allow_foreign_endpoints && addr.ip() != entry.observed.ip() {
            return Err(RequestError::BadEndpoint(listen));
        }
        if entry.listen.replace(addr).is_some_and(|old| old != addr) {
            // The peer now serves elsewhere: what it already holds is found at the new address.
            for name in &entry.files {
                if let Some(file) = all.get_mut(name) {
                    file.moved(peer, addr);
                }
            }
        }

        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(checked.len());
        for file in checked {
            let result = file.and_then(|f| {
                if !seen.insert(f.file.meta.name.clone()) {
                    return Err(RejectReason::Duplicate);
                }
                add_file(all, meta_bytes, entry, peer, addr, f, &self.limits)
            });
            results.push(result);
        }
        Ok(results)
    }

    /// Chunk Register: the session's own peer now holds `chunk` of `name`.
    pub fn chunk_register(&self, peer: PeerId, name: &str, chunk: u32) -> Result<(), RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let mut guard = self.write();
        let st = &mut *guard;
        let Some((entry, addr)) = st.peers.get_mut(&peer).and_then(|p| p.listen.map(|a| (p, a))) else {
            return Err(RequestError::NotRegistered);
        };
        let Some((key, file)) = st.files.get_key_value_mut(name) else {
            return Err(RequestError::UnknownFile(name.to_owned()));
        };
        let num_chunks = file.meta.num_chunks();
        if chunk >= num_chunks {
            return Err(RequestError::ChunkOutOfRange { chunk, num_chunks });
        }
        if !entry.files.contains(name) {
            if entry.files.len() >= self.limits.max_files_per_session {
                return Err(RequestError::Quota(RejectReason::SessionQuota { max: self.limits.max_files_per_session }));
            }
            charge(&mut st.meta_bytes, entry, &file.meta, false, &self.limits).map_err(RequestError::Quota)?;
            entry.files.insert(key.clone());
        }
        file.add_chunk(peer, addr, chunk);
        Ok(())
    }

    /// Leave: removes every registration of the session's peer. The session stays open.
    pub fn leave(&self, peer: PeerId) {
        self.write().remove_holdings(peer);
    }

    /// One page of the file list, sorted by name, starting after `after`.
    /// A page holds at most `list_page` entries and about `list_page_bytes` bytes (at least one
    /// entry, so paging always advances).
    pub fn list(&self, after: Option<&str>) -> (Vec<FileSummary>, bool) {
        let st = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut it = st.files.range::<str, _>((start, Bound::Unbounded)).peekable();
        let mut bytes = 0;
        let mut page = Vec::new();
        while let Some((name, f)) = it.next_if(|(name, _)| {
            page.is_empty()
                || (page.len() < self.limits.list_page && bytes + summary_size(name) <= self.limits.list_page_bytes)
        }) {
            bytes += summary_size(name);
            page.push(FileSummary {
                name: name.to_string(),
                length: f.meta.length,
                root: f.meta.root,
                chunk_size: f.meta.chunk_size,
                sources: f.sources(),
                complete_sources: f.complete.len() as u32,
            });
        }
        let more = it.peek().is_some();
        (page, more)
    }

    /// A file's metadata.
    pub fn meta(&self, name: &str) -> Result<Arc<FileMeta>, RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        self.read().files.get(name).map(|f| f.meta.clone()).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))
    }

    /// A file's metadata with the cell that holds its File Meta reply frame once encoded (see
    /// the server): the frame is encoded at most once per file, outside the registry's lock.
    pub fn meta_reply(&self, name: &str) -> Result<(Arc<FileMeta>, Arc<OnceCell<Bytes>>), RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let st = self.read();
        let file = st.files.get(name).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))?;
        Ok((file.meta.clone(), file.reply.clone()))
    }

    /// File Locations for `caller`: up to the cap of sources other than the caller, chosen at
    /// random with complete and partial sources mixed, so load spreads across the swarm. O(cap).
    pub fn locations(&self, caller: PeerId, name: &str) -> Result<Locations, RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let st = self.read();
        let file = st.files.get(name).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))?;
        let n = file.meta.num_chunks();
        // The caller is not its own source: leave it out of the counts and the draw.
        let (caller_complete, caller_partial) = match file.holders.get(&caller) {
            Some(Holding::Complete(_)) => (1, 0),
            Some(Holding::Partial(_)) => (0, 1),
            _ => (0, 0),
        };
        let complete_n = file.complete.len() - caller_complete;
        let partial_n = file.partial.len() - caller_partial;
        let cap = self.limits.max_locations;
        // Half from each group when both have enough, the rest from whichever has more.
        let from_complete = complete_n.min(cap.div_ceil(2).max(cap.saturating_sub(partial_n)));
        let from_partial = partial_n.min(cap - from_complete);
        let mut rng = rand::rng();
        let mut sources: Vec<SourceInfo> = Vec::with_capacity(from_complete + from_partial);
        let take_complete = |i: usize| {
            let s = file.complete[i];
            (s.peer != caller).then_some(SourceInfo { addr: s.addr, have: Have::Complete })
        };
        sample(file.complete.len(), from_complete, &mut rng, take_complete, &mut sources);
        let take_partial = |i: usize| {
            let s = file.partial[i];
            (s.peer != caller).then(|| SourceInfo { addr: s.addr, have: file.have(Holding::Partial(i)) })
        };
        sample(file.partial.len(), from_partial, &mut rng, take_partial, &mut sources);
        sources.shuffle(&mut rng);
        Ok(Locations {
            root: file.meta.root,
            num_chunks: n,
            total_sources: (complete_n + partial_n) as u32,
            sources,
            availability: file.availability.clone(),
        })
    }

    /// Metadata bytes the registry holds, by the estimate its budgets are checked against (see
    /// [`file_bytes`] and [`holding_bytes`]).
    pub fn meta_bytes(&self) -> u64 {
        self.read().meta_bytes
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        let st = self.read();
        Stats {
            sessions: st.peers.len(),
            files: st.files.len(),
            holdings: st.peers.values().map(|p| p.files.len()).sum(),
        }
    }

    /// Checks every invariant of the module docs, panicking on the first that is broken. For tests
    /// and fuzzing: it walks the whole registry.
    pub fn check_invariants(&self) {
        self.read().check_invariants();
    }
}

/// An upper bound of a [`FileSummary`]'s encoded size: the name, a hash, and six varints.
fn summary_size(name: &str) -> usize {
    name.len() + 32 + 6 * 10
}

/// The address canonical: an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as the IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Bytes of overhead per file in the registry's estimate: the entry, its maps and lists, the
/// metadata's fixed fields.
const FILE_OVERHEAD: u64 = 256;

/// Bytes of overhead per holding: its places in the file's holder map and lists and in the
/// session's set of names.
const HOLDING_OVERHEAD: u64 = 64;

/// What the registry holds for one file, in bytes, about: its chunk hashes (32 bytes a chunk),
/// its File Meta reply once encoded (32 more), its availability counters (4), its name three
/// times (the metadata's, the map key's, the reply's) and the entry. The reply is encoded only
/// if someone asks for it, but counted from the start: the budget is what the file may cost.
pub fn file_bytes(meta: &FileMeta) -> u64 {
    FILE_OVERHEAD + 3 * meta.name.len() as u64 + 68 * meta.chunk_hashes.len() as u64
}

/// What one holder of a file costs the registry, in bytes: a bitmap row (a bit per chunk; counted
/// for every holding, whatever its state) and its places in the maps.
pub fn holding_bytes(meta: &FileMeta) -> u64 {
    HOLDING_OVERHEAD + (meta.chunk_hashes.len() as u64).div_ceil(8)
}

/// What one holding costs the session that holds it: the file as if it held it alone, so a
/// session's charge depends only on what it registered, never on what others do.
pub fn session_cost(meta: &FileMeta) -> u64 {
    file_bytes(meta) + holding_bytes(meta)
}

/// Charges a new holding of `meta` to the session `entry` and to the registry's `total`, or
/// refuses it if either would exceed its budget. `new_file`: the file is not in the registry yet.
fn charge(
    total: &mut u64,
    entry: &mut PeerEntry,
    meta: &FileMeta,
    new_file: bool,
    limits: &Limits,
) -> Result<(), RejectReason> {
    let session = entry.meta_bytes + session_cost(meta);
    if session > limits.max_meta_bytes_per_session {
        return Err(RejectReason::SessionMetaQuota { max: limits.max_meta_bytes_per_session });
    }
    let global = *total + holding_bytes(meta) + if new_file { file_bytes(meta) } else { 0 };
    if global > limits.max_meta_bytes_total {
        return Err(RejectReason::GlobalMetaQuota { max: limits.max_meta_bytes_total });
    }
    entry.meta_bytes = session;
    *total = global;
    Ok(())
}

/// A Register request after [`Registry::check_register`]: the endpoint (canonical) and each file
/// checked, ready for [`Registry::apply_register`].
#[derive(Debug)]
pub struct CheckedRegister {
    listen: SocketAddr,
    files: Vec<Result<Checked, RejectReason>>,
}

/// A Register file that passed the checks done outside the lock.
#[derive(Debug)]
struct Checked {
    file: RegisterFile,
    /// Whether `meta.validate()` ran; if not, the metadata was identical to a registered file's.
    validated: bool,
}

fn check_file(f: RegisterFile, validate: bool) -> Result<Checked, RejectReason> {
    validate_name(&f.meta.name).map_err(RejectReason::InvalidName)?;
    if validate {
        f.meta.validate().map_err(RejectReason::InconsistentMeta)?;
    }
    if let Have::Partial(b) = &f.have {
        if b.len() != f.meta.num_chunks() {
            return Err(RejectReason::BitmapLength { want: f.meta.num_chunks(), got: b.len() });
        }
    }
    Ok(Checked { file: f, validated: validate })
}

/// Adds one checked file of a Register to the registry, held by `peer` (whose entry is `entry`)
/// serving at `addr`; `total` is the registry's metadata bytes.
fn add_file(
    files: &mut BTreeMap<Arc<str>, FileEntry>,
    total: &mut u64,
    entry: &mut PeerEntry,
    peer: PeerId,
    addr: SocketAddr,
    checked: Checked,
    limits: &Limits,
) -> Result<(), RejectReason> {
    let Checked { file: RegisterFile { meta, have }, validated } = checked;
    let existing = files.get(meta.name.as_str());
    let identical = existing.is_some_and(|e| e.meta.same_content(&meta));
    if !identical && !validated {
        // The identical file it was compared with has gone meanwhile: check it now (rare).
        meta.validate().map_err(RejectReason::InconsistentMeta)?;
    }
    match existing {
        Some(existing) if !identical => return Err(RejectReason::ContentConflict { existing: existing.meta.root }),
        Some(_) => {}
        None if files.len() >= limits.max_files_total => {
            return Err(RejectReason::GlobalQuota { max: limits.max_files_total })
        }
        None => {}
    }
    let held = entry.files.contains(meta.name.as_str());
    if !held && entry.files.len() >= limits.max_files_per_session {
        return Err(RejectReason::SessionQuota { max: limits.max_files_per_session });
    }
    if !held {
        charge(total, entry, &meta, existing.is_none(), limits)?;
    }
    let key: Arc<str> = match files.get_key_value(meta.name.as_str()) {
        Some((k, _)) => k.clone(),
        None => {
            let key: Arc<str> = Arc::from(meta.name.as_str());
            // The request's own copy becomes the registry's: metadata is never copied.
            files.insert(key.clone(), FileEntry::new(Arc::new(meta)));
            key
        }
    };
    entry.files.insert(key.clone());
    if let Some(file) = files.get_mut(&key) {
        file.add(peer, addr, have);
    }
    Ok(())
}

impl State {
    fn remove_holdings(&mut self, peer: PeerId) {
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        entry.meta_bytes = 0;
        for name in entry.files.drain() {
            if let Some(file) = self.files.get_mut(&name) {
                file.remove(peer);
                self.meta_bytes -= holding_bytes(&file.meta);
                if file.holders.is_empty() {
                    self.meta_bytes -= file_bytes(&file.meta);
                    self.files.remove(&name);
                }
            }
        }
    }

    fn check_invariants(&self) {
        for (name, f) in &self.files {
            assert!(!f.holders.is_empty(), "{name} has no holders");
            let n = f.meta.num_chunks();
            let mut avail = vec![0u32; n as usize];
            let (mut complete, mut partial) = (0, 0);
            for (p, h) in &f.holders {
                assert!(self.peers[p].files.contains(name));
                assert!(self.peers[p].listen.is_some(), "a holder has an endpoint");
                let listen = self.peers[p].listen;
                match *h {
                    Holding::Complete(i) => {
                        complete += 1;
                        let slot = f.complete[i];
                        assert_eq!((slot.peer, Some(slot.addr)), (*p, listen), "{name} complete slot");
                        avail.iter_mut().for_each(|a| *a += 1);
                    }
                    Holding::Partial(i) => {
                        partial += 1;
                        let slot = f.partial[i];
                        assert_eq!((slot.peer, Some(slot.addr)), (*p, listen), "{name} partial slot");
                        let Have::Partial(b) = f.have(*h) else { unreachable!("a partial row") };
                        assert_eq!(b.as_bytes(), f.row(i), "{name}: a row is a valid bitmap");
                        assert!(b.count() > 0 && !b.is_full(), "{name}: a partial row is neither empty nor full");
                        assert_eq!(b.count(), f.counts[i], "{name}: a partial holder's count");
                        b.iter_ones().for_each(|c| avail[c as usize] += 1);
                    }
                    Holding::Empty => {}
                }
            }
            assert_eq!(f.rows.len(), f.partial.len() * f.row_len, "{name} rows");
            assert_eq!(f.counts.len(), f.partial.len(), "{name} counts");
            assert_eq!(avail, f.availability, "{name} availability");
            assert_eq!((complete, partial), (f.complete.len(), f.partial.len()), "{name} lists");
        }
        for (p, e) in &self.peers {
            for name in &e.files {
                assert!(self.files[name].holders.contains_key(p));
            }
            let cost: u64 = e.files.iter().map(|name| session_cost(&self.files[name].meta)).sum();
            assert_eq!(e.meta_bytes, cost, "a session's metadata bytes");
        }
        let total: u64 =
            self.files.values().map(|f| file_bytes(&f.meta) + f.holders.len() as u64 * holding_bytes(&f.meta)).sum();
        assert_eq!(self.meta_bytes, total, "the registry's metadata bytes");
    }
}

trait GetKeyValueMut<V> {
    fn get_key_value_mut(&mut self, k: &str) -> Option<(&Arc<str>, &mut V)>;
}

impl<V> GetKeyValueMut<V> for BTreeMap<Arc<str>, V> {
    fn get_key_value_mut(&mut self, k: &str) -> Option<(&Arc<str>, &mut V)> {
        self.range_mut::<str, _>((Bound::Included(k), Bound::Included(k))).next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::limits::MIN_CHUNK_SIZE;

    fn meta(name: &str, seed: u8, chunks: usize) -> FileMeta {
        let data = vec![seed; chunks * MIN_CHUNK_SIZE as usize - 3];
        FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &data)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn reg(r: &Registry, p: PeerId, port: u16, files: Vec<(FileMeta, Have)>) -> Vec<Result<(), RejectReason>> {
        let files = files.into_iter().map(|(meta, have)| RegisterFile { meta, have }).collect();
        let out = r.register(p, addr(port), files).unwrap();
        r.check_invariants();
        out
    }

    #[test]
    fn register_adds_sources_and_rejects_conflicts() {
        let r = Registry::new(Limits::default());
        let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
        assert_eq!(reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete)]), vec![Ok(())]);
        assert_eq!(reg(&r, b, 20, vec![(meta("f", 1, 3), Have::Complete)]), vec![Ok(())]);
        let res = reg(&r, b, 20, vec![(meta("f", 2, 3), Have::Complete), (meta("g", 2, 1), Have::Complete)]);
        assert_eq!(res, vec![Err(RejectReason::ContentConflict { existing: meta("f", 1, 3).root }), Ok(())]);
        let (list, more) = r.list(None);
        assert!(!more);
        assert_eq!(list.iter().map(|f| (f.name.as_str(), f.sources)).collect::<Vec<_>>(), vec![("f", 2), ("g", 1)]);
        let loc = r.locations(a, "f").unwrap();
        assert_eq!(loc.sources.len(), 1, "caller excluded");
        assert_eq!(loc.availability, vec![2, 2, 2]);
    }

    #[test]
    fn register_rejections_have_reasons() {
        let r = Registry::new(Limits { max_files_per_session: 2, ..Limits::default() });
        let p = r.open_session(addr(1));
        let mut bad_root = meta("x", 1, 2);
        bad_root.root = meta("x", 2, 2).root;
        let mut bad_name = meta("y", 1, 1);
        bad_name.name = "../y".into();
        let res = reg(
            &r,
            p,
            10,
            vec![
                (bad_root, Have::Complete),
                (bad_name, Have::Complete),
                (meta("z", 1, 2), Have::Partial(Bitmap::new(5))),
                (meta("a", 1, 1), Have::Complete),
                (meta("a", 1, 1), Have::Complete),
                (meta("b", 1, 1), Have::Complete),
                (meta("c", 1, 1), Have::Complete),
            ],
        );
        assert_eq!(res[0], Err(RejectReason::InconsistentMeta(proto::MetaError::RootMismatch)));
        assert!(matches!(res[1], Err(RejectReason::InvalidName(_))));
        assert_eq!(res[2], Err(RejectReason::BitmapLength { want: 2, got: 5 }));
        assert_eq!(res[3], Ok(()));
        assert_eq!(res[4], Err(RejectReason::Duplicate));
        assert_eq!(res[5], Ok(()));
        assert_eq!(res[6], Err(RejectReason::SessionQuota { max: 2 }));
        assert_eq!(r.register(p, addr(0), vec![]), Err(RequestError::BadEndpoint(addr(0))));
        let too_many = vec![RegisterFile { meta: meta("q", 1, 1), have: Have::Complete }; 1025];
        assert_eq!(r.register(p, addr(5), too_many), Err(RequestError::TooManyFiles { got: 1025, max: 1024 }));
    }

    #[test]
    fn global_quota() {
        let r = Registry::new(Limits { max_files_total: 1, ..Limits::default() });
        let p = r.open_session(addr(1));
        let q = r.open_session(addr(2));
        assert_eq!(reg(&r, p, 1, vec![(meta("a", 1, 1), Have::Complete)]), vec![Ok(())]);
        assert_eq!(
            reg(&r, q, 1, vec![(meta("b", 1, 1), Have::Complete)]),
            vec![Err(RejectReason::GlobalQuota { max: 1 })]
        );
        // The same file from another peer is a source, not a new file.
        assert_eq!(reg(&r, q, 1, vec![(meta("a", 1, 1), Have::Complete)]), vec![Ok(())]);
    }

    #[test]
    fn chunk_register_rules() {
        let r = Registry::new(Limits::default());
        let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
        assert_eq!(r.chunk_register(b, "f", 0), Err(RequestError::NotRegistered));
        reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete)]);
        reg(&r, b, 20, vec![]);
        assert_eq!(r.chunk_register(b, "nope", 0), Err(RequestError::UnknownFile("nope".into())));
        assert_eq!(r.chunk_register(b, "f", 3), Err(RequestError::ChunkOutOfRange { chunk: 3, num_chunks: 3 }));
        assert_eq!(
            r.chunk_register(b, "f", u32::MAX),
            Err(RequestError::ChunkOutOfRange { chunk: u32::MAX, num_chunks: 3 })
        );
        assert!(matches!(r.chunk_register(b, "/etc/passwd", 0), Err(RequestError::InvalidName(_))));
        r.chunk_register(b, "f", 1).unwrap();
        r.chunk_register(b, "f", 1).unwrap();
        r.check_invariants();
        assert_eq!(r.locations(a, "f").unwrap().availability, vec![1, 2, 1]);
        r.chunk_register(b, "f", 0).unwrap();
        r.chunk_register(b, "f", 2).unwrap();
        r.check_invariants();
        assert_eq!(r.list(None).0[0].complete_sources, 2, "a full partial is promoted");
    }

    #[test]
    fn leave_and_close_remove_everything_and_empty_files_vanish() {
        let r = Registry::new(Limits::default());
        let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
        reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete), (meta("g", 1, 1), Have::Complete)]);
        reg(&r, b, 20, vec![]);
        r.chunk_register(b, "f", 0).unwrap();
        r.leave(a);
        r.check_invariants();
        assert_eq!(r.list(None).0.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), vec!["f"]);
        assert_eq!(r.locations(b, "f").unwrap().total_sources, 0);
        r.close_session(b);
        r.check_invariants();
        assert_eq!(r.stats(), Stats { sessions: 1, files: 0, holdings: 0 });
    }

    #[test]
    fn list_pages() {
        let r = Registry::new(Limits { list_page: 2, ..Limits::default() });
        let p = r.open_session(addr(1));
        reg(&r, p, 1, ["a", "b", "c"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
        let (page, more) = r.list(None);
        assert_eq!((page.len(), more), (2, true));
        let (page, more) = r.list(Some("b"));
        assert_eq!((page[0].name.as_str(), more), ("c", false));

        // Pages also stop at a byte budget, but always hold at least one entry.
        let r = Registry::new(Limits { list_page_bytes: 2 * summary_size("a"), ..Limits::default() });
        let p = r.open_session(addr(1));
        reg(&r, p, 1, ["a", "b", "c"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
        assert_eq!(r.list(None).0.len(), 2);
        let r = Registry::new(Limits { list_page_bytes: 1, ..Limits::default() });
        let p = r.open_session(addr(1));
        reg(&r, p, 1, ["a", "b"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
        assert_eq!(r.list(None), (vec![r.list(None).0[0].clone()], true));
    }

    #[test]
    fn locations_capped_mixed_and_varied() {
        let r = Registry::new(Limits { max_locations: 8, ..Limits::default() });
        let caller = r.open_session(addr(1));
        let m = meta("f", 1, 4);
        let mut ports = std::collections::HashMap::new();
        for i in 0..40u16 {
            let p = r.open_session(addr(100 + i));
            let have = if i % 2 == 0 { Have::Complete } else { Have::Partial(Bitmap::full(4)) };
            // Odd peers register only some chunks so they stay partial.
            if i % 2 == 0 {
                reg(&r, p, 1000 + i, vec![(m.clone(), have)]);
            } else {
                reg(&r, p, 1000 + i, vec![]);
                r.chunk_register(p, "f", u32::from(i % 4)).unwrap();
            }
            ports.insert(1000 + i, i % 2 == 0);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let loc = r.locations(caller, "f").unwrap();
            assert_eq!(loc.sources.len(), 8);
            assert_eq!(loc.total_sources, 40);
            let complete = loc.sources.iter().filter(|s| s.have == Have::Complete).count();
            assert_eq!(complete, 4, "half complete, half partial");
            seen.extend(loc.sources.iter().map(|s| s.addr.port()));
        }
        assert!(seen.len() > 20, "selection varies between calls: saw {}", seen.len());
    }

    #[test]
    fn endpoints_must_be_on_the_sessions_own_ip() {
        let r = Registry::new(Limits::default());
        let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
        let elsewhere = SocketAddr::from(([10, 9, 9, 9], 7000));
        assert_eq!(r.register(a, elsewhere, vec![]), Err(RequestError::BadEndpoint(elsewhere)));
        assert!(r.register(a, SocketAddr::from(([10, 1, 2, 3], 7000)), vec![]).is_ok());
        let r = Registry::new(Limits { allow_foreign_endpoints: true, ..Limits::default() });
        let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
        assert!(r.register(a, elsewhere, vec![]).is_ok());
    }

    /// With many holders (the sampling by runs), a reply still never lists the caller, never lists
    /// a holder twice, and is full.
    #[test]
    fn many_holders_sampled_without_the_caller_or_repeats() {
        let r = Registry::new(Limits::default());
        let m = meta("f", 1, 8);
        let mut peers = Vec::new();
        for i in 0..600u16 {
            let p = r.open_session(addr(2000 + i));
            let have = if i % 3 == 0 {
                Have::Complete
            } else {
                Have::Partial(Bitmap::from_parts(8, vec![1 << (i % 7)]).unwrap())
            };
            reg(&r, p, 2000 + i, vec![(m.clone(), have)]);
            peers.push((p, 2000 + i));
        }
        for (p, port) in peers.iter().step_by(37) {
            let loc = r.locations(*p, "f").unwrap();
            assert_eq!((loc.sources.len(), loc.total_sources), (64, 599));
            let mut ports: Vec<u16> = loc.sources.iter().map(|s| s.addr.port()).collect();
            assert!(!ports.contains(port), "caller listed");
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 64, "a holder listed twice");
        }
    }

    /// Draws are the right size, never repeat an index, never return what `take` refuses, and
    /// over many calls reach every index about equally often.
    #[test]
    fn sample_draws_distinct_indices_covering_the_list() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (n, k) in [(1, 1), (5, 8), (10, 3), (64, 64), (65, 64), (100, 64), (259, 64), (1000, 64), (10_000, 64)] {
            let mut hits = vec![0u32; n];
            let rounds = 400;
            for _ in 0..rounds {
                let mut out = Vec::new();
                sample(n, k, &mut rng, |i| (i != 0).then_some(i), &mut out);
                assert_eq!(out.len(), k.min(n - 1), "n {n} k {k}");
                let mut sorted = out.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), out.len(), "n {n} k {k}: repeated index");
                assert!(out.iter().all(|&i| i != 0 && i < n));
                out.iter().for_each(|&i| hits[i] += 1);
            }
            if (2..=1000).contains(&n) {
                // Expected hits per index: rounds * k / n; none starved, none favoured 3x.
                let expect = f64::from(rounds) * k.min(n - 1) as f64 / (n - 1).max(1) as f64;
                let (lo, hi) =
                    (hits[1..].iter().min().copied().unwrap_or(0), hits[1..].iter().max().copied().unwrap_or(0));
                assert!(
                    f64::from(lo) > expect / 3.0 && f64::from(hi) < expect * 3.0,
                    "n {n} k {k}: hits {lo}..{hi}, expected {expect}"
                );
            }
        }
    }

    #[test]
    fn unspecified_listen_ip_is_replaced_by_observed() {
        let r = Registry::new(Limits::default());
        let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
        let b = r.open_session(addr(2));
        r.register(
            a,
            SocketAddr::from(([0, 0, 0, 0], 7000)),
            vec![RegisterFile { meta: meta("f", 1, 1), have: Have::Complete }],
        )
        .unwrap();
        assert_eq!(r.locations(b, "f").unwrap().sources[0].addr, SocketAddr::from(([10, 1, 2, 3], 7000)));
    }

    /// Each session's metadata bytes are budgeted, and so are the registry's: a file past either
    /// budget is refused with its typed error, in Register and in Chunk Register, and leaving gives
    /// the bytes back.
    #[test]
    fn metadata_budgets_in_bytes() {
        let (big, small) = (meta("big", 1, 64), meta("small", 1, 1));
        let (big_cost, small_cost) = (session_cost(&big), session_cost(&small));
        assert_eq!(big_cost, 256 + 3 * 3 + 68 * 64 + 64 + 8);
        let limits = Limits {
            max_meta_bytes_per_session: big_cost + small_cost,
            max_meta_bytes_total: big_cost + small_cost + holding_bytes(&big),
            ..Limits::default()
        };
        let r = Registry::new(limits.clone());
        let (a, b, c) = (r.open_session(addr(1)), r.open_session(addr(2)), r.open_session(addr(3)));
        assert_eq!(
            reg(&r, a, 10, vec![(big.clone(), Have::Complete), (small.clone(), Have::Complete)]),
            [Ok(()), Ok(())]
        );
        assert_eq!(r.meta_bytes(), big_cost + small_cost);
        // a is at its budget: one more chunk of a small file is refused.
        let per_session = RejectReason::SessionMetaQuota { max: limits.max_meta_bytes_per_session };
        assert_eq!(reg(&r, a, 10, vec![(meta("x", 1, 1), Have::Complete)]), [Err(per_session.clone())]);
        // Re-registering what it holds costs nothing more.
        assert_eq!(reg(&r, a, 10, vec![(big.clone(), Have::Partial(Bitmap::new(64)))]), [Ok(())]);
        // b may add a holding of big (a row more for the registry), not then a new file.
        let total = RejectReason::GlobalMetaQuota { max: limits.max_meta_bytes_total };
        assert_eq!(reg(&r, b, 20, vec![(big.clone(), Have::Complete)]), [Ok(())]);
        assert_eq!(reg(&r, c, 30, vec![(meta("y", 2, 1), Have::Complete)]), [Err(total.clone())]);
        // Chunk Register of a file not held yet is a new holding, under the same budgets.
        assert_eq!(r.chunk_register(c, "small", 0), Err(RequestError::Quota(total)));
        r.leave(b);
        r.chunk_register(c, "small", 0).unwrap();
        r.check_invariants();
        assert_eq!(r.meta_bytes(), big_cost + small_cost + holding_bytes(&small));
        let r2 = Registry::new(Limits { max_meta_bytes_per_session: big_cost - 1, ..Limits::default() });
        let d = r2.open_session(addr(4));
        reg(&r2, d, 40, vec![]);
        assert_eq!(
            reg(&r2, d, 40, vec![(big.clone(), Have::Complete)]),
            [Err(RejectReason::SessionMetaQuota { max: big_cost - 1 })]
        );
        assert_eq!(r2.meta_bytes(), 0);
        // Everything given back when the sessions end.
        for p in [a, c] {
            r.close_session(p);
        }
        r.check_invariants();
        assert_eq!(r.meta_bytes(), 0);
    }

    /// An IPv4-mapped IPv6 address (what a dual-stack listener sees of an IPv4 client) is the
    /// IPv4 address: for the same-IP check, for an unspecified listen IP, and in File Locations.
    #[test]
    fn ipv4_mapped_addresses_are_canonical() {
        let mapped = |port| SocketAddr::new("::ffff:10.1.2.3".parse().unwrap(), port);
        let plain = |port| SocketAddr::from(([10, 1, 2, 3], port));
        let r = Registry::new(Limits::default());
        let caller = r.open_session(addr(1));
        for (observed, listen) in
            [(mapped(5000), mapped(7000)), (plain(5001), mapped(7001)), (mapped(5002), plain(7002))]
        {
            let p = r.open_session(observed);
            let files = vec![RegisterFile { meta: meta("f", 1, 1), have: Have::Complete }];
            assert_eq!(r.register(p, listen, files), Ok(vec![Ok(())]), "{observed} {listen}");
        }
        let p = r.open_session(mapped(5003));
        r.register(p, SocketAddr::new("::".parse().unwrap(), 7003), vec![]).unwrap();
        r.chunk_register(p, "f", 0).unwrap();
        let mut got: Vec<SocketAddr> = r.locations(caller, "f").unwrap().sources.iter().map(|s| s.addr).collect();
        got.sort();
        assert_eq!(got, [plain(7000), plain(7001), plain(7002), plain(7003)]);
        // A mapped address of another host is still another host.
        let other = SocketAddr::new("::ffff:10.9.9.9".parse().unwrap(), 7000);
        assert_eq!(
            r.register(p, other, vec![]),
            Err(RequestError::BadEndpoint(SocketAddr::from(([10, 9, 9, 9], 7000))))
        );
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Open,
        Close(usize),
        Register(usize, bool, Vec<(usize, usize, Option<u8>)>),
        ChunkRegister(usize, usize, u32),
        Leave(usize),
        Locations(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Files: index 0..3, content variant 0..2; a bitmap byte (None: complete).
        let file = (0..3usize, 0..2usize, proptest::option::of(any::<u8>()));
        prop_oneof![
            1 => Just(Op::Open),
            1 => (0..6usize).prop_map(Op::Close),
            6 => (0..6usize, any::<bool>(), proptest::collection::vec(file, 0..4))
                .prop_map(|(p, alt, f)| Op::Register(p, alt, f)),
            6 => (0..6usize, 0..3usize, 0..6u32).prop_map(|(p, f, c)| Op::ChunkRegister(p, f, c)),
            1 => (0..6usize).prop_map(Op::Leave),
            2 => (0..6usize, 0..3usize).prop_map(|(p, f)| Op::Locations(p, f)),
        ]
    }

    proptest! {
        /// Arbitrary sequences of operations from several sessions keep every invariant, and
        /// File Locations never lists the caller nor more than the cap.
        #[test]
        fn operation_sequences_keep_invariants(ops in proptest::collection::vec(op(), 1..60)) {
            // Byte budgets that bind too: two of the larger files exceed a session's, about five
            // holdings the registry's.
            let r = Registry::new(Limits {
                max_locations: 2,
                max_files_per_session: 2,
                max_meta_bytes_per_session: 800,
                max_meta_bytes_total: 2000,
                ..Limits::default()
            });
            // File i has i+1 chunks; variant v changes its content.
            let metas: Vec<Vec<FileMeta>> =
                (0..3).map(|i| (0..2).map(|v| meta(&format!("f{i}"), v as u8 + 1, i + 1)).collect()).collect();
            // Each session with the port it registers, unique for the whole run.
            let mut peers: Vec<(PeerId, u16)> = Vec::new();
            let mut next_port = 1000;
            for op in std::iter::repeat_n(Op::Open, 4).chain(ops) {
                match op {
                    Op::Open => {
                        next_port += 1;
                        peers.push((r.open_session(addr(next_port)), next_port));
                    }
                    Op::Close(i) if i < peers.len() => r.close_session(peers.remove(i).0),
                    Op::Register(i, alt, files) if i < peers.len() => {
                        let files = files
                            .into_iter()
                            .map(|(f, v, bits)| {
                                let meta = metas[f][v].clone();
                                let n = meta.num_chunks();
                                let have = match bits {
                                    None => Have::Complete,
                                    Some(b) => {
                                        let mut bm = Bitmap::new(n);
                                        (0..n).filter(|c| b & (1 << c) != 0).for_each(|c| { bm.set(c); });
                                        Have::Partial(bm)
                                    }
                                };
                                RegisterFile { meta, have }
                            })
                            .collect();
                        // Sometimes at another port: the peer moved, its holdings follow.
                        let (peer, port) = peers[i];
                        r.register(peer, addr(port + u16::from(alt) * 5000), files).unwrap();
                    }
                    Op::ChunkRegister(i, f, c) if i < peers.len() => {
                        let _ = r.chunk_register(peers[i].0, &format!("f{f}"), c);
                    }
                    Op::Leave(i) if i < peers.len() => r.leave(peers[i].0),
                    Op::Locations(i, f) if i < peers.len() => {
                        let (peer, port) = peers[i];
                        if let Ok(loc) = r.locations(peer, &format!("f{f}")) {
                            prop_assert!(loc.sources.len() <= 2);
                            prop_assert!(loc.sources.len() as u32 <= loc.total_sources);
                            prop_assert!(
                                loc.sources.iter().all(|s| s.addr.port() != port && s.addr.port() != port + 5000),
                                "caller listed"
                            );
                        }
                    }
                    _ => {}
                }
                r.check_invariants();
            }
        }
    }
}
