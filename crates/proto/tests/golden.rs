//! Golden bytes: the wire layout of a few messages is pinned, so an accidental format change
//! (a reordered enum variant, a changed field type) fails here rather than between two builds.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use proto::tracker::{TrackerRequest, TrackerResponse};
use proto::*;
use tokio_util::codec::Encoder;

fn enc<T: WireMessage>(m: T) -> Vec<u8> {
    let mut c = Codec::<T, T>::new(1 << 20);
    let mut b = BytesMut::new();
    c.encode(m, &mut b).unwrap();
    b.to_vec()
}

#[test]
fn golden_tracker_requests() {
    assert_eq!(enc(TrackerRequest::Hello(Hello::current())), [0, 0, 0, 6, 0, b'P', b'2', b'P', b'F', 2]);
    assert_eq!(
        enc(TrackerRequest::ChunkRegister { name: "ab".into(), chunk: 300 }),
        [0, 0, 0, 6, 5, 2, b'a', b'b', 0xac, 0x02]
    );
    assert_eq!(enc(TrackerRequest::Leave), [0, 0, 0, 1, 6]);
    assert_eq!(enc(TrackerRequest::KeepAlive), [0, 0, 0, 1, 7]);
}

#[test]
fn golden_tracker_responses() {
    assert_eq!(enc(TrackerResponse::ChunkRegistered), [0, 0, 0, 1, 5]);
    assert_eq!(enc(TrackerResponse::Error(tracker::RequestError::NotRegistered)), [0, 0, 0, 2, 8, 4]);
}

#[test]
fn golden_peer_messages() {
    assert_eq!(enc(peer::PeerRequest::GetChunk { chunk: 1 }), [0, 0, 0, 2, 1, 1]);
    assert_eq!(enc(peer::PeerRequest::GetFresh { chunk: 1 }), [0, 0, 0, 2, 2, 1]);
    let chunk = peer::PeerResponse::Chunk { chunk: 2, data: bytes::Bytes::from_static(b"xyz") };
    assert_eq!(enc(chunk), [0, 0, 0, 6, 1, 2, 3, b'x', b'y', b'z']);
    assert_eq!(enc(peer::PeerResponse::Have { chunk: 5 }), [0, 0, 0, 2, 4, 5]);
}
