//! What a session registers on every (re)connect, and at which endpoint: the endpoint is decided
//! per connection, from what the tracker's welcome says it sees, so that a peer never announces
//! an endpoint it is not listening on.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proto::limits::DEFAULT_MAX_FRAME;
use proto::tracker::{Register, RegisterFile, TrackerRequest, TrackerResponse, Welcome};
use proto::Have;
use tracing::{debug, warn};

use super::{log_rejections, roundtrip, step_failed, Conn};
use crate::addr::HostPort;
use crate::error::ConnectError;
use crate::shares::{sent, Shares};

/// Room left in a Register frame for what the size estimate of [`register_batches`] leaves out.
const REGISTER_FRAME_SLACK: usize = 4096;

/// Which files a session registers: with several trackers, those it is the first live tracker
/// for (see `trackers.rs`).
pub(crate) type FileFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the session registers on every (re)connect: the peer's endpoint and its files.
#[derive(Clone)]
pub struct Registration {
    /// Where the peer's listener is bound (the IP may be unspecified: every interface).
    pub listen: SocketAddr,
    /// Whether that listener takes IPv6 and IPv4 both (bound to `[::]` with IPv6-only off).
    pub dual_stack: bool,
    /// The endpoint other peers should use instead (port forwarding, several interfaces); its
    /// port defaults to the listener's.
    pub announce: Option<HostPort>,
    /// What it serves.
    pub shares: Shares,
    /// Registers only the files this accepts (all when `None`).
    pub(crate) only: Option<FileFilter>,
}

impl Registration {
    /// The endpoint to register, for a session the tracker sees coming from `observed`: the
    /// announced endpoint if any (resolved now, so a DNS change is followed at the next
    /// reconnect), else the listener's address, whose unspecified IP the tracker replaces with
    /// `observed`. Fails when the tracker would record an endpoint nothing listens on: an IPv6
    /// session for a listener that takes IPv4 only.
    pub(crate) async fn endpoint(&self, observed: IpAddr) -> Result<SocketAddr, ConnectError> {
        if let Some(a) = &self.announce {
            let addrs = a.resolve().await.map_err(|e| ConnectError::Announce { announce: a.to_string(), error: e })?;
            // The tracker requires the announced IP to be the session's own unless it allows
            // foreign endpoints: prefer the address of the session's family.
            let ip = addrs
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| ip.to_canonical().is_ipv4() == observed.to_canonical().is_ipv4())
                .or_else(|| addrs.first().map(SocketAddr::ip))
                .unwrap_or(observed);
            let port = if a.port() == 0 { self.listen.port() } else { a.port() };
            return Ok(SocketAddr::new(ip, port));
        }
        let listen = self.listen;
        let observed = observed.to_canonical();
        let takes = match listen {
            SocketAddr::V4(_) => observed.is_ipv4(),
            SocketAddr::V6(_) => observed.is_ipv6() || self.dual_stack,
        };
        if listen.ip().is_unspecified() && !takes {
            return Err(ConnectError::NotListening { endpoint: SocketAddr::new(observed, listen.port()), listen });
        }
        Ok(listen)
    }

    pub(crate) fn accepts(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|f| f(name))
    }
}

/// Splits files into Register requests that fit the tracker's limits (from its welcome) and ours:
/// at most its file cap each, and an encoded size under both frame limits. A file whose
/// metadata alone could not fit any frame is left out with a warning (sending it would only get
/// the session closed).
pub(crate) fn register_batches(files: Vec<RegisterFile>, welcome: &Welcome) -> Vec<Vec<RegisterFile>> {
    let max_files = (welcome.max_files_per_register as usize).max(1);
    let max_bytes = (welcome.max_frame as usize).min(DEFAULT_MAX_FRAME).saturating_sub(REGISTER_FRAME_SLACK).max(1);
    let mut batches: Vec<Vec<RegisterFile>> = Vec::new();
    let mut bytes = 0;
    for f in files {
        // Postcard size, over-estimated: a hash is 32 bytes, varints and a bitmap are small.
        let bitmap = match &f.have {
            Have::Complete => 0,
            Have::Partial(b) => b.as_bytes().len(),
        };
        let size = 64 + f.meta.name.len() + 32 * f.meta.chunk_hashes.len() + bitmap;
        if size > max_bytes {
            warn!(
                name = f.meta.name,
                size, max_bytes, "file metadata too large for the tracker's frames; not registered"
            );
            continue;
        }
        match batches.last_mut() {
            Some(b) if b.len() < max_files && bytes + size <= max_bytes => b.push(f),
            _ => {
                batches.push(vec![f]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    batches
}

/// Registers every file the registration accepts, at the endpoint for this connection; returns
/// that endpoint.
pub(super) async fn register_all(
    conn: &mut Conn,
    welcome: &Welcome,
    reg: &Registration,
    t: Duration,
) -> Result<SocketAddr, ConnectError> {
    const STEP: &str = "registration";
    let listen = reg.endpoint(welcome.observed.ip()).await?;
    let files = reg.shares.snapshot().into_iter().filter(|f| reg.accepts(&f.meta.name)).collect();
    let mut batches = register_batches(files, welcome);
    if batches.is_empty() {
        // Sets the endpoint, so the peer can chunk-register what it downloads.
        batches.push(Vec::new());
    }
    for files in batches {
        let n = files.len();
        let sent = sent(&files);
        match roundtrip(conn, TrackerRequest::Register(Register { listen, files }), t).await {
            Ok(TrackerResponse::Registered { results }) => {
                log_rejections(&results);
                reg.shares.record_results(&sent, &results);
                debug!(files = n, "registered");
            }
            Ok(other) => return Err(step_failed(STEP, other)),
            Err(e) => return Err(e.during(STEP)),
        }
    }
    Ok(listen)
}
