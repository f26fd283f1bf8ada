//! What a session answers to each request: one function per request kind ([`handle`]), each
//! calling one registry method and returning a typed reply, and [`answer`], which decodes the
//! request frame first (a large one on the heavy-work threads) and answers File Meta from the
//! frame the registry shares. The connection owns framing ([`crate::link`]) and the queueing of
//! replies ([`crate::reply`]); nothing here touches a socket.

use bytes::BytesMut;
use proto::codec::{MessageError, WireMessage};
use proto::tracker::{RequestError, TrackerRequest, TrackerResponse};
use tokio_util::sync::CancellationToken;

use crate::backlog::Queued;
use crate::registry::{CheckedRegister, PeerId, Registry};
use crate::reply::{encode_frame, Reply, OFFLOAD_REPLY};
use crate::session::{heavy_permit, End, Shared};

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

/// The reply to one request frame. A frame over [`OFFLOAD_FRAME`] (whatever the request in it)
/// is decoded, and a Register checked, on the heavy-work threads; the registry update itself is
/// made here, in order, and is fast.
pub(crate) async fn answer(
    shared: &Shared,
    peer: PeerId,
    frame: BytesMut,
    queued: &Queued,
    shutdown: &CancellationToken,
) -> Result<Reply, End> {
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
                let results = checked.and_then(|c| shared.registry.apply_register(peer, c));
                let reply =
                    results.map_or_else(TrackerResponse::Error, |results| TrackerResponse::Registered { results });
                return Ok(Reply::Message(reply));
            }
            Ok(Offloaded::Decoded(request)) => request,
            Err(_) => return Err(End::Panicked),
        }
    };
    match request {
        Ok(TrackerRequest::FileMeta { name }) => file_meta(shared, &name, queued, shutdown).await,
        Ok(req) => Ok(Reply::Message(handle(&shared.registry, peer, req))),
        Err(e) => Ok(Reply::Message(malformed(e))),
    }
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
fn handle(registry: &Registry, peer: PeerId, req: TrackerRequest) -> TrackerResponse {
    use TrackerResponse as R;
    let reply = match req {
        TrackerRequest::Hello(_) => Err(RequestError::AlreadyOpen),
        TrackerRequest::Register(r) => {
            registry.register(peer, r.listen, r.files).map(|results| R::Registered { results })
        }
        TrackerRequest::FileList { after } => {
            let (files, more) = registry.list(after.as_deref());
            Ok(R::FileList { files, more })
        }
        // The session sends File Meta from the shared frame instead (see `file_meta`).
        TrackerRequest::FileMeta { name } => registry.meta(&name).map(R::FileMeta),
        TrackerRequest::FileLocations { name } => registry.locations(peer, &name).map(R::FileLocations),
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
    };
    reply.unwrap_or_else(R::Error)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
