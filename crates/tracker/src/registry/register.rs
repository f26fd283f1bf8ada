//! Register, Chunk Register and Chunk Register Batch: the requests that add holdings, as a
//! sequence of named steps.
//!
//! A Register is checked in two halves so that the costly half holds no lock:
//! [`Registry::check_register`] (request shape, names, bitmap lengths and metadata, which merges
//! up to 2^18 chunk hashes per file, run by the server on its heavy-work threads) and
//! [`Registry::apply_register`] (under the write lock: the endpoint, then each file's conflict
//! and quota checks, then the holding). Every check of a file comes before anything of it is
//! added, so a refused file leaves the registry as it was.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use proto::tracker::{RegisterFile, RejectReason, RequestError};
use proto::{validate_name, FileMeta, Have};

use super::{budget, canonical, host, Files, PeerEntry, PeerId, Registry, State};
use crate::config::Limits;

/// A Register request after [`Registry::check_register`]: the endpoint (canonical) and each file
/// checked, ready for [`Registry::apply_register`].
#[derive(Debug)]
pub struct CheckedRegister {
    listen: SocketAddr,
    files: Vec<Result<Checked, Refused>>,
}

/// What a Register did: the reply's results, and the name of the first file refused, which the
/// tracker logs (the reply says why each file was refused, by position; an operator wants the
/// name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// One result per file, in request order.
    pub results: Vec<Result<(), RejectReason>>,
    /// The name of the first file refused, as sent (it may be invalid, and long), if any was.
    pub first_refused: Option<String>,
}

/// A file refused, with its name for the log: taken from the refused file, never copied.
#[derive(Debug)]
struct Refused {
    reason: RejectReason,
    name: String,
}

/// A Register file that passed the checks done outside the lock.
#[derive(Debug)]
struct Checked {
    file: RegisterFile,
    /// Whether `meta.validate()` ran; if not, the metadata was identical to a registered file's.
    validated: bool,
}

impl Registry {
    /// Register: sets the peer's endpoint and adds its files. One result per file. The same as
    /// [`Registry::check_register`] then [`Registry::apply_register`].
    pub fn register(
        &self,
        peer: PeerId,
        listen: SocketAddr,
        files: Vec<RegisterFile>,
    ) -> Result<Vec<Result<(), RejectReason>>, RequestError> {
        let checked = self.check_register(listen, files)?;
        self.apply_register(peer, checked).map(|r| r.results)
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
        let listen = self.check_request(listen, files.len())?;
        let known = self.known(&files);
        let files = files.into_iter().zip(known).map(|(f, known)| check_file(f, !known)).collect();
        Ok(CheckedRegister { listen, files })
    }

    /// The second half of a Register, under the write lock: sets the endpoint and adds the files
    /// that passed [`Registry::check_register`], subject to conflicts and quotas. Fast: no
    /// hashing, no copy of metadata.
    pub fn apply_register(&self, peer: PeerId, checked: CheckedRegister) -> Result<Registered, RequestError> {
        let CheckedRegister { listen, files: checked } = checked;
        let mut guard = self.write();
        let State { files, peers, meta_bytes, .. } = &mut *guard;
        let Some(entry) = peers.get_mut(&peer) else { return Err(RequestError::NotRegistered) };
        let addr = endpoint(listen, entry.observed.ip(), &self.limits)?;
        follow_endpoint(files, entry, peer, addr);
        let mut adding = Adding { files, total: meta_bytes, entry, peer, addr, limits: &self.limits };
        // Each name once per request: a later file of a name already taken (by a file that passed
        // `check_register`, whatever became of it here) is a duplicate.
        let mut seen = HashSet::new();
        let mut first_refused = None;
        let results = checked
            .into_iter()
            .map(|file| {
                let added = file.and_then(|f| {
                    if !seen.insert(f.file.meta.name.clone()) {
                        return Err(Refused { reason: RejectReason::Duplicate, name: f.file.meta.name });
                    }
                    adding.add(f)
                });
                added.map_err(|Refused { reason, name }| {
                    first_refused.get_or_insert(name);
                    reason
                })
            })
            .collect();
        Ok(Registered { results, first_refused })
    }

    /// Chunk Register: the session's own peer now holds `chunk` of `name`. A batch of one (see
    /// [`Registry::chunk_register_batch`]), so the two share every check.
    pub fn chunk_register(&self, peer: PeerId, name: &str, chunk: u32) -> Result<(), RequestError> {
        self.chunk_register_batch(peer, name, &[chunk])
    }

    /// Chunk Register Batch: the session's own peer now holds every chunk in `chunks` of `name`,
    /// so a downloader registers what it stored in one request rather than one per chunk.
    ///
    /// Checks, in order: the name, an endpoint registered, the file known, every index in range
    /// (the first one out of range is named), then, if the session does not hold the file yet,
    /// its quotas. All or nothing: every check comes before anything is applied, so a refused
    /// batch changes nothing. Duplicates and chunks already held are harmless; an empty batch is
    /// a no-op that creates no holding. O(len) under the write lock (the frame limit bounds len):
    /// one lookup of the holding, then a bit per chunk.
    pub fn chunk_register_batch(&self, peer: PeerId, name: &str, chunks: &[u32]) -> Result<(), RequestError> {
        validate_name(name).map_err(RequestError::InvalidName)?;
        // Outside the lock: whether any index could be out of range needs only the largest.
        let largest = chunks.iter().copied().max();
        let mut guard = self.write();
        let st = &mut *guard;
        let Some((entry, addr)) = st.peers.get_mut(&peer).and_then(|p| p.listen.map(|a| (p, a))) else {
            return Err(RequestError::NotRegistered);
        };
        let Some((key, file)) = st.files.get_key_value_mut(name) else {
            return Err(RequestError::UnknownFile(name.to_owned()));
        };
        let num_chunks = file.meta.num_chunks();
        let first_out = largest.filter(|&c| c >= num_chunks).and_then(|_| chunks.iter().find(|&&c| c >= num_chunks));
        if let Some(&chunk) = first_out {
            return Err(RequestError::ChunkOutOfRange { chunk, num_chunks });
        }
        if chunks.is_empty() {
            return Ok(());
        }
        if !entry.files.contains(name) {
            // The first chunks of a file the session did not hold: a new holding.
            admit_holding(&mut st.meta_bytes, entry, &file.meta, false, &self.limits).map_err(RequestError::Quota)?;
            entry.files.insert(key.clone());
        }
        file.holders.add_chunks(peer, addr, chunks);
        Ok(())
    }

    /// The request as a whole: not too many files, and a port to serve at. Returns the endpoint,
    /// canonical.
    fn check_request(&self, listen: SocketAddr, files: usize) -> Result<SocketAddr, RequestError> {
        if files > self.limits.max_files_per_register {
            return Err(RequestError::TooManyFiles { got: files, max: self.limits.max_files_per_register });
        }
        let listen = canonical(listen);
        if listen.port() == 0 {
            return Err(RequestError::BadEndpoint(listen));
        }
        Ok(listen)
    }

    /// For each file, whether its metadata is identical to that of the file registered under its
    /// name, which was validated when first registered and so need not be again. A lookup only:
    /// the read lock suffices, so this half runs beside other sessions' requests.
    fn known(&self, files: &[RegisterFile]) -> Vec<bool> {
        let st = self.read();
        files.iter().map(|f| st.files.get(f.meta.name.as_str()).is_some_and(|e| *e.meta == f.meta)).collect()
    }
}

/// One file's checks outside the lock: its name, its metadata (if `validate`), and the length of
/// its bitmap.
fn check_file(f: RegisterFile, validate: bool) -> Result<Checked, Refused> {
    match file_problem(&f, validate) {
        None => Ok(Checked { file: f, validated: validate }),
        Some(reason) => Err(Refused { reason, name: f.meta.name }),
    }
}

/// Why [`check_file`] refuses `f`, if it does.
fn file_problem(f: &RegisterFile, validate: bool) -> Option<RejectReason> {
    if let Err(e) = validate_name(&f.meta.name) {
        return Some(RejectReason::InvalidName(e));
    }
    if validate {
        if let Err(e) = f.meta.validate() {
            return Some(RejectReason::InconsistentMeta(e));
        }
    }
    match &f.have {
        Have::Partial(b) if b.len() != f.meta.num_chunks() => {
            Some(RejectReason::BitmapLength { want: f.meta.num_chunks(), got: b.len() })
        }
        _ => None,
    }
}

/// Where a session connecting from `observed` serves, as the registry keeps it (see
/// [`host::kept_endpoint`]: an unspecified IP from loopback stays unspecified, on the tracker's
/// own host). An explicit IP other than `observed` is refused with both addresses unless the
/// limits allow foreign endpoints: else a client could list any host as a source, and point a
/// swarm at it.
fn endpoint(listen: SocketAddr, observed: IpAddr, limits: &Limits) -> Result<SocketAddr, RequestError> {
    if !limits.allow_foreign_endpoints && !listen.ip().is_unspecified() && listen.ip() != observed {
        return Err(RequestError::ForeignEndpoint { announced: listen, observed });
    }
    Ok(host::kept_endpoint(listen, observed))
}

/// Records that `peer` (whose entry is `entry`) serves at `addr`. If it served elsewhere, what
/// it already holds is found at the new address from now on.
fn follow_endpoint(files: &mut Files, entry: &mut PeerEntry, peer: PeerId, addr: SocketAddr) {
    if entry.listen.replace(addr).is_some_and(|old| old != addr) {
        for name in &entry.files {
            if let Some(file) = files.get_mut(name) {
                file.holders.moved(peer, addr);
            }
        }
    }
}

/// Adding the files of one Register, under the write lock: the parts of the state it changes and
/// the session it changes them for.
struct Adding<'a> {
    files: &'a mut Files,
    /// The registry's metadata bytes.
    total: &'a mut u64,
    entry: &'a mut PeerEntry,
    peer: PeerId,
    /// Where `peer` serves.
    addr: SocketAddr,
    limits: &'a Limits,
}

impl Adding<'_> {
    /// Adds one checked file: its content and the registry's quota, then the session's quota and
    /// the byte budgets, then the holding.
    fn add(&mut self, checked: Checked) -> Result<(), Refused> {
        let Checked { file: RegisterFile { meta, have }, validated } = checked;
        if let Err(reason) = self.admit(&meta, validated) {
            return Err(Refused { reason, name: meta.name });
        }
        let key = self.files.insert(meta);
        self.entry.files.insert(key.clone());
        if let Some(file) = self.files.get_mut(&key) {
            file.holders.add(self.peer, self.addr, have);
        }
        Ok(())
    }

    /// Whether the session may hold `meta` (see [`Adding::add`]), charging the budgets if so.
    fn admit(&mut self, meta: &FileMeta, validated: bool) -> Result<(), RejectReason> {
        let new_file = admit_content(self.files, meta, validated, self.limits)?;
        if !self.entry.files.contains(meta.name.as_str()) {
            admit_holding(self.total, self.entry, meta, new_file, self.limits)?;
        }
        Ok(())
    }
}

/// Whether `meta` may be held: the same content as the file registered under its name, or a new
/// file within the registry's file quota. Returns whether it is new.
fn admit_content(files: &Files, meta: &FileMeta, validated: bool, limits: &Limits) -> Result<bool, RejectReason> {
    let existing = files.get(meta.name.as_str());
    let identical = existing.is_some_and(|e| e.meta.same_content(meta));
    if !identical && !validated {
        // The identical file it was compared with has gone meanwhile: check it now (rare).
        meta.validate().map_err(RejectReason::InconsistentMeta)?;
    }
    match existing {
        Some(existing) if !identical => Err(RejectReason::ContentConflict { existing: existing.meta.root }),
        Some(_) => Ok(false),
        None if files.len() >= limits.max_files_total => Err(RejectReason::GlobalQuota { max: limits.max_files_total }),
        None => Ok(true),
    }
}

/// Admits a holding of `meta` that the session `entry` does not have yet: within its file quota,
/// then charged to the byte budgets (`total` is the registry's bytes). `new_file`: the file is
/// not in the registry yet.
fn admit_holding(
    total: &mut u64,
    entry: &mut PeerEntry,
    meta: &FileMeta,
    new_file: bool,
    limits: &Limits,
) -> Result<(), RejectReason> {
    if entry.files.len() >= limits.max_files_per_session {
        return Err(RejectReason::SessionQuota { max: limits.max_files_per_session });
    }
    budget::charge(total, &mut entry.meta_bytes, meta, new_file, limits)
}
