//! A request through a running tracker: a Chunk Register Batch long enough to be decoded on the
//! heavy-work threads (over `OFFLOAD_FRAME`) is applied, all or nothing, like a short one.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use proto::codec::{TrackerClientCodec, WireMessage};
use proto::limits::{DEFAULT_MAX_FRAME, MIN_CHUNK_SIZE};
use proto::tracker::{Register, RegisterFile, RequestError, TrackerRequest, TrackerResponse};
use proto::{Bitmap, FileMeta, Have, Hello};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::OFFLOAD_FRAME;
use crate::{Config, Tracker};

async fn call(conn: &mut Framed<TcpStream, TrackerClientCodec>, req: TrackerRequest) -> TrackerResponse {
    conn.send(req).await.unwrap();
    conn.next().await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn a_long_batch_is_offloaded_and_applied_all_or_nothing() {
    let tracker = Tracker::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Config::default()).await.unwrap();
    let stream = TcpStream::connect(tracker.addr()).await.unwrap();
    let mut conn = Framed::new(stream, TrackerClientCodec::new(DEFAULT_MAX_FRAME));
    assert!(matches!(call(&mut conn, TrackerRequest::Hello(Hello::current())).await, TrackerResponse::Welcome(_)));
    let file = |name: &str| {
        let meta = FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &vec![7; 5 * MIN_CHUNK_SIZE as usize]);
        RegisterFile { meta, have: Have::Partial(Bitmap::new(5)) }
    };
    let register = Register { listen: SocketAddr::from(([127, 0, 0, 1], 7000)), files: vec![file("f"), file("g")] };
    assert_eq!(
        call(&mut conn, TrackerRequest::Register(register)).await,
        TrackerResponse::Registered { results: vec![Ok(()), Ok(())] }
    );

    // 300,000 one-byte indices: a frame over the threshold, all in range.
    let chunks: Vec<u32> = (0..300_000).map(|i| i % 5).collect();
    let long = TrackerRequest::ChunkRegisterBatch { name: "f".into(), chunks: chunks.clone() };
    assert!(long.body_len().unwrap() > OFFLOAD_FRAME);
    assert_eq!(call(&mut conn, long).await, TrackerResponse::ChunkRegistered);
    // The same with one index past the end, last: refused whole.
    let mut bad = chunks;
    bad.push(5);
    let bad = TrackerRequest::ChunkRegisterBatch { name: "g".into(), chunks: bad };
    assert_eq!(
        call(&mut conn, bad).await,
        TrackerResponse::Error(RequestError::ChunkOutOfRange { chunk: 5, num_chunks: 5 })
    );
    let (list, _) = tracker.registry().list(None);
    let counts: Vec<(&str, u32, u32)> = list.iter().map(|f| (f.name.as_str(), f.sources, f.complete_sources)).collect();
    assert_eq!(counts, [("f", 1, 1), ("g", 0, 0)]);
    tracker.registry().check_invariants();
}
