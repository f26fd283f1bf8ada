//! What a session answers to each request: one function per request kind ([`handle`]), each
//! calling one registry method and returning a typed reply, and [`answer`], which decodes the
//! request frame first (a large one on the heavy-work threads) and answers File Meta from the
//! frame the registry shares. The connection owns framing ([`crate::link`]) and the queueing of
//! replies ([`crate::reply`]); nothing here touches a socket.
//!
//! Every request is counted for the summary line (`summary.rs`), and a Register that refuses
//! anything says so in the log at `info`, in one line per request however many files it refuses.

use std::fmt;

use bytes::BytesMut;
use proto::codec::{MessageError, WireMessage};
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backlog::Queued;
use crate::http::metrics::RequestKind;
use crate::registry::{CheckedRegister, Registered, Registry};
use crate::reply::{encode_frame, Reply, OFFLOAD_REPLY};
use crate::session::{heavy_permit, Caller, End, Shared};
use crate::summary::Kind;

/// Request frames larger than this are decoded, and a Register checked, on the heavy-work
/// threads. Register's metadata makes them so: up to 2^18 hash merges per file, about 16 MiB to
/// decode, never on an async worker. So does a large Chunk Register Batch (2^18 indices are about
/// 1 MiB): only its decoding is heavy, and it is applied here like a small one, O(len) bit updates
/// under the write lock. Smaller frames (at most 8,192 chunk hashes, about a millisecond of
/// merging) are handled at once: queued for the heavy-work threads, a burst of thousands of peers
/// registering their shares at start would hold every waiting frame in memory (measured: tracker
/// RSS after 10,000 peers x 100 files registered, 1,000 at a time, went from 228 to 450 MiB with
/// a 64 KiB threshold; `cargo xtask bench tracker`).
const OFFLOAD_FRAME: usize = 256 * 1024;

/// The reply to one request frame, with the request's kind (for the metrics). A frame over
/// [`OFFLOAD_FRAME`] (whatever the request in it) is decoded, and a Register checked, on the
/// heavy-work threads; the registry update itself is made here, in order, and is fast.
pub(crate) async fn answer(
    shared: &Shared,
    caller: &Caller,
    frame: BytesMut,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<(RequestKind, Reply), End> {
    let request = if frame.len() <= OFFLOAD_FRAME {
        TrackerRequest::decode_body(frame)
    } else {
        let permit = heavy_permit(shared, queued, shutdown).await?;
        let registry = shared.registry.clone();
        // Not cancelled at shutdown: it is bounded by one frame's work, and owns its memory.
        let checked = shared
            .pool
            .run(move || {
                let _permit = permit;
                match TrackerRequest::decode_body(frame) {
                    Ok(TrackerRequest::Register(r)) => Offloaded::Register(registry.check_register(r.listen, r.files)),
                    other => Offloaded::Decoded(other),
                }
            })
            .await;
        match checked {
            Ok(Offloaded::Register(checked)) => {
                shared.counters.count(Kind::Register);
                let outcome = checked.and_then(|c| shared.registry.apply_register(caller.peer, c));
                return Ok((RequestKind::Register, Reply::Message(registered(caller, outcome))));
            }
            Ok(Offloaded::Decoded(request)) => request,
            Err(_) => return Err(End::Panicked),
        }
    };
    shared.counters.count(request.as_ref().map_or(Kind::Other, Kind::of));
    let kind = request.as_ref().map_or(RequestKind::Malformed, RequestKind::of);
    let reply = match request {
        Ok(TrackerRequest::FileMeta { name }) => file_meta(shared, &name, queued, shutdown).await?,
        Ok(req) => Reply::Message(handle(&shared.registry, caller, req)),
        Err(e) => Reply::Message(malformed(e)),
    };
    Ok((kind, reply))
}

/// What the blocking pool made of a large frame.
enum Offloaded {
    /// A Register, checked.
    Register(Result<CheckedRegister, RequestError>),
    /// Any other request (or none), decoded.
    Decoded(Result<TrackerRequest, MessageError>),
}

/// The reply to a frame that holds no request: the session answers it and reads on.
pub(crate) fn malformed(e: MessageError) -> TrackerResponse {
    TrackerResponse::Error(RequestError::Malformed(e.to_string()))
}

/// File Meta's reply: the file's frame as the registry keeps it, encoded by the first session
/// that asks (on the heavy-work threads if large; others asking meanwhile wait for it) and shared by
/// every session from then on.
async fn file_meta(shared: &Shared, name: &str, queued: &Queued, shutdown: &CancellationToken) -> Result<Reply, End> {
    let (meta, cell) = match shared.registry.meta_reply(name) {
        Ok(found) => found,
        Err(e) => return Ok(Reply::Message(TrackerResponse::Error(e))),
    };
    let encode = async {
        if 32 * meta.chunk_hashes.len() <= OFFLOAD_REPLY {
            return encode_frame(meta);
        }
        let permit = heavy_permit(shared, queued, shutdown).await?;
        shared
            .pool
            .run(move || {
                let _permit = permit;
                encode_frame(meta)
            })
            .await
            .map_err(|_| End::Panicked)?
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(End::Shutdown),
        _ = queued.dropped() => Err(End::Dropped),
        frame = cell.get_or_try_init(|| encode) => frame.map(|frame| Reply::Shared(frame.clone())),
    }
}

/// One function per request kind, each returning the typed reply.
fn handle(registry: &Registry, caller: &Caller, req: TrackerRequest) -> TrackerResponse {
    use TrackerResponse as R;
    let peer = caller.peer;
    let reply = match req {
        TrackerRequest::Hello(_) => Err(RequestError::AlreadyOpen),
        TrackerRequest::Register(r) => {
            let outcome = registry.check_register(r.listen, r.files).and_then(|c| registry.apply_register(peer, c));
            Ok(registered(caller, outcome))
        }
        TrackerRequest::FileList { after } => {
            let (files, more) = registry.list(after.as_deref());
            Ok(R::FileList { files, more })
        }
        // The session sends File Meta from the shared frame instead (see `file_meta`).
        TrackerRequest::FileMeta { name } => registry.meta(&name).map(R::FileMeta),
        // Listed where this caller reaches them: see `Registry::locations_via`.
        TrackerRequest::FileLocations { name } => {
            registry.locations_via(peer, &name, caller.local).map(R::FileLocations)
        }
        TrackerRequest::ChunkRegister { name, chunk } => {
            registry.chunk_register(peer, &name, chunk).map(|()| R::ChunkRegistered)
        }
        TrackerRequest::ChunkRegisterBatch { name, chunks } => {
            registry.chunk_register_batch(peer, &name, &chunks).map(|()| R::ChunkRegistered)
        }
        TrackerRequest::Leave => {
            registry.leave(peer);
            Ok(R::Left)
        }
        TrackerRequest::KeepAlive => Ok(R::KeepAlive),
        TrackerRequest::Unregister { name } => registry.unregister(peer, &name).map(|()| R::Unregistered),
        // Light: a few lookups under the read lock, a reply of at most `MAX_ROOT_MATCHES` files.
        TrackerRequest::FindRoot { prefix } => {
            registry.find_root(&prefix).map(|(files, more)| R::RootMatches { files, more })
        }
    };
    reply.unwrap_or_else(R::Error)
}

/// Register's reply, logged at `info` if it refuses anything: the request's error, or one line
/// for its refused files (how many, and the first by name and reason), never a line per file,
/// so a peer whose whole share is refused costs the log one line.
fn registered(caller: &Caller, outcome: Result<Registered, RequestError>) -> TrackerResponse {
    match outcome {
        Err(e) => {
            info!("Register from {} refused: {e}", caller.remote);
            TrackerResponse::Error(e)
        }
        Ok(Registered { results, first_refused }) => {
            if let Some(reason) = results.iter().find_map(|r| r.as_ref().err()) {
                let refused = results.iter().filter(|r| r.is_err()).count();
                let name = Shown(first_refused.as_deref().unwrap_or_default());
                info!(
                    "Register from {}: refused {refused} of {} files; the first, {name}: {reason}",
                    caller.remote,
                    results.len()
                );
            }
            TrackerResponse::Registered { results }
        }
    }
}

/// Characters of a file name the log shows: a name from the network may be as long as a frame.
const SHOWN_NAME: usize = 120;

/// A file name as the log shows it: quoted and escaped (it came from the network and may be
/// invalid, control characters included), cut short after [`SHOWN_NAME`] characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.char_indices().nth(SHOWN_NAME).map_or(self.0, |(i, _)| &self.0[..i]);
        write!(f, "{cut:?}")?;
        if cut.len() < self.0.len() {
            write!(f, " (cut short, {} bytes in all)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
