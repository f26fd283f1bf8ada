//! The registry: which files exist, which peers are online, and which chunks each peer holds.
//!
//! A cheap-to-clone handle around `Arc<RwLock<State>>` with synchronous methods, so no lock is
//! ever held across an `.await`. Every mutation is made on behalf of one session's [`PeerId`], and
//! no method takes another peer's id from the network: that is what makes impersonation impossible.
//!
//! Invariants (checked by `State::check_invariants` in tests):
//! - a file is present iff at least one peer holds it (registered or chunk-registered);
//! - `peers[p].files` contains `f` iff `files[f].holders` contains `p`;
//! - `files[f].availability[i]` equals the number of holders that have chunk `i`;
//! - `files[f].complete` equals the number of holders whose holding is `Complete`, and a partial
//!   holding is never full (it is promoted to `Complete`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use proto::tracker::{FileSummary, Locations, RegisterFile, RejectReason, RequestError, SourceInfo};
use proto::{validate_name, Bitmap, FileMeta, Have};
use rand::seq::{IndexedRandom, SliceRandom};

use crate::config::Limits;

/// A session's identity inside the tracker. Assigned by the tracker, never sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

/// The shared registry handle.
#[derive(Debug, Clone)]
pub struct Registry {
    state: Arc<RwLock<State>>,
    limits: Arc<Limits>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<Arc<str>, FileEntry>,
    peers: HashMap<PeerId, PeerEntry>,
    next_id: u64,
}

#[derive(Debug)]
struct FileEntry {
    meta: Arc<FileMeta>,
    holders: HashMap<PeerId, Have>,
    availability: Vec<u32>,
    complete: u32,
}

#[derive(Debug)]
struct PeerEntry {
    /// Address the session connects from; replaces an unspecified listen IP.
    observed: SocketAddr,
    /// Where the peer serves, once it has registered.
    listen: Option<SocketAddr>,
    files: HashSet<Arc<str>>,
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
        Self { meta, holders: HashMap::new(), availability: vec![0; n], complete: 0 }
    }

    fn add(&mut self, peer: PeerId, have: Have) {
        self.remove(peer);
        let n = self.meta.num_chunks();
        let have = match have {
            Have::Partial(b) if b.is_full() => Have::Complete,
            h => h,
        };
        match &have {
            Have::Complete => {
                self.complete += 1;
                self.availability.iter_mut().for_each(|a| *a += 1);
            }
            Have::Partial(b) => b.iter_ones().filter(|&i| i < n).for_each(|i| self.availability[i as usize] += 1),
        }
        self.holders.insert(peer, have);
    }

    fn remove(&mut self, peer: PeerId) {
        match self.holders.remove(&peer) {
            Some(Have::Complete) => {
                self.complete -= 1;
                self.availability.iter_mut().for_each(|a| *a -= 1);
            }
            Some(Have::Partial(b)) => b.iter_ones().for_each(|i| self.availability[i as usize] -= 1),
            None => {}
        }
    }

    /// Marks one chunk held; promotes a partial holding that became full.
    fn add_chunk(&mut self, peer: PeerId, chunk: u32) {
        let n = self.meta.num_chunks();
        let holding = self.holders.entry(peer).or_insert_with(|| Have::Partial(Bitmap::new(n)));
        if let Have::Partial(b) = holding {
            if b.set(chunk) {
                self.availability[chunk as usize] += 1;
            }
            if b.is_full() {
                *holding = Have::Complete;
                self.complete += 1;
            }
        }
    }

    /// Holders with at least one chunk.
    fn sources(&self) -> u32 {
        self.holders
            .values()
            .filter(|h| matches!(h, Have::Complete) || matches!(h, Have::Partial(b) if b.count() > 0))
            .count() as u32
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
        let mut st = self.write();
        st.next_id += 1;
        let id = PeerId(st.next_id);
        st.peers.insert(id, PeerEntry { observed, listen: None, files: HashSet::new() });
        id
    }

    /// Closes a session: the same as Leave, and the id is forgotten.
    pub fn close_session(&self, peer: PeerId) {
        let mut st = self.write();
        st.remove_holdings(peer);
        st.peers.remove(&peer);
    }

    /// Register: sets the peer's endpoint and adds its files. One result per file.
    pub fn register(
        &self,
        peer: PeerId,
        listen: SocketAddr,
        files: Vec<RegisterFile>,
    ) -> Result<Vec<Result<(), RejectReason>>, RequestError> {
        if files.len() > self.limits.max_files_per_register {
            return Err(RequestError::TooManyFiles { got: files.len(), max: self.limits.max_files_per_register });
        }
        if listen.port() == 0 {
            return Err(RequestError::BadEndpoint(listen));
        }
        // Metadata validation hashes up to 2^18 chunk hashes per file: do it before taking the lock.
        let checked: Vec<Result<RegisterFile, RejectReason>> = files.into_iter().map(check_file).collect();

        let mut guard = self.write();
        let st = &mut *guard;
        let Some(entry) = st.peers.get_mut(&peer) else { return Err(RequestError::NotRegistered) };
        let addr =
            if listen.ip().is_unspecified() { SocketAddr::new(entry.observed.ip(), listen.port()) } else { listen };
        entry.listen = Some(addr);

        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(checked.len());
        for file in checked {
            let result = file.and_then(|f| {
                if !seen.insert(f.meta.name.clone()) {
                    return Err(RejectReason::Duplicate);
                }
                st.add_file(peer, f, &self.limits)
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
        let Some(entry) = st.peers.get_mut(&peer).filter(|p| p.listen.is_some()) else {
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
            entry.files.insert(key.clone());
        }
        file.add_chunk(peer, chunk);
        Ok(())
    }

    /// Leave: removes every registration of the session's peer. The session stays open.
    pub fn leave(&self, peer: PeerId) {
        self.write().remove_holdings(peer);
    }

    /// One page of the file list, sorted by name, starting after `after`.
    pub fn list(&self, after: Option<&str>) -> (Vec<FileSummary>, bool) {
        let st = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut it = st.files.range::<str, _>((start, Bound::Unbounded));
        let page: Vec<FileSummary> = it
            .by_ref()
            .take(self.limits.list_page)
            .map(|(name, f)| FileSummary {
                name: name.to_string(),
                length: f.meta.length,
                root: f.meta.root,
                chunk_size: f.meta.chunk_size,
                sources: f.sources(),
                complete_sources: f.complete,
            })
            .collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// A file's metadata.
    pub fn meta(&self, name: &str) -> Result<Arc<FileMeta>, RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        self.read().files.get(name).map(|f| f.meta.clone()).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))
    }

    /// File Locations for `caller`: up to the cap of sources other than the caller, chosen at
    /// random with complete and partial sources mixed, so load spreads across the swarm.
    pub fn locations(&self, caller: PeerId, name: &str) -> Result<Locations, RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        let st = self.read();
        let file = st.files.get(name).ok_or_else(|| RequestError::UnknownFile(name.to_owned()))?;
        let n = file.meta.num_chunks();
        let usable = |(p, h): (&PeerId, &Have)| -> Option<(SocketAddr, bool)> {
            if *p == caller {
                return None;
            }
            let addr = st.peers.get(p)?.listen?;
            match h {
                Have::Complete => Some((addr, true)),
                Have::Partial(b) if b.count() > 0 => Some((addr, false)),
                Have::Partial(_) => None,
            }
        };
        let (complete, partial): (Vec<_>, Vec<_>) = file
            .holders
            .iter()
            .filter_map(|e| usable(e).map(|(addr, full)| (addr, full, e.0)))
            .partition(|&(_, full, _)| full);
        let total = (complete.len() + partial.len()) as u32;
        let cap = self.limits.max_locations;
        let mut rng = rand::rng();
        let mut chosen: Vec<_> = if complete.len() + partial.len() <= cap {
            complete.iter().chain(partial.iter()).collect()
        } else {
            // Half from each group, the rest from whichever group has more.
            let from_complete = complete.len().min(cap.div_ceil(2).max(cap.saturating_sub(partial.len())));
            let from_partial = cap - from_complete;
            let mut v: Vec<_> = complete.choose_multiple(&mut rng, from_complete).collect();
            v.extend(partial.choose_multiple(&mut rng, from_partial));
            v
        };
        chosen.shuffle(&mut rng);
        let sources = chosen
            .into_iter()
            .map(|&(addr, full, p)| SourceInfo {
                addr,
                have: if full {
                    Have::Complete
                } else {
                    file.holders.get(p).cloned().unwrap_or(Have::Partial(Bitmap::new(n)))
                },
            })
            .collect();
        Ok(Locations {
            root: file.meta.root,
            num_chunks: n,
            total_sources: total,
            sources,
            availability: file.availability.clone(),
        })
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

    #[cfg(test)]
    fn check_invariants(&self) {
        self.read().check_invariants();
    }
}

fn check_file(f: RegisterFile) -> Result<RegisterFile, RejectReason> {
    validate_name(&f.meta.name).map_err(RejectReason::InvalidName)?;
    f.meta.validate().map_err(RejectReason::InconsistentMeta)?;
    if let Have::Partial(b) = &f.have {
        if b.len() != f.meta.num_chunks() {
            return Err(RejectReason::BitmapLength { want: f.meta.num_chunks(), got: b.len() });
        }
    }
    Ok(f)
}

impl State {
    fn add_file(&mut self, peer: PeerId, f: RegisterFile, limits: &Limits) -> Result<(), RejectReason> {
        let Some(entry) = self.peers.get_mut(&peer) else { return Err(RejectReason::SessionQuota { max: 0 }) };
        let name: &str = &f.meta.name;
        match self.files.get(name) {
            Some(existing) if !existing.meta.same_content(&f.meta) => {
                return Err(RejectReason::ContentConflict { existing: existing.meta.root })
            }
            Some(_) => {}
            None if self.files.len() >= limits.max_files_total => {
                return Err(RejectReason::GlobalQuota { max: limits.max_files_total })
            }
            None => {}
        }
        if !entry.files.contains(name) && entry.files.len() >= limits.max_files_per_session {
            return Err(RejectReason::SessionQuota { max: limits.max_files_per_session });
        }
        let key: Arc<str> = match self.files.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => {
                let key: Arc<str> = Arc::from(name);
                self.files.insert(key.clone(), FileEntry::new(Arc::new(f.meta.clone())));
                key
            }
        };
        entry.files.insert(key.clone());
        if let Some(file) = self.files.get_mut(&key) {
            file.add(peer, f.have);
        }
        Ok(())
    }

    fn remove_holdings(&mut self, peer: PeerId) {
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        for name in entry.files.drain() {
            if let Some(file) = self.files.get_mut(&name) {
                file.remove(peer);
                if file.holders.is_empty() {
                    self.files.remove(&name);
                }
            }
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        for (name, f) in &self.files {
            assert!(!f.holders.is_empty(), "{name} has no holders");
            let n = f.meta.num_chunks();
            let mut avail = vec![0u32; n as usize];
            let mut complete = 0;
            for (p, h) in &f.holders {
                assert!(self.peers[p].files.contains(name));
                match h {
                    Have::Complete => {
                        complete += 1;
                        avail.iter_mut().for_each(|a| *a += 1);
                    }
                    Have::Partial(b) => {
                        assert!(!b.is_full() || n == 0);
                        b.iter_ones().for_each(|i| avail[i as usize] += 1);
                    }
                }
            }
            assert_eq!(avail, f.availability, "{name} availability");
            assert_eq!(complete, f.complete, "{name} complete count");
        }
        for (p, e) in &self.peers {
            for name in &e.files {
                assert!(self.files[name].holders.contains_key(p));
            }
        }
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
}
