//! The registry: which files exist, which peers are online, and which chunks each peer holds.
//!
//! A cheap-to-clone handle around `Arc<RwLock<State>>` with synchronous methods, so no lock is
//! ever held across an `.await`. Every mutation is made on behalf of one session's [`PeerId`], and
//! no method takes another peer's id from the network: that is what makes impersonation impossible.
//!
//! The parts, each keeping its own facts:
//! - this module: the handle, the sessions, the requests that end holdings (Leave, Unregister:
//!   both through `end_holding`) and the read-only ones (File List, File Meta, File Locations,
//!   Find Root);
//! - `files`: the files by name and their index by root hash, kept in step by one type;
//! - `register`: Register and Chunk Register (single or batched), step by step;
//! - `holders`: one file's holders, their chunk bitmaps, its availability and the O(k) draw of
//!   File Locations, as one type whose methods keep those arrays in step;
//! - `host`: the peers on the tracker's own host, and where File Locations lists them;
//! - `budget`: what metadata costs in bytes, charged and given back in one place;
//! - `view`: bounded read-only views for the tracker's web page (files, sessions, chunk maps).
//!
//! Invariants (checked by [`Registry::check_invariants`], which the tests and the fuzz target call):
//! - a file is present iff at least one peer holds it (registered or chunk-registered);
//! - the index by root holds exactly every file's (root, name);
//! - `peers[p].files` contains `f` iff `files[f].holders` contains `p`, and every holder has an
//!   endpoint (`peers[p].listen`);
//! - each file's holders keep the invariants of the `holders` module, with every slot at its
//!   peer's current endpoint;
//! - `peers[p].meta_bytes` is the sum of [`session_cost`] over the files `p` holds, and the
//!   state's `meta_bytes` the sum of [`file_bytes`] over the files plus [`holding_bytes`] over
//!   every holding: the metadata budgets (`Limits::max_meta_bytes_per_session`, `_total`) are
//!   checked against these before anything is added.
//!
//! Addresses are stored canonical (`IpAddr::to_canonical`): a session from an IPv4-mapped IPv6
//! address (`::ffff:1.2.3.4`, what a dual-stack listener sees) is the IPv4 address it stands for,
//! in the same-IP check of Register and in File Locations.
//!
//! Endpoints are kept as File Locations needs them. An unspecified listen IP (`0.0.0.0`, `::`)
//! is replaced by the IP the session connects from, except from a loopback address: that peer is
//! on the tracker's own host and listens on every interface, so its endpoint is kept at the
//! unspecified IP of its loopback's family, and File Locations lists it at the address each
//! asking session reached the tracker at (loopback for an asker on the same host). See `host`
//! for why; every other endpoint is listed as kept.

mod budget;
mod files;
mod holders;
mod host;
mod register;
#[cfg(test)]
mod tests;
mod view;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use proto::limits::MAX_ROOT_MATCHES;
use proto::tracker::{FileSummary, Locations, RequestError};
use proto::{validate_name, FileMeta, RootPrefix};
use tokio::sync::OnceCell;

use crate::config::Limits;
use files::Files;
use holders::Holders;
use host::OwnHost;

pub use budget::{file_bytes, holding_bytes, session_cost};
pub use register::{CheckedRegister, Registered};
pub use view::{ChunkMap, FileRow, PeerRow, Rows};

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

/// The shared registry handle.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<RwLock<State>>,
    limits: Arc<Limits>,
}

#[derive(Debug, Default)]
struct State {
    files: Files,
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
    holders: Holders,
}

#[derive(Debug)]
struct PeerEntry {
    /// Address the session connects from; replaces an unspecified listen IP (unless loopback).
    observed: SocketAddr,
    /// Where the peer serves, once it has registered; an unspecified IP means on the tracker's
    /// own host, every interface (see `host`).
    listen: Option<SocketAddr>,
    files: HashSet<Arc<str>>,
    /// What its holdings cost, by [`session_cost`]: checked against the session's budget.
    meta_bytes: u64,
    /// When the session opened, for the web page (`view`).
    opened: std::time::SystemTime,
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
        let holders = Holders::new(meta.num_chunks());
        Self { meta, reply: Arc::default(), holders }
    }

    /// The file as File List and Find Root list it.
    fn summary(&self, name: &str) -> FileSummary {
        FileSummary {
            name: name.to_owned(),
            length: self.meta.length,
            root: self.meta.root,
            chunk_size: self.meta.chunk_size,
            sources: self.holders.sources(),
            complete_sources: self.holders.complete_sources(),
        }
    }
}

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
        // Read outside the lock: the clock is the page's, not the registry's.
        let opened = std::time::SystemTime::now();
        let mut st = self.write();
        st.next_id += 1;
        let id = PeerId(st.next_id);
        st.peers.insert(id, PeerEntry { observed, listen: None, files: HashSet::new(), meta_bytes: 0, opened });
        id
    }

    /// Closes a session: the same as Leave, and the id is forgotten. Returns how many files it
    /// held, for the log.
    pub fn close_session(&self, peer: PeerId) -> usize {
        let mut st = self.write();
        let held = st.peers.get(&peer).map_or(0, |p| p.files.len());
        st.remove_holdings(peer);
        st.peers.remove(&peer);
        held
    }

    /// Leave: removes every registration of the session's peer. The session stays open.
    pub fn leave(&self, peer: PeerId) {
        self.write().remove_holdings(peer);
    }

    /// Unregister: Leave for one file. Removes the session's holding of `name` (complete or
    /// partial), giving back what it cost, and drops the file if that was its last holder, as
    /// Leave does. The session stays open and keeps its endpoint. Refused, changing nothing, for
    /// an invalid name ([`RequestError::InvalidName`]) or a file the session does not hold
    /// ([`RequestError::NotHeld`], naming only the name's length).
    pub fn unregister(&self, peer: PeerId, name: &str) -> Result<(), RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let mut guard = self.write();
        let st = &mut *guard;
        let held = st.peers.get_mut(&peer).and_then(|entry| entry.files.take(name));
        let Some(key) = held else {
            return Err(RequestError::NotHeld { name_len: u32::try_from(name.len()).unwrap_or(u32::MAX) });
        };
        if let Some((entry, file)) = st.peers.get_mut(&peer).zip(st.files.get(&key)) {
            // The session was charged the file's whole cost for this holding (`budget::charge`).
            entry.meta_bytes -= session_cost(&file.meta);
        }
        end_holding(&mut st.files, &mut st.meta_bytes, peer, &key);
        Ok(())
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
            page.push(f.summary(name));
        }
        let more = it.peek().is_some();
        (page, more)
    }

    /// Find Root: the files whose root hash starts with `prefix` (16 to 64 hex digits, either
    /// case), sorted by root then name, at most [`MAX_ROOT_MATCHES`], and whether more match.
    /// Summarised as File List summarises them. O(log n) in the number of files, by the index by
    /// root (see `files`), whatever the prefix: at most one more file than the cap is looked at.
    pub fn find_root(&self, prefix: &str) -> Result<(Vec<FileSummary>, bool), RequestError> {
        let prefix = RootPrefix::parse(prefix)?;
        let st = self.read();
        let mut found = st.files.with_root(prefix).map(|(name, f)| f.summary(name));
        let files: Vec<FileSummary> = found.by_ref().take(MAX_ROOT_MATCHES).collect();
        let more = found.next().is_some();
        Ok((files, more))
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

    /// File Locations for `caller`, as a session on the tracker's own host sees them (one that
    /// reached the tracker over loopback): [`Registry::locations_via`] with `127.0.0.1`.
    pub fn locations(&self, caller: PeerId, name: &str) -> Result<Locations, RequestError> {
        self.locations_via(caller, name, Ipv4Addr::LOCALHOST.into())
    }

    /// File Locations for `caller`, whose connection reached the tracker at `via` (its local
    /// address): up to the cap of sources other than the caller, chosen at random with complete
    /// and partial sources mixed, so load spreads across the swarm. A source on the tracker's own
    /// host listening on every interface is listed at `via` (canonical), or at loopback if `via`
    /// is loopback (see the module docs): `via` says where the caller can reach that host. O(cap).
    pub fn locations_via(&self, caller: PeerId, name: &str, via: IpAddr) -> Result<Locations, RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let host = OwnHost::reached_at(via);
        let st = self.read();
        let file = st.files.get(name).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))?;
        let (sources, total_sources) = file.holders.draw(caller, self.limits.max_locations, host, &mut rand::rng());
        Ok(Locations {
            root: file.meta.root,
            num_chunks: file.meta.num_chunks(),
            total_sources,
            sources,
            availability: file.holders.availability().to_vec(),
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

/// Takes `peer`'s holding of the file `name` away from the file (the caller has taken it out of
/// the session's set and its charge), giving the registry's `total` back what it cost, and drops
/// the file if it has no holder left. The one path by which a holding ends: Leave, session end,
/// expiry and Unregister all come here.
fn end_holding(files: &mut Files, total: &mut u64, peer: PeerId, name: &str) {
    if let Some(file) = files.get_mut(name) {
        file.holders.remove(peer);
        let gone = file.holders.is_empty();
        budget::release(total, &file.meta, gone);
        if gone {
            files.remove(name);
        }
    }
}

impl State {
    /// Takes every holding of `peer` away, giving back what they cost, and drops the files left
    /// with no holder.
    fn remove_holdings(&mut self, peer: PeerId) {
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        // A session is charged only for what it holds, and it is about to hold nothing.
        entry.meta_bytes = 0;
        for name in entry.files.drain() {
            end_holding(&mut self.files, &mut self.meta_bytes, peer, &name);
        }
    }

    fn check_invariants(&self) {
        self.files.check_invariants();
        for (name, f) in self.files.iter() {
            assert!(!f.holders.is_empty(), "{name} has no holders");
            for p in f.holders.peers() {
                assert!(self.peers[&p].files.contains(name));
                assert!(self.peers[&p].listen.is_some(), "a holder has an endpoint");
            }
            f.holders.check_invariants(name, |p| self.peers[&p].listen);
        }
        for (p, e) in &self.peers {
            for name in &e.files {
                assert!(self.files[name].holders.contains(*p));
            }
            let cost = budget::session_total(e.files.iter().map(|name| &*self.files[name].meta));
            assert_eq!(e.meta_bytes, cost, "a session's metadata bytes");
        }
        let total = budget::registry_total(self.files.values().map(|f| (&*f.meta, f.holders.len())));
        assert_eq!(self.meta_bytes, total, "the registry's metadata bytes");
    }
}
