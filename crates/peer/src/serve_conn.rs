//! The write side of an upload connection, and why one ends early.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use proto::codec::{chunk_frame_header, CodecError, PeerServerCodec};
use proto::limits::{DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use proto::peer::{PeerError, PeerResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Encoder, FramedRead};
use tracing::debug;

/// How long a refusal may take to send before the connection is dropped anyway.
pub(super) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an upload connection ended early. Its normal ends (the downloader closed it, went idle, or
/// was refused with a reply) are not errors.
#[derive(Debug, thiserror::Error)]
pub(super) enum UploadError {
    /// The downloader's requests could not be read: the transport failed or a frame was over the
    /// limit.
    #[error("cannot read requests: {0}")]
    Receive(#[source] CodecError),
    /// A reply could not be encoded.
    #[error("cannot encode reply: {0}")]
    Encode(#[source] CodecError),
    /// A chunk is longer than a frame can announce.
    #[error("chunk of {len} bytes too large to send")]
    FrameTooLarge {
        /// The chunk's length.
        len: usize,
    },
    /// Writing a reply failed.
    #[error("cannot send reply: {0}")]
    Io(#[source] io::Error),
    /// The socket accepted no more bytes: the downloader closed it.
    #[error("connection closed while sending")]
    Closed,
    /// No byte of a reply went out for the send deadline: the downloader is not reading.
    #[error("send made no progress for {after:?}")]
    Stalled {
        /// The send deadline.
        after: Duration,
    },
}

/// One downloader's connection: requests arrive through the codec; replies are encoded into a
/// small buffer, except chunk bytes, which are written straight from the chunk's buffer after
/// their header (one vectored write, no copy into a frame).
pub(super) struct Conn {
    pub(super) requests: FramedRead<OwnedReadHalf, PeerServerCodec>,
    out: OwnedWriteHalf,
    codec: PeerServerCodec,
    buf: BytesMut,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        let (rd, wr) = stream.into_split();
        Conn {
            requests: FramedRead::new(rd, PeerServerCodec::new(HANDSHAKE_MAX_FRAME)),
            out: wr,
            codec: PeerServerCodec::with_limits(HANDSHAKE_MAX_FRAME, DEFAULT_MAX_FRAME),
            buf: BytesMut::new(),
        }
    }

    pub(super) async fn send(&mut self, msg: PeerResponse, deadline: Duration) -> Result<(), UploadError> {
        self.send_all(std::iter::once(msg), deadline).await
    }

    /// Queues messages to go out with the next write.
    pub(super) fn queue(&mut self, msgs: impl IntoIterator<Item = PeerResponse>) -> Result<(), UploadError> {
        for msg in msgs {
            self.codec.encode(msg, &mut self.buf).map_err(UploadError::Encode)?;
        }
        Ok(())
    }

    /// Sends every message, after whatever is queued, in one write.
    pub(super) async fn send_all(
        &mut self,
        msgs: impl Iterator<Item = PeerResponse>,
        deadline: Duration,
    ) -> Result<(), UploadError> {
        self.queue(msgs)?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.write(&mut buf, deadline).await;
        buf.clear();
        self.buf = buf;
        r
    }

    /// Writes all of `frame`, failing if no byte of it goes out for `stalled` at any point: the
    /// deadline is on progress, not on the whole reply, so a slow reader gets all of a large one.
    pub(super) async fn write(&mut self, frame: &mut impl Buf, stalled: Duration) -> Result<(), UploadError> {
        while frame.has_remaining() {
            match timeout(stalled, self.out.write_buf(frame)).await {
                Ok(Ok(0)) => return Err(UploadError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(UploadError::Io(e)),
                Err(_) => return Err(UploadError::Stalled { after: stalled }),
            }
        }
        Ok(())
    }

    pub(super) async fn send_chunk(&mut self, chunk: u32, data: &[u8], deadline: Duration) -> Result<(), UploadError> {
        let len = u32::try_from(data.len()).map_err(|_| UploadError::FrameTooLarge { len: data.len() })?;
        let header = chunk_frame_header(chunk, len, DEFAULT_MAX_FRAME).map_err(UploadError::Encode)?;
        // Whatever is queued (announcements) goes first, in the same write.
        let mut queued = std::mem::take(&mut self.buf);
        let r = self.write(&mut (&mut queued).chain(header).chain(data), deadline).await;
        queued.clear();
        self.buf = queued;
        r
    }

    pub(super) async fn refuse(&mut self, e: PeerError) -> Result<(), UploadError> {
        debug!(error = %e, "refusing downloader");
        let _ = self.send(PeerResponse::Error(e), GOODBYE_TIMEOUT).await;
        Ok(())
    }
}
