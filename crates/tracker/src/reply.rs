//! Replies on their way out: each one's exact encoded size admitted by the [`Backlog`] (the budget
//! of bytes queued to clients over all connections) before it is queued, then encoded by appending
//! to the connection's write buffer, or, for a shared File Meta frame, queued after it as it is.
//! A reply that does not fit the frame limit or the budget goes out as a typed error (a few
//! bytes) in its place, so the client is never left waiting. Nothing here writes to a socket:
//! [`crate::link`] does, when the session flushes.
//!
//! Large replies (File Meta of a large file the first time, large File Locations or File List
//! pages) are sized and encoded on the heavy-work threads (`heavy.rs`): multi-megabyte encodes
//! would otherwise hold up every other session on the async worker.
//!
//! [`Backlog`]: crate::backlog::Backlog

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proto::codec::{CodecError, LEN_PREFIX};
use proto::tracker::{RequestError, TrackerResponse};
use proto::{FileMeta, Have};
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backlog::{Queued, Refused};
use crate::link::{Link, ServerCodec};
use crate::session::{flush, heavy_permit, End, Shared};

/// Replies whose [`size_hint`] is above this (File Meta of a large file the first time, large
/// File Locations or File List pages) are sized and encoded on the heavy-work threads: 8 MiB of
/// metadata takes milliseconds to encode, which would hold up every other session on the worker.
pub(crate) const OFFLOAD_REPLY: usize = 64 * 1024;

/// A reply to queue.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A message, to encode into the write buffer.
    Message(TrackerResponse),
    /// A whole frame already encoded and shared (a File Meta reply, encoded once per file and
    /// kept by the registry): written from the shared bytes, neither encoded nor copied again.
    Shared(Bytes),
}

impl Reply {
    /// Whether the reply is an error (for the metrics' `outcome`).
    pub(crate) fn is_error(&self) -> bool {
        matches!(self, Reply::Message(TrackerResponse::Error(_)))
    }
}

/// Queues `reply` after everything queued before it, once the backlog has admitted its size; in
/// its place, a typed error (a few bytes) if it exceeds the frame limit or the budget. A message
/// is encoded into the write buffer (a large one on the heavy-work threads, which get the write
/// buffer for the time it takes); a shared frame follows it as it is. Nothing is written here.
pub(crate) async fn queue(
    link: &mut Link,
    reply: Reply,
    shared: &Shared,
    queued: &Arc<Queued>,
    shutdown: &CancellationToken,
) -> Result<(), End> {
    if link.has_shared() {
        // A message encoded now would overtake the shared frame: write it out first. (The
        // session does not read on while one is queued, so this does not happen; the order
        // does not depend on it.)
        flush(link, shared.config.session_timeout, queued, shutdown).await?;
    }
    let max_frame = shared.config.max_frame;
    let reply = match reply {
        Reply::Message(reply) => reply,
        Reply::Shared(frame) => {
            let (len, body) = (frame.len(), frame.len().saturating_sub(LEN_PREFIX));
            let refusal = if body > max_frame {
                warn!(len = body, max = max_frame, "reply exceeds the frame limit");
                RequestError::ReplyTooLarge { len: body, max: max_frame }
            } else {
                match queued.admit(len) {
                    Ok(()) => {
                        link.queue_shared(frame);
                        queued.set(link.unsent());
                        return Ok(());
                    }
                    Err(Refused::Dropped) => return Err(End::Dropped),
                    Err(Refused::Overloaded { max }) => {
                        debug!(len, max, "reply refused: over the queued-bytes budget");
                        RequestError::Overloaded { len: len as u64, max: max as u64 }
                    }
                }
            };
            TrackerResponse::Error(refusal)
        }
    };
    if size_hint(&reply) <= OFFLOAD_REPLY {
        return admit_and_encode(link.write_buffer_mut(), reply, max_frame, queued);
    }
    let permit = heavy_permit(shared, queued, shutdown).await?;
    let mut buf = std::mem::take(link.write_buffer_mut());
    let queued = queued.clone();
    let encoded = shared
        .pool
        .run(move || {
            let _permit = permit;
            let result = admit_and_encode(&mut buf, reply, max_frame, &queued);
            (buf, result)
        })
        .await;
    match encoded {
        Ok((buf, result)) => {
            *link.write_buffer_mut() = buf;
            result
        }
        Err(_) => Err(End::Panicked),
    }
}

/// Encodes `reply` into `buf` once the backlog has admitted its exact size (computed first, in
/// a pass that writes nothing); in its place a typed error (a few bytes) if it exceeds the frame
/// limit or the queued-bytes budget.
fn admit_and_encode(buf: &mut BytesMut, reply: TrackerResponse, max_frame: usize, queued: &Queued) -> Result<(), End> {
    let mut codec = ServerCodec::with_limits(0, max_frame);
    let refusal = match codec.encoded_len(&reply) {
        Ok(len) => match queued.admit(len) {
            Ok(()) => return encode(&mut codec, buf, reply, queued),
            Err(Refused::Dropped) => return Err(End::Dropped),
            Err(Refused::Overloaded { max }) => {
                debug!(len, max, "reply refused: over the queued-bytes budget");
                RequestError::Overloaded { len: len as u64, max: max as u64 }
            }
        },
        Err(CodecError::FrameTooLarge { len, max }) => {
            // Nothing was written: say so instead of leaving the client waiting.
            warn!(len, max, "reply exceeds the frame limit");
            RequestError::ReplyTooLarge { len, max }
        }
        Err(e) => {
            warn!(error = %e, "reply cannot be encoded");
            return Err(End::SendFailed);
        }
    };
    let refusal = TrackerResponse::Error(refusal);
    let len = codec.encoded_len(&refusal).map_err(|_| End::SendFailed)?;
    match queued.admit(len) {
        // A refusal is a few bytes: it goes out even over the budget (and is counted).
        Ok(()) | Err(Refused::Overloaded { .. }) => encode(&mut codec, buf, refusal, queued),
        Err(Refused::Dropped) => Err(End::Dropped),
    }
}

fn encode(codec: &mut ServerCodec, buf: &mut BytesMut, reply: TrackerResponse, queued: &Queued) -> Result<(), End> {
    let result = codec.encode(reply, buf);
    queued.set(buf.len());
    result.map_err(|_| End::SendFailed)
}

/// About how many bytes `reply` encodes to, from its lengths alone (no pass over it): enough to
/// tell the few replies that may be large.
fn size_hint(reply: &TrackerResponse) -> usize {
    match reply {
        TrackerResponse::FileMeta(m) => 32 * m.chunk_hashes.len() + m.name.len(),
        TrackerResponse::FileLocations(l) => {
            let bitmaps: usize = l
                .sources
                .iter()
                .map(|s| match &s.have {
                    Have::Partial(b) => b.as_bytes().len(),
                    Have::Complete => 0,
                })
                .sum();
            5 * l.availability.len() + 32 * l.sources.len() + bitmaps
        }
        TrackerResponse::FileList { files, .. } | TrackerResponse::RootMatches { files, .. } => {
            files.iter().map(|f| f.name.len() + 64).sum()
        }
        TrackerResponse::Registered { results } => 16 * results.len(),
        _ => 0,
    }
}

/// A File Meta reply's whole frame, length prefix included.
pub(crate) fn encode_frame(meta: Arc<FileMeta>) -> Result<Bytes, End> {
    let mut buf = BytesMut::new();
    // Its size is checked against the frame limit each time it is queued.
    match ServerCodec::with_limits(0, usize::MAX).encode(TrackerResponse::FileMeta(meta), &mut buf) {
        Ok(()) => Ok(buf.freeze()),
        Err(e) => {
            warn!(error = %e, "metadata cannot be encoded");
            Err(End::SendFailed)
        }
    }
}
