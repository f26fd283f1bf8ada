//! Several trackers and no database: every file name is assigned to the trackers by rendezvous
//! (highest-random-weight) hashing over the list, so all peers given the same list agree on a
//! file's order without talking. A peer registers each file with the first live tracker in that
//! file's order; when that tracker is lost (its connection gone and not back within one
//! keep-alive interval), the file's registration moves to the next, and back when it returns.
//! Downloads look files up the same way. Trackers hold only soft state, rebuilt from the peers'
//! registrations, so losing one only moves its files. See docs/ARCHITECTURE.md ("Several
//! trackers") for the limits: a partition or lists that differ split a file's swarm.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::select_all;
use proto::tracker::{FileSummary, Locations, RegisterFile};
use proto::FileMeta;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::addr::HostPort;
use crate::error::Error;
use crate::session::{Link, TrackerSession};
use crate::shares::Shares;

/// Who is responsible for which file: the trackers in the order given, and how each link is.
pub(crate) struct Routes {
    keys: Vec<String>,
    links: OnceLock<Vec<watch::Receiver<Link>>>,
}

impl Routes {
    pub(crate) fn new(trackers: &[HostPort]) -> Self {
        Self { keys: trackers.iter().map(ToString::to_string).collect(), links: OnceLock::new() }
    }

    /// The trackers in `name`'s order: by weight, a hash of the tracker's address and the name.
    pub(crate) fn order(&self, name: &str) -> Vec<usize> {
        let mut w: Vec<(u64, usize)> = self.keys.iter().enumerate().map(|(i, k)| (weight(k, name), i)).collect();
        w.sort_unstable_by(|a, b| b.cmp(a));
        w.into_iter().map(|(_, i)| i).collect()
    }

    /// Whether tracker `i` counts as live: connected, not tried yet (so that peers starting
    /// together do not register files with a later tracker because the first had not answered
    /// yet), or lost for less than one keep-alive interval (a restart or a blip does not move
    /// every file).
    pub(crate) fn live(&self, i: usize, now: Instant) -> bool {
        let Some(links) = self.links.get() else { return true };
        match &*links[i].borrow() {
            Link::Up { .. } | Link::Connecting => true,
            Link::Down { since, grace, .. } => now.duration_since(*since) < *grace,
        }
    }

    /// The tracker responsible for `name`: the first live one in its order (counting `assume`
    /// as live, for a session deciding what to register as it connects), else the first.
    pub(crate) fn primary(&self, name: &str, assume: Option<usize>) -> usize {
        let order = self.order(name);
        let now = Instant::now();
        order.iter().copied().find(|&i| Some(i) == assume || self.live(i, now)).unwrap_or(order[0])
    }

    /// When a lost tracker's grace ends, the earliest of them: files move then.
    fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let links = self.links.get()?;
        links
            .iter()
            .filter_map(|l| match &*l.borrow() {
                Link::Down { since, grace, .. } if *since + *grace > now => Some(*since + *grace),
                _ => None,
            })
            .min()
    }
}

/// The order in which the trackers of `list` are responsible for `name` (indices into `list`):
/// the same for every peer given the same list. For tools and tests that must know which tracker
/// holds a file.
pub fn rendezvous_order(list: &[HostPort], name: &str) -> Vec<usize> {
    Routes::new(list).order(name)
}

/// A tracker's weight for a name: the first 8 bytes of BLAKE3 over both, so every peer computes
/// the same order on every platform.
fn weight(tracker: &str, name: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(tracker.as_bytes());
    h.update(&[0]);
    h.update(name.as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The node's trackers: requests about a file go to its tracker. Cheap to clone.
#[derive(Clone)]
pub struct Trackers {
    routes: Arc<Routes>,
    sessions: Arc<[TrackerSession]>,
    /// How long a request waits for a tracker before trying the file's next one.
    patience: Duration,
}

impl Trackers {
    pub(crate) fn new(routes: Arc<Routes>, sessions: Vec<TrackerSession>, patience: Duration) -> Self {
        let _ = routes.links.set(sessions.iter().map(TrackerSession::link).collect());
        Self { routes, sessions: sessions.into(), patience }
    }

    /// Sessions with every tracker of `list` that register nothing (for list and locate), ended
    /// when `stop` is cancelled. Fails if none of them can be reached now.
    pub async fn connect(
        list: &[HostPort],
        request_timeout: Duration,
        stop: CancellationToken,
    ) -> Result<Trackers, Error> {
        if list.is_empty() {
            return Err(Error::NoTrackers);
        }
        let group = crate::task::TaskGroup::new(stop);
        let routes = Arc::new(Routes::new(list));
        let mut sessions = Vec::new();
        for tracker in list {
            let config = crate::session::SessionConfig { tracker: tracker.clone(), request_timeout };
            let (session, actor) = TrackerSession::start(config, None, group.token().clone());
            group.spawn(tracing::info_span!("session", %tracker), |_| actor);
            sessions.push(session);
        }
        let mut first_error = None;
        for (session, tracker) in sessions.iter().zip(list) {
            let mut link = session.link();
            let first = link.wait_for(|l| !matches!(l, Link::Connecting)).await.map(|l| l.clone());
            match first {
                Ok(Link::Up { .. }) => return Ok(Self::new(routes, sessions, request_timeout)),
                Ok(Link::Down { error, .. }) => {
                    let tracker = tracker.clone();
                    first_error.get_or_insert(if error.is_permanent() {
                        Error::TrackerRefused { tracker, reason: error }
                    } else {
                        Error::TrackerUnreachable { tracker, reason: error }
                    });
                }
                _ => {}
            }
        }
        Err(first_error.unwrap_or(Error::SessionClosed))
    }

    /// The sessions, in the order the trackers were given.
    pub fn sessions(&self) -> &[TrackerSession] {
        &self.sessions
    }

    /// The session of the tracker responsible for `name` now.
    pub fn session_for(&self, name: &str) -> &TrackerSession {
        &self.sessions[self.routes.primary(name, None)]
    }

    /// Runs `f` against the trackers for `name` in turn, live ones first in the file's order, until
    /// one answers: a tracker that is not connected, or does not answer within the patience, is
    /// passed over. With one tracker, or when none answers, it waits for a tracker to come back
    /// (bounded by the caller: a download's deadline, Ctrl-C). Any answer, refusals included, is
    /// returned as it is.
    async fn route<T, F, Fut>(&self, name: &str, f: F) -> Result<T, Error>
    where
        F: Fn(TrackerSession) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        if self.sessions.len() == 1 {
            return f(self.sessions[0].clone()).await;
        }
        loop {
            let now = Instant::now();
            let (mut live, rest): (Vec<usize>, Vec<usize>) =
                self.routes.order(name).into_iter().partition(|&i| self.routes.live(i, now));
            live.extend(rest);
            for i in live {
                match tokio::time::timeout(self.patience, f(self.sessions[i].clone())).await {
                    Ok(Err(Error::TrackerLost)) | Err(_) => {}
                    Ok(r) => return r,
                }
            }
            // None answered: wait for any link to change, or a while, and go round again.
            let mut links: Vec<_> = self.sessions.iter().map(TrackerSession::link).collect();
            let changed = select_all(links.iter_mut().map(|l| Box::pin(l.changed())));
            let _ = tokio::time::timeout(self.patience, changed).await;
        }
    }

    /// A file's metadata, from its tracker.
    pub async fn file_meta(&self, name: &str) -> Result<FileMeta, Error> {
        self.route(name, |s| async move { s.file_meta(name).await }).await
    }

    /// A file's sources, from its tracker.
    pub async fn locations(&self, name: &str) -> Result<Locations, Error> {
        self.route(name, |s| async move { s.locations(name).await }).await
    }

    /// Runs a registration on session `i` if it is connected, within the patience: never waits
    /// for a tracker that is down, since what it would register goes with the re-registration
    /// when it is back (or with the move to the next tracker), and a registration that waited
    /// would hold up the ones after it.
    async fn registration(&self, i: usize, call: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
        if !matches!(&*self.sessions[i].link().borrow(), Link::Up { .. }) {
            return Err(Error::TrackerLost);
        }
        tokio::time::timeout(self.patience, call).await.unwrap_or(Err(Error::TrackerLost))
    }

    /// Registers chunks of a file with its tracker, if that tracker is connected now.
    pub async fn chunk_register_batch(&self, name: &str, chunks: Vec<u32>) -> Result<(), Error> {
        let i = self.routes.primary(name, None);
        self.registration(i, self.sessions[i].chunk_register_batch(name, chunks)).await
    }

    /// Registers files, each with its tracker, if that tracker is connected now.
    pub async fn register(&self, files: Vec<RegisterFile>) -> Result<(), Error> {
        let mut by: BTreeMap<usize, Vec<RegisterFile>> = BTreeMap::new();
        for f in files {
            by.entry(self.routes.primary(&f.meta.name, None)).or_default().push(f);
        }
        // Every tracker gets its files, whatever another one says.
        let mut first_error = None;
        for (i, files) in by {
            if let Err(e) = self.registration(i, self.sessions[i].register(files)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Withdraws a file (Unregister) from every tracker connected now: after a failover it may
    /// be held by more than its responsible one, and one that is not held answers "not held",
    /// which is success. A tracker that is down has lost this peer's session, and with it the
    /// holding, and re-registers only what is still shared when it is back. One that is up but
    /// does not answer within the patience is an error: the holding may still be there.
    pub async fn unregister(&self, name: &str) -> Result<(), Error> {
        let up = self.sessions.iter().filter(|s| matches!(&*s.link().borrow(), Link::Up { .. }));
        let calls = up.map(|s| async move {
            tokio::time::timeout(self.patience, s.unregister(name)).await.unwrap_or(Err(Error::TrackerLost))
        });
        let results = futures::future::join_all(calls).await;
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    /// Every file on every tracker that answers, merged by name (a file listed by several
    /// trackers, as during a failover, once: with the most sources).
    pub async fn list_all(&self) -> Result<Vec<FileSummary>, Error> {
        // A tracker that does not answer in time (lost) is left out; the others still list.
        let patience = self.patience;
        let ask = |s: &TrackerSession| {
            let s = s.clone();
            async move { tokio::time::timeout(patience, s.list_all()).await.unwrap_or(Err(Error::TrackerLost)) }
        };
        let lists = futures::future::join_all(self.sessions.iter().map(ask)).await;
        let mut merged: BTreeMap<String, FileSummary> = BTreeMap::new();
        let mut first_error = None;
        let mut answered = false;
        for list in lists {
            match list {
                Ok(files) => {
                    answered = true;
                    for f in files {
                        match merged.get(&f.name) {
                            Some(have) if have.sources >= f.sources => {}
                            _ => {
                                merged.insert(f.name.clone(), f);
                            }
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (answered, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(merged.into_values().collect()),
        }
    }

    /// The files whose root starts with `prefix` (hex), on every tracker that answers (files are
    /// spread over the trackers by name, so any may hold it), sorted by root and name.
    pub async fn find_root(&self, prefix: &str) -> Result<Vec<FileSummary>, Error> {
        let patience = self.patience;
        let ask = |s: &TrackerSession| {
            let s = s.clone();
            async move { tokio::time::timeout(patience, s.find_root(prefix)).await.unwrap_or(Err(Error::TrackerLost)) }
        };
        let answers = futures::future::join_all(self.sessions.iter().map(ask)).await;
        let mut merged = BTreeMap::new();
        let mut first_error = None;
        let mut answered = false;
        for answer in answers {
            match answer {
                Ok(files) => {
                    answered = true;
                    merged.extend(files.into_iter().map(|f| ((f.root, f.name.clone()), f)));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (answered, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(merged.into_values().collect()),
        }
    }

    /// This peer's endpoint as a tracker records it (see [`TrackerSession::endpoint`]): from the
    /// first tracker that has registered it.
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        self.sessions.iter().find_map(TrackerSession::endpoint)
    }
}

/// How soon a move of files to their tracker that failed is tried again.
const RETRY_MOVE: Duration = Duration::from_secs(1);

/// Moves files between trackers as trackers are lost and come back: whenever a link changes, or
/// a lost tracker's grace ends, each served file whose responsible tracker changed is registered
/// with its new one. (A tracker that comes back registers its own files as it reconnects; this
/// also catches files added since.)
pub(crate) async fn supervise(trackers: Trackers, shares: Shares, stop: CancellationToken) {
    let mut links: Vec<watch::Receiver<Link>> = trackers.sessions.iter().map(TrackerSession::link).collect();
    // Each session registers its own files as it connects: what they start with needs no move.
    let mut assigned: HashMap<String, usize> = shares
        .names()
        .into_iter()
        .map(|name| {
            let p = trackers.routes.primary(&name, None);
            (name, p)
        })
        .collect();
    loop {
        let now = Instant::now();
        let mut moved: BTreeMap<usize, Vec<RegisterFile>> = BTreeMap::new();
        for name in shares.names() {
            let p = trackers.routes.primary(&name, None);
            if assigned.get(&name) != Some(&p) {
                if let Some(f) = shares.get(&name).map(|s| RegisterFile { meta: s.meta().clone(), have: s.have() }) {
                    moved.entry(p).or_default().push(f);
                }
            }
        }
        let mut failed = false;
        for (p, files) in moved {
            let names: Vec<String> = files.iter().map(|f| f.meta.name.clone()).collect();
            match trackers.registration(p, trackers.sessions[p].register(files)).await {
                Ok(()) => {
                    info!(files = names.len(), tracker = %trackers.routes.keys[p], "registered files with their tracker");
                    for name in names {
                        assigned.insert(name, p);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "moving files to their tracker failed; trying again shortly");
                    failed = true;
                }
            }
        }
        let expiry = trackers.routes.next_expiry(now).or(failed.then(|| now + RETRY_MOVE));
        let changed = select_all(links.iter_mut().map(|l| Box::pin(l.changed())));
        tokio::select! {
            _ = stop.cancelled() => return,
            (r, _, _) = changed => if r.is_err() { return },
            _ = async { match expiry { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(n: usize) -> Routes {
        let list: Vec<HostPort> = (0..n).map(|i| format!("tracker{i}.lab").parse().unwrap()).collect();
        Routes::new(&list)
    }

    /// Every peer computes the same order; files spread evenly; adding a tracker moves only the
    /// files it becomes first for (about 1/(n+1) of them).
    #[test]
    fn rendezvous_order_is_shared_even_and_stable() {
        let (three, four) = (routes(3), routes(4));
        let names: Vec<String> = (0..3000).map(|i| format!("data/file-{i}.bin")).collect();
        let mut firsts = [0usize; 3];
        let mut moved = 0;
        for n in &names {
            let o = three.order(n);
            assert_eq!(o, routes(3).order(n), "deterministic");
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2]);
            firsts[o[0]] += 1;
            let o4 = four.order(n);
            if o4[0] != o[0] {
                assert_eq!(o4[0], 3, "only the new tracker takes files");
                moved += 1;
            }
        }
        assert!(firsts.iter().all(|&c| (850..1150).contains(&c)), "{firsts:?}");
        assert!((600..900).contains(&moved), "{moved} of 3000 moved");
    }

    /// With no link state known, every tracker counts as live and a file's first tracker is
    /// responsible.
    #[test]
    fn the_first_tracker_is_responsible_until_links_say_otherwise() {
        let r = routes(3);
        let order = r.order("f");
        assert_eq!(r.primary("f", None), order[0]);
        assert_eq!(r.primary("f", Some(order[2])), order[0]);
    }
}
