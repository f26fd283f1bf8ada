//! Fewer wake-ups per received chunk: the receive low-water mark (`SO_RCVLOWAT`) of a downloader's
//! connection is kept at the size of the frame being waited for.
//!
//! A chunk arrives in several segments (a rate-limited link releases a few kilobytes at a time,
//! and a 64 KiB chunk frame is larger than one offloaded segment), and by default the kernel wakes
//! the reader for each: an `epoll_wait`, a `recv` and a context switch per segment. With the
//! low-water mark at the bytes the frame still needs, the kernel wakes the reader once they are
//! all there (or sooner, when the receive window is about to close or memory is short, so a
//! sender is never stalled by it).
//!
//! - Inside a frame, the mark is the bytes it still needs: exact, known from its length prefix.
//! - Between frames, while requests are outstanding, the next frame is most likely the answer to
//!   the oldest: a chunk, whose frame length the connection tells ([`Hint::expect`]). The mark is
//!   set to that, so the whole frame is read in one wake-up and, frame after frame of the same
//!   size, the mark seldom changes. A smaller frame in between (an announcement, a "don't have")
//!   is read with the chunk that follows it.
//! - With nothing outstanding, the mark is the exact need: announcements are read as they come.
//! - A wait with a mark above 1 byte lasts at most the patience: three frames' time at the
//!   connection's rate ([`Hint::pace`], 100 ms to 2 s; 400 ms until it is known). Then the mark
//!   drops to 1 byte until bytes are read: a short frame that no chunk followed is read then, and
//!   a kernel that would keep a reader asleep on a closing window cannot stall the connection.
//!
//! [`Hinting`] wraps the codec and records, at each decode, what the buffered bytes still need;
//! [`LowWater`] wraps the socket and sets the mark before each read, when it changed.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::{Decoder, Encoder};

use crate::sockopt;

/// The highest mark set. The kernel caps it at half its largest receive buffer (`tcp_rmem`), and a
/// mark above the buffer grows the buffer (and clamps the window to the mark until autotuning
/// grows it), so it stays near a default chunk's size.
pub(crate) const MAX_MARK: usize = 256 * 1024;

/// How long a mark may hold back the bytes that did arrive, until the connection says how fast
/// its frames come ([`Hint::pace`]): a short frame that no chunk follows is read at most this
/// late (and the next 25 ms tick).
pub(crate) const PATIENCE: Duration = Duration::from_millis(400);
/// The bounds of the patience a connection's pace sets: three frames' time.
pub(crate) const MIN_PATIENCE: Duration = Duration::from_millis(100);
pub(crate) const MAX_PATIENCE: Duration = Duration::from_secs(2);

/// What the codec and the connection tell the socket about the next read.
#[derive(Debug)]
pub(crate) struct Hint {
    /// Bytes the buffered frame surely still needs (of its length prefix, if that is incomplete).
    missing: AtomicUsize,
    /// The buffer holds no byte of the next frame's length prefix.
    between: AtomicBool,
    /// The length of the frame expected next, when one is (requests outstanding); 0 if none.
    expect: AtomicUsize,
    /// How long a mark may hold bytes back, microseconds.
    patience_us: AtomicU64,
}

impl Hint {
    /// The frame expected next is `len` bytes long, length prefix included (0: none expected).
    /// It must not be longer than the frame that comes: a guess too long holds a frame back
    /// until [`PATIENCE`] ends.
    pub(crate) fn expect(&self, len: usize) {
        self.expect.store(len, Ordering::Relaxed);
    }

    /// Frames of `frame` bytes arrive at `rate` bytes/s: a mark may hold bytes back for three
    /// frames' time, within [`MIN_PATIENCE`] and [`MAX_PATIENCE`], so a slow connection's frames are
    /// not given up on while they come.
    pub(crate) fn pace(&self, frame: usize, rate: f64) {
        let frames = Duration::try_from_secs_f64(3.0 * frame as f64 / rate).unwrap_or(MAX_PATIENCE);
        let patience = frames.clamp(MIN_PATIENCE, MAX_PATIENCE);
        self.patience_us.store(patience.as_micros() as u64, Ordering::Relaxed);
    }

    fn patience(&self) -> Duration {
        Duration::from_micros(self.patience_us.load(Ordering::Relaxed))
    }
}

/// A codec that records, at each decode, what the buffered bytes still need.
pub(crate) struct Hinting<C> {
    inner: C,
    hint: Arc<Hint>,
    /// Room kept in the read buffer between frames: for the frame expected most often.
    room: usize,
}

impl<C: Decoder> Decoder for Hinting<C> {
    type Item = C::Item;
    type Error = C::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        let item = self.inner.decode(src)?;
        // A read follows only a decode that needed more; after an item, the next decode decides.
        if item.is_none() {
            if src.is_empty() {
                // Room for a whole chunk frame, so the next read takes all that came.
                src.reserve(self.room);
            }
            self.hint.missing.store(proto::codec::frame_missing(src), Ordering::Relaxed);
            self.hint.between.store(src.is_empty(), Ordering::Relaxed);
        }
        Ok(item)
    }
}

impl<T, C: Encoder<T>> Encoder<T> for Hinting<C> {
    type Error = C::Error;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), C::Error> {
        self.inner.encode(item, dst)
    }
}

/// A TCP stream whose receive low-water mark follows its [`Hinting`] codec.
pub(crate) struct LowWater {
    stream: TcpStream,
    hint: Arc<Hint>,
    /// The mark last set (1 is the kernel's default); `None` once setting it failed, so a system
    /// without the option is not asked again.
    mark: Option<usize>,
    /// Ends a wait with a mark above 1 byte; armed while one is waited on.
    patience: Pin<Box<Sleep>>,
    armed: bool,
    /// The wait outlasted the patience: any byte wakes the reader until bytes arrive.
    gave_up: bool,
}

/// `stream` and `codec`, linked (see the module's text); `room` is the length of the frame
/// expected most often (a chunk's).
pub(crate) fn pair<C>(stream: TcpStream, codec: C, room: usize) -> (LowWater, Hinting<C>, Arc<Hint>) {
    // Nothing read yet: between frames (the first read comes before any decode).
    let hint = Arc::new(Hint {
        missing: AtomicUsize::new(proto::codec::LEN_PREFIX),
        between: AtomicBool::new(true),
        expect: AtomicUsize::new(0),
        patience_us: AtomicU64::new(PATIENCE.as_micros() as u64),
    });
    let patience = Box::pin(tokio::time::sleep_until(Instant::now()));
    // Linux wakes a reader early when its window is about to close, so a mark never stalls a
    // sender; elsewhere the mark is not used.
    let mark = cfg!(target_os = "linux").then_some(1);
    let stream = LowWater { stream, hint: hint.clone(), mark, patience, armed: false, gave_up: false };
    (stream, Hinting { inner: codec, hint: hint.clone(), room }, hint)
}

impl LowWater {
    /// The mark for the next wait.
    fn want(&self) -> usize {
        let h = &self.hint;
        let (missing, between) = (h.missing.load(Ordering::Relaxed), h.between.load(Ordering::Relaxed));
        mark_for(missing, between, h.expect.load(Ordering::Relaxed), self.gave_up)
    }

    /// Sets the mark to `want`, if it changed.
    fn set_mark(&mut self, want: usize) {
        let Some(current) = self.mark else { return };
        if want != current {
            self.mark = match sockopt::set_rcvlowat(self.stream.as_fd(), want) {
                Ok(()) => Some(want),
                Err(e) => {
                    tracing::debug!(error = %e, "SO_RCVLOWAT not set: woken for every segment");
                    None
                }
            };
        }
    }

    /// The mark now set (tests).
    #[cfg(test)]
    pub(crate) fn mark(&self) -> Option<usize> {
        self.mark
    }

    /// The kernel's smoothed round-trip time of the connection, if it tells.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        sockopt::tcp_rtt(self.stream.as_fd())
    }
}

/// The mark for a read that surely needs `missing` bytes, `between` frames or not, with a frame of
/// `expect` bytes expected (0: none), after a wait that outlasted its patience (`gave_up`) or not.
fn mark_for(missing: usize, between: bool, expect: usize, gave_up: bool) -> usize {
    if gave_up {
        1
    } else if between && expect > missing {
        expect.min(MAX_MARK)
    } else {
        missing.clamp(1, MAX_MARK)
    }
}

impl AsyncRead for LowWater {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let want = this.want();
            this.set_mark(want);
            let before = buf.filled().len();
            if let Poll::Ready(r) = Pin::new(&mut this.stream).poll_read(cx, buf) {
                if buf.filled().len() > before {
                    this.armed = false;
                    this.gave_up = false;
                }
                return Poll::Ready(r);
            }
            if this.mark.is_none_or(|m| m <= 1) {
                return Poll::Pending;
            }
            if !this.armed {
                let at = crate::tick::on_tick(Instant::now() + this.hint.patience());
                this.patience.as_mut().reset(at);
                this.armed = true;
            }
            if this.patience.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The bytes waited for did not all come in time (a guess that was wrong, or a kernel
            // that keeps a reader asleep on a closing window): read whatever is there.
            this.armed = false;
            this.gave_up = true;
        }
    }
}

impl AsyncWrite for LowWater {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use proto::codec::{chunk_frame_len, PeerClientCodec, PeerServerCodec};
    use proto::peer::PeerResponse;
    use std::net::Ipv4Addr;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    const CHUNK: usize = 64 * 1024;

    /// A connected pair: the server's raw stream, and the client's framed, hinting one.
    async fn connected() -> (TcpStream, Framed<LowWater, Hinting<PeerClientCodec>>, Arc<Hint>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, codec, hint) = pair(client.unwrap(), PeerClientCodec::new(2 * CHUNK), CHUNK + 16);
        (accepted.unwrap().0, Framed::new(stream, codec), hint)
    }

    fn encode(msg: PeerResponse) -> Vec<u8> {
        let mut out = BytesMut::new();
        PeerServerCodec::new(2 * CHUNK).encode(msg, &mut out).unwrap();
        out.to_vec()
    }

    fn chunk(i: u32) -> PeerResponse {
        PeerResponse::Chunk { chunk: i, data: Bytes::from(vec![i as u8; CHUNK]) }
    }

    /// Chunk frames written in pieces, with announcements between them, are read whole and in
    /// order while the mark follows them.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn frames_in_pieces_are_read_whole_while_the_mark_follows() {
        let (mut server, mut client, hint) = connected().await;
        let mut wire = Vec::new();
        for i in 0..3 {
            wire.extend(encode(PeerResponse::HaveMany { chunks: vec![i, 100 + i] }));
            wire.extend(encode(chunk(i)));
        }
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(9_000) {
                server.write_all(piece).await.unwrap();
                server.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        for i in 0..3 {
            hint.expect(chunk_frame_len(i, CHUNK as u32));
            let got = client.next().await.unwrap().unwrap().unwrap();
            assert_eq!(got, PeerResponse::HaveMany { chunks: vec![i, 100 + i] });
            let got = client.next().await.unwrap().unwrap().unwrap();
            assert_eq!(got, chunk(i));
        }
        let mark = client.get_ref().mark();
        assert!(mark.is_some(), "SO_RCVLOWAT is available on Linux");
        drop(writer.await.unwrap());
    }

    /// A frame shorter than the guess, with nothing after it, is read once the patience ends (not
    /// held for good); with nothing expected, a short frame is read at once.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_short_frame_is_held_by_a_guess_only_for_the_patience() {
        let (mut server, mut client, hint) = connected().await;
        let dont_have = PeerResponse::DontHave { chunk: 7 };
        hint.expect(chunk_frame_len(7, CHUNK as u32));
        server.write_all(&encode(dont_have.clone())).await.unwrap();
        let start = Instant::now();
        let got = tokio::time::timeout(PATIENCE * 20, client.next()).await.unwrap().unwrap().unwrap().unwrap();
        assert_eq!(got, dont_have);
        assert!(start.elapsed() >= PATIENCE, "held by the guess: {:?}", start.elapsed());

        hint.expect(0);
        let have = PeerResponse::HaveMany { chunks: vec![1, 2, 3] };
        let start = Instant::now();
        server.write_all(&encode(have.clone())).await.unwrap();
        let got = tokio::time::timeout(PATIENCE * 20, client.next()).await.unwrap().unwrap().unwrap().unwrap();
        assert_eq!(got, have);
        assert!(start.elapsed() < PATIENCE, "nothing expected: read at once, took {:?}", start.elapsed());
    }

    /// The mark is what the next read needs: the exact rest of a frame, the guess between frames
    /// (capped) unless given up on, and 1 byte at the least.
    #[test]
    fn the_mark_is_the_exact_need_or_the_guess() {
        assert_eq!(mark_for(4, true, 65_545, false), 65_545);
        assert_eq!(mark_for(4, true, 65_545, true), 1, "after the patience, any byte");
        assert_eq!(mark_for(386, false, 65_545, true), 1);
        assert_eq!(mark_for(4, true, 0, false), 4);
        assert_eq!(mark_for(386, false, 65_545, false), 386);
        assert_eq!(mark_for(0, false, 0, false), 1);
        assert_eq!(mark_for(4, true, 1 << 20, false), MAX_MARK);
        assert_eq!(mark_for(1 << 20, false, 0, false), MAX_MARK);
    }

    /// The patience is three frames' time at the connection's rate, within its bounds.
    #[test]
    fn the_patience_follows_the_pace() {
        let hint = Hint {
            missing: AtomicUsize::new(0),
            between: AtomicBool::new(true),
            expect: AtomicUsize::new(0),
            patience_us: AtomicU64::new(PATIENCE.as_micros() as u64),
        };
        hint.pace(CHUNK, 300.0 * 1024.0);
        assert_eq!(hint.patience(), Duration::from_millis(640));
        hint.pace(CHUNK, 1e9);
        assert_eq!(hint.patience(), MIN_PATIENCE);
        hint.pace(CHUNK, 1.0);
        assert_eq!(hint.patience(), MAX_PATIENCE);
        hint.pace(CHUNK, 0.0);
        assert_eq!(hint.patience(), MAX_PATIENCE);
    }
}
