//! The bytes side of a tracker connection, the only code that touches its socket: request frames
//! in, reply bytes out, in order, from two places (the framed write buffer, where replies are
//! encoded, then a shared frame that follows it); writes under a deadline on progress; reads that
//! yield to other connections; and the kernel's share of unsent bytes kept small.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use proto::codec::{Codec, CodecError, MessageError, WireMessage};
use proto::tracker::{RequestError, TrackerResponse};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tracing::debug;

/// The tracker's codec: request frames in (decoded by the session, see [`RequestFrame`]),
/// replies out.
pub(crate) type ServerCodec = Codec<RequestFrame, TrackerResponse>;

type Conn = Framed<Fair<TcpStream>, ServerCodec>;

/// What reading a connection gives: a request frame's body, a frame that holds no message, or
/// a framing failure (fatal); `None` at the end of the stream.
pub(crate) type Incoming = Option<Result<Result<BytesMut, MessageError>, CodecError>>;

/// How long a goodbye (an error before closing) may take to send.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes one connection may read in a row before its task yields to the others: a client
/// streaming a 16 MiB Register would otherwise hold a worker for the whole frame.
const READ_SLICE: usize = 256 * 1024;

/// Most reply bytes the kernel holds for a connection beyond those in flight (Linux's
/// `TCP_NOTSENT_LOWAT`); the rest wait in the tracker, where the backlog counts them.
const KERNEL_UNSENT: u32 = 128 * 1024;

/// Buffers above this capacity are released once empty: one large Register must not pin its
/// frame's worth of memory for the rest of a long, mostly idle session.
const KEEP_BUFFER: usize = 64 * 1024;

/// Shared frames this small are copied into the write buffer rather than queued after it.
const COPY_SHARED: usize = 64 * 1024;

/// A request frame's body, not yet decoded: the session decodes small ones at once and sends
/// large ones to the blocking pool.
#[derive(Debug)]
pub(crate) struct RequestFrame(BytesMut);

impl WireMessage for RequestFrame {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), postcard::Error> {
        dst.extend_from_slice(&self.0);
        Ok(())
    }

    fn body_len(&self) -> Result<usize, postcard::Error> {
        Ok(self.0.len())
    }

    fn decode_body(frame: BytesMut) -> Result<Self, MessageError> {
        Ok(RequestFrame(frame))
    }
}

/// Why replies could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The socket failed.
    Failed,
    /// No byte left for the whole deadline: the client is not reading.
    Stalled,
}

/// A connection, as its session reads and writes it.
#[derive(Debug)]
pub(crate) struct Link {
    conn: Conn,
    /// What is left to write of a shared frame queued after the write buffer.
    shared: Option<Bytes>,
}

impl Link {
    /// A connection just accepted, accepting frames of at most `max_decode` bytes and sending
    /// frames of at most `max_encode`.
    pub(crate) fn new(stream: TcpStream, max_decode: usize, max_encode: usize) -> Link {
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream);
        let conn = Framed::new(Fair { inner: stream, run: 0 }, ServerCodec::with_limits(max_decode, max_encode));
        Link { conn, shared: None }
    }

    /// Changes the receive limit (from the handshake's to the session's).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.conn.codec_mut().set_max_frame(max_frame);
    }

    /// The next request frame.
    pub(crate) async fn next(&mut self) -> Incoming {
        self.conn.next().await.map(|r| r.map(|m| m.map(|RequestFrame(body)| body)))
    }

    /// The next request frame if one is buffered or readable at once; `None` if not.
    pub(crate) fn next_now(&mut self) -> Option<Incoming> {
        self.next().now_or_never()
    }

    /// Encodes `reply` and writes everything queued (small messages only: the handshake's).
    pub(crate) async fn send(&mut self, reply: TrackerResponse) -> Result<(), CodecError> {
        self.conn.send(reply).await
    }

    /// Reply bytes queued and not yet written.
    pub(crate) fn unsent(&self) -> usize {
        self.conn.write_buffer().len() + self.shared.as_ref().map_or(0, Bytes::len)
    }

    /// Whether a shared frame is queued: a reply encoded into the write buffer now would go out
    /// before it, so the caller writes it out first.
    pub(crate) fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The write buffer, where replies are encoded (see [`Link::has_shared`]).
    pub(crate) fn write_buffer_mut(&mut self) -> &mut BytesMut {
        self.conn.write_buffer_mut()
    }

    /// Queues a whole frame shared with other connections, after everything queued: written
    /// from the shared bytes, not copied (unless it is small).
    pub(crate) fn queue_shared(&mut self, frame: Bytes) {
        self.shared = match self.shared.take() {
            None if frame.len() <= COPY_SHARED => {
                self.conn.write_buffer_mut().extend_from_slice(&frame);
                None
            }
            None => Some(frame),
            // Two in a row (the session writes one out before reading on, so this is rare): one
            // copy keeps them in order.
            Some(first) => {
                let mut both = BytesMut::with_capacity(first.len() + frame.len());
                both.extend_from_slice(&first);
                both.extend_from_slice(&frame);
                Some(both.freeze())
            }
        };
    }

    /// Writes out everything queued: the write buffer, then the shared frame. The deadline is on
    /// progress: this fails only when no byte has left for `idle`, however long the whole takes,
    /// so an honest client on a slow link gets a large reply whole while one that stops reading
    /// is cut off. `sent(unsent)` is called whenever bytes leave, with what is left.
    pub(crate) async fn flush(&mut self, idle: Duration, mut sent: impl FnMut(usize)) -> Result<(), WriteError> {
        let mut unsent = self.unsent();
        if unsent == 0 {
            return Ok(());
        }
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        poll_fn(|cx| {
            let result = self.poll_write_out(cx);
            let now = self.unsent();
            if now < unsent {
                unsent = now;
                sent(now);
                deadline.as_mut().reset(Instant::now() + idle);
            }
            match result {
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(WriteError::Stalled)),
                other => other,
            }
        })
        .await
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            if !self.conn.write_buffer().is_empty() {
                match Sink::<TrackerResponse>::poll_flush(Pin::new(&mut self.conn), cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Failed)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(frame) = self.shared.as_mut() else { return Poll::Ready(Ok(())) };
            match Pin::new(self.conn.get_mut()).poll_write(cx, frame) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Failed)),
                Poll::Ready(Ok(n)) => {
                    frame.advance(n);
                    if frame.is_empty() {
                        self.shared = None;
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Releases buffers that grew large, once they are empty.
    pub(crate) fn shrink_buffers(&mut self) {
        if self.conn.read_buffer().is_empty() && self.conn.read_buffer().capacity() > KEEP_BUFFER {
            *self.conn.read_buffer_mut() = BytesMut::new();
        }
        if self.conn.write_buffer().is_empty() && self.conn.write_buffer().capacity() > KEEP_BUFFER {
            *self.conn.write_buffer_mut() = BytesMut::new();
        }
    }

    /// Sends `err` after whatever is still queued (a goodbye in the middle of a frame would
    /// garble both), within [`GOODBYE_TIMEOUT`], and closes.
    pub(crate) async fn goodbye(mut self, err: RequestError) {
        let send = async {
            SinkExt::<TrackerResponse>::flush(&mut self.conn).await?;
            if let Some(mut frame) = self.shared.take() {
                self.conn.get_mut().write_all_buf(&mut frame).await?;
            }
            self.conn.send(TrackerResponse::Error(err)).await
        };
        let _ = timeout(GOODBYE_TIMEOUT, send).await;
    }
}

/// Keeps the kernel from taking megabytes of replies for a client that does not read: by default
/// it grows a socket's send buffer up to 4 MiB, copied (and held, outside the tracker's budget)
/// for every such client, which on a small machine is what such an attack costs most. Bytes in
/// flight are not limited, so a client that reads gets replies as fast as before.
fn limit_unsent(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(KERNEL_UNSENT) {
        debug!(error = %e, "cannot limit the kernel's unsent bytes");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, KERNEL_UNSENT);
}

/// A stream whose reads yield to other tasks after every [`READ_SLICE`] bytes; writes pass
/// through (the kernel takes little at a time, see [`limit_unsent`]).
#[derive(Debug)]
struct Fair<S> {
    inner: S,
    /// Bytes read since this connection's task last yielded.
    run: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Fair<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.run >= READ_SLICE {
            self.run = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => self.run += buf.filled().len() - before,
            Poll::Pending => self.run = 0,
            Poll::Ready(Err(_)) => {}
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fair<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
