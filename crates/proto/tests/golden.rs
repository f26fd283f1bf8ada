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
    assert_eq!(enc(TrackerRequest::Hello(Hello::current())), [0, 0, 0, 6, 0, b'P', b'2', b'P', b'F', 3]);
    assert_eq!(
        enc(TrackerRequest::ChunkRegister { name: "ab".into(), chunk: 300 }),
        [0, 0, 0, 6, 5, 2, b'a', b'b', 0xac, 0x02]
    );
    assert_eq!(enc(TrackerRequest::Leave), [0, 0, 0, 1, 6]);
    assert_eq!(enc(TrackerRequest::KeepAlive), [0, 0, 0, 1, 7]);
    // Version 3: Chunk Register Batch, appended at the end of the enum.
    assert_eq!(
        enc(TrackerRequest::ChunkRegisterBatch { name: "ab".into(), chunks: vec![1, 300] }),
        [0, 0, 0, 8, 8, 2, b'a', b'b', 2, 1, 0xac, 0x02]
    );
    assert_eq!(enc(TrackerRequest::ChunkRegisterBatch { name: "".into(), chunks: vec![] }), [0, 0, 0, 3, 8, 0, 0]);
    // Appended at the end of the enum (the version stays 3): Find Root, its prefix a string.
    let mut want = vec![0, 0, 0, 18, 9, 16];
    want.extend(b"0123456789abcdef");
    assert_eq!(enc(TrackerRequest::FindRoot { prefix: "0123456789abcdef".into() }), want);
    // Appended at the end of the enum (the version stays 3): Unregister, one file by name.
    assert_eq!(enc(TrackerRequest::Unregister { name: "ab".into() }), [0, 0, 0, 4, 10, 2, b'a', b'b']);
}

#[test]
fn golden_tracker_responses() {
    assert_eq!(enc(TrackerResponse::ChunkRegistered), [0, 0, 0, 1, 5]);
    assert_eq!(enc(TrackerResponse::Error(tracker::RequestError::NotRegistered)), [0, 0, 0, 2, 8, 4]);
    // Version 3: the budgets' errors, appended at the ends of their enums.
    let rejected = |r| TrackerResponse::Registered { results: vec![Err(r)] };
    assert_eq!(
        enc(rejected(tracker::RejectReason::SessionMetaQuota { max: 300 })),
        [0, 0, 0, 6, 1, 1, 1, 7, 0xac, 0x02]
    );
    assert_eq!(
        enc(rejected(tracker::RejectReason::GlobalMetaQuota { max: 300 })),
        [0, 0, 0, 6, 1, 1, 1, 8, 0xac, 0x02]
    );
    assert_eq!(
        enc(TrackerResponse::Error(tracker::RequestError::Overloaded { len: 300, max: 1 })),
        [0, 0, 0, 5, 8, 13, 0xac, 0x02, 1]
    );
    // Appended at the end of RequestError (the version stays 3): an endpoint on another IP, with
    // both addresses (SocketAddr: variant, octets, varint port; IpAddr: variant, octets).
    let foreign = tracker::RequestError::ForeignEndpoint {
        announced: "10.0.0.1:7000".parse().unwrap(),
        observed: "10.0.0.2".parse().unwrap(),
    };
    assert_eq!(enc(TrackerResponse::Error(foreign)), [0, 0, 0, 14, 8, 14, 0, 10, 0, 0, 1, 0xd8, 0x36, 0, 10, 0, 0, 2]);
    let foreign_v6 = tracker::RequestError::ForeignEndpoint {
        announced: "[::1]:1".parse().unwrap(),
        observed: "::2".parse().unwrap(),
    };
    let mut want = vec![0, 0, 0, 37, 8, 14, 1];
    want.extend([0; 15].into_iter().chain([1, 1]));
    want.push(1);
    want.extend([0; 15].into_iter().chain([2]));
    assert_eq!(enc(TrackerResponse::Error(foreign_v6)), want);
    // Appended at the ends of their enums (the version stays 3): Find Root's reply, a list of
    // File List's summaries and `more`, and its error, the prefix's length.
    let summary = tracker::FileSummary {
        name: "a".into(),
        length: 5,
        root: Hash([7; 32]),
        chunk_size: 16384,
        sources: 2,
        complete_sources: 1,
    };
    let mut want = vec![0, 0, 0, 43, 9, 1, 1, b'a', 5];
    want.extend([7; 32]);
    want.extend([0x80, 0x80, 0x01, 2, 1, 1]);
    assert_eq!(enc(TrackerResponse::RootMatches { files: vec![summary], more: true }), want);
    assert_eq!(enc(TrackerResponse::RootMatches { files: vec![], more: false }), [0, 0, 0, 3, 9, 0, 0]);
    assert_eq!(
        enc(TrackerResponse::Error(tracker::RequestError::InvalidRootPrefix { prefix_len: 300 })),
        [0, 0, 0, 4, 8, 15, 0xac, 0x02]
    );
    // Appended at the ends of their enums (the version stays 3): Unregister's reply, and its
    // error, the name's length.
    assert_eq!(enc(TrackerResponse::Unregistered), [0, 0, 0, 1, 10]);
    assert_eq!(
        enc(TrackerResponse::Error(tracker::RequestError::NotHeld { name_len: 300 })),
        [0, 0, 0, 4, 8, 16, 0xac, 0x02]
    );
}

/// The File Meta reply holds its metadata in an `Arc` (the tracker encodes it from its registry
/// without a copy): on the wire it is exactly the metadata, as before.
#[test]
fn golden_file_meta_reply_is_the_plain_metadata() {
    let meta = FileMeta { name: "a".into(), length: 0, chunk_size: 16384, root: Hash([7; 32]), chunk_hashes: vec![] };
    let mut want = vec![0, 0, 0, 40, 3, 1, b'a', 0, 0x80, 0x80, 0x01];
    want.extend([7; 32]);
    want.push(0);
    assert_eq!(enc(TrackerResponse::FileMeta(std::sync::Arc::new(meta.clone()))), want);
    assert_eq!(want[5..], postcard::to_stdvec(&meta).unwrap()[..]);
}

#[test]
fn golden_peer_messages() {
    assert_eq!(enc(peer::PeerRequest::GetChunk { chunk: 1 }), [0, 0, 0, 2, 1, 1]);
    assert_eq!(enc(peer::PeerRequest::GetFresh { chunk: 1 }), [0, 0, 0, 2, 2, 1]);
    let chunk = peer::PeerResponse::Chunk { chunk: 2, data: bytes::Bytes::from_static(b"xyz") };
    assert_eq!(enc(chunk), [0, 0, 0, 6, 1, 2, 3, b'x', b'y', b'z']);
    assert_eq!(enc(peer::PeerResponse::Have { chunk: 5 }), [0, 0, 0, 2, 4, 5]);
    // Appended within version 3: variant 3 of the requests, 5 of the responses.
    assert_eq!(enc(peer::PeerRequest::BatchedHaves), [0, 0, 0, 1, 3]);
    assert_eq!(enc(peer::PeerResponse::HaveMany { chunks: vec![5, 300] }), [0, 0, 0, 5, 5, 2, 5, 0xac, 0x02]);
}
