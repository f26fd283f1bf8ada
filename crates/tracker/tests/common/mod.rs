//! A raw tracker client for the tests over real sockets: the handshake, then one request and its
//! reply at a time.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use proto::codec::TrackerClientCodec;
use proto::limits::{DEFAULT_MAX_FRAME, MIN_CHUNK_SIZE};
use proto::tracker::{RegisterFile, TrackerRequest, TrackerResponse, Welcome};
use proto::{FileMeta, Have, Hello};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A session with the tracker, past its handshake.
pub(crate) struct Client {
    conn: Framed<TcpStream, TrackerClientCodec>,
    /// The tracker's welcome.
    pub(crate) welcome: Welcome,
}

impl Client {
    /// Connects to `addr` and says hello.
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = Framed::new(stream, TrackerClientCodec::new(DEFAULT_MAX_FRAME));
        conn.send(TrackerRequest::Hello(Hello::current())).await.unwrap();
        let TrackerResponse::Welcome(welcome) = conn.next().await.unwrap().unwrap().unwrap() else {
            panic!("no welcome");
        };
        Client { conn, welcome }
    }

    /// Sends `req` and waits for its reply.
    pub(crate) async fn call(&mut self, req: TrackerRequest) -> TrackerResponse {
        self.conn.send(req).await.unwrap();
        self.conn.next().await.unwrap().unwrap().unwrap()
    }
}

/// A complete file named `name` of two chunks, its content set by `seed`.
pub(crate) fn file(name: &str, seed: u8) -> RegisterFile {
    let meta = FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &vec![seed; 2 * MIN_CHUNK_SIZE as usize]);
    RegisterFile { meta, have: Have::Complete }
}
