//! A downloader's connection to one source: handshake for a file, pipelined chunk requests, typed
//! responses. Owns the framing; the download logic sees only typed messages.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proto::codec::{chunk_frame_len, PeerClientCodec};
use proto::peer::{PeerError, PeerRequest, PeerResponse};
use proto::{FileMeta, Have, Hello};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::error::{PeerProtocolError, SourceError};
use crate::lowat::{self, Hint, Hinting, LowWater};

/// Frame room beyond a chunk's bytes, for headers and the largest Welcome bitmap.
const FRAME_SLACK: usize = 64 * 1024;

/// A chunk frame's bytes beyond the chunk's: length prefix and header.
const CHUNK_HEADER_ROOM: usize = 16;

/// An open connection to a source, for one file.
pub(crate) struct PeerConn {
    framed: Framed<LowWater, Hinting<PeerClientCodec>>,
    /// Tells the socket the length of the frame expected next (see `lowat.rs`).
    hint: Arc<Hint>,
    /// The frame length of each answer still to come, oldest first (answers come in order).
    answers: VecDeque<usize>,
    /// The file's geometry, for the length of a requested chunk's frame.
    length: u64,
    chunk_size: u32,
    /// [`PeerRequest::BatchedHaves`] went out and nothing showed yet whether the source knows it:
    /// a source that does not answers it with one `Error(Malformed)`, which is not a refusal.
    batching_unconfirmed: bool,
}

impl PeerConn {
    /// Connects and completes the handshake; returns the chunks the source holds.
    pub(crate) async fn open(
        addr: SocketAddr,
        meta: &FileMeta,
        deadline: Duration,
    ) -> Result<(PeerConn, Have), SourceError> {
        let stream = match timeout(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SourceError::Connect(e)),
            Err(_) => return Err(SourceError::ConnectTimeout(deadline)),
        };
        let _ = stream.set_nodelay(true);
        let max_frame = meta.chunk_size as usize + FRAME_SLACK;
        // Woken once a chunk's bytes are all there, not for every segment of it.
        let room = meta.chunk_size as usize + CHUNK_HEADER_ROOM;
        let (stream, codec, hint) = lowat::pair(stream, PeerClientCodec::new(max_frame), room);
        let mut framed = Framed::new(stream, codec);
        let hello = PeerRequest::Hello { hello: Hello::current(), name: meta.name.clone(), root: meta.root };
        // Announcements in batches, asked for in the same write as the handshake.
        framed.feed(hello).await.map_err(SourceError::Lost)?;
        framed.send(PeerRequest::BatchedHaves).await.map_err(SourceError::Lost)?;
        // Armed once the Welcome is in: a Malformed before it is a refusal of the Hello.
        let mut conn = PeerConn {
            framed,
            hint,
            answers: VecDeque::new(),
            length: meta.length,
            chunk_size: meta.chunk_size,
            batching_unconfirmed: false,
        };
        match timeout(deadline, conn.next()).await.map_err(|_| SourceError::ConnectTimeout(deadline))?? {
            PeerResponse::Welcome { have } => {
                if let Have::Partial(b) = &have {
                    if b.len() != meta.num_chunks() {
                        return Err(SourceError::Protocol(PeerProtocolError::BitmapLength {
                            got: b.len(),
                            want: meta.num_chunks(),
                        }));
                    }
                }
                conn.batching_unconfirmed = true;
                Ok((conn, have))
            }
            PeerResponse::Error(e) => Err(SourceError::Refused(e)),
            other => Err(SourceError::Protocol(PeerProtocolError::ExpectedWelcome(Box::new(other)))),
        }
    }

    /// Queues a chunk request without flushing; `fresh` lets the source answer with another
    /// chunk it has not sent anyone yet ([`PeerRequest::GetFresh`]).
    pub(crate) async fn request(&mut self, chunk: u32, fresh: bool) -> Result<(), SourceError> {
        let req = if fresh { PeerRequest::GetFresh { chunk } } else { PeerRequest::GetChunk { chunk } };
        self.framed.feed(req).await.map_err(SourceError::Lost)?;
        // A fresh substitute has the asked chunk's length but maybe a shorter index: the shortest
        // frame it can come in.
        let size = u64::from(self.chunk_size);
        let len = self.length.saturating_sub(u64::from(chunk) * size).min(size) as u32;
        self.answers.push_back(chunk_frame_len(if fresh { 0 } else { chunk }, len));
        Ok(())
    }

    /// The source delivers `rate` bytes/s: how long the socket may wait for a whole frame.
    pub(crate) fn pace(&self, rate: f64) {
        self.hint.pace(self.chunk_size as usize + CHUNK_HEADER_ROOM, rate);
    }

    /// The connection's round-trip time, as the kernel measured it (None where it does not).
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.framed.get_ref().rtt()
    }

    /// Sends queued requests.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        self.framed.flush().await.map_err(SourceError::Lost)
    }

    /// The next response.
    pub(crate) async fn next(&mut self) -> Result<PeerResponse, SourceError> {
        loop {
            self.hint.expect(self.answers.front().copied().unwrap_or(0));
            let r = match self.framed.next().await {
                Some(Ok(Ok(r))) => r,
                Some(Ok(Err(e))) => return Err(SourceError::Protocol(PeerProtocolError::Undecodable(e))),
                Some(Err(e)) => return Err(SourceError::Lost(e)),
                None => return Err(SourceError::Closed),
            };
            if matches!(r, PeerResponse::Chunk { .. } | PeerResponse::DontHave { .. }) {
                self.answers.pop_front();
            }
            if self.batching_unconfirmed {
                match r {
                    // A source of an earlier version 3 did not know the request: it answered it
                    // first (requests are answered in order) and goes on, announcing one by one.
                    PeerResponse::Error(PeerError::Malformed(_)) => {
                        self.batching_unconfirmed = false;
                        continue;
                    }
                    // Answers to later requests, or a batch: it knew it.
                    PeerResponse::Chunk { .. } | PeerResponse::DontHave { .. } | PeerResponse::HaveMany { .. } => {
                        self.batching_unconfirmed = false;
                    }
                    _ => {}
                }
            }
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::codec::PeerServerCodec;
    use proto::limits::DEFAULT_MAX_FRAME;
    use std::net::Ipv4Addr;

    /// A source answering the Hello with `Malformed` refuses it: the one `Malformed` a downloader
    /// ignores is an older source's answer to `BatchedHaves`, after the Welcome.
    #[tokio::test]
    async fn a_malformed_answer_to_the_hello_is_a_refusal() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut c = Framed::new(stream, PeerServerCodec::new(DEFAULT_MAX_FRAME));
            let _ = c.next().await;
            c.send(PeerResponse::Error(PeerError::Malformed("bad hello".into()))).await.unwrap();
            // Keep the connection open until the client is done.
            let _ = c.next().await;
        });
        let meta = FileMeta::from_bytes("f", proto::limits::MIN_CHUNK_SIZE, b"x");
        let r = PeerConn::open(addr, &meta, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(SourceError::Refused(PeerError::Malformed(_)))), "{:?}", r.err());
        server.abort();
    }
}
