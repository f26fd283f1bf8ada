//! Codec tests: every message round-trips, frames split and merge correctly, and bad input of
//! every kind gives a typed error, never a panic.

#![allow(clippy::unwrap_used)]

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proto::bitmap::{Bitmap, Have};
use proto::codec::LEN_PREFIX;
use proto::limits::MIN_CHUNK_SIZE;
use proto::peer::{PeerError, PeerRequest, PeerResponse};
use proto::tracker::*;
use proto::*;
use tokio_util::codec::{Decoder, Encoder};

fn meta() -> FileMeta {
    let data: Vec<u8> = (0..3 * MIN_CHUNK_SIZE as usize + 11).map(|i| i as u8).collect();
    FileMeta::from_bytes("dir/file.bin", MIN_CHUNK_SIZE, &data)
}

fn requests() -> Vec<TrackerRequest> {
    let mut bm = Bitmap::new(4);
    bm.set(2);
    vec![
        TrackerRequest::Hello(Hello::current()),
        TrackerRequest::Register(Register {
            listen: "10.0.0.1:7000".parse().unwrap(),
            files: vec![
                RegisterFile { meta: meta(), have: Have::Complete },
                RegisterFile { meta: meta(), have: Have::Partial(bm) },
            ],
        }),
        TrackerRequest::Register(Register { listen: "[::1]:1".parse().unwrap(), files: vec![] }),
        TrackerRequest::FileList { after: None },
        TrackerRequest::FileList { after: Some("a".into()) },
        TrackerRequest::FileMeta { name: "x".into() },
        TrackerRequest::FileLocations { name: "x".into() },
        TrackerRequest::ChunkRegister { name: "x".into(), chunk: u32::MAX },
        TrackerRequest::Leave,
        TrackerRequest::KeepAlive,
        TrackerRequest::ChunkRegisterBatch { name: "x".into(), chunks: vec![0, 3, 3, u32::MAX] },
        TrackerRequest::ChunkRegisterBatch { name: "dir/file.bin".into(), chunks: vec![] },
        TrackerRequest::ChunkRegisterBatch { name: "x".into(), chunks: (0..1 << 18).collect() },
        TrackerRequest::FindRoot { prefix: meta().root.to_string() },
        TrackerRequest::FindRoot { prefix: "0123456789ABCDEF".into() },
        // Decoding does not check the prefix: the tracker refuses it with a typed error.
        TrackerRequest::FindRoot { prefix: "not hex".into() },
        TrackerRequest::Unregister { name: "dir/file.bin".into() },
        // Decoding does not check the name: the tracker refuses it with a typed error.
        TrackerRequest::Unregister { name: "../x".into() },
    ]
}

fn responses() -> Vec<TrackerResponse> {
    let mut bm = Bitmap::new(4);
    bm.set(0);
    vec![
        TrackerResponse::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            keepalive_ms: 1000,
            session_timeout_ms: 3000,
            observed: "127.0.0.1:5555".parse().unwrap(),
            max_frame: 1 << 24,
            max_files_per_register: 1024,
        }),
        TrackerResponse::Registered {
            results: vec![
                Ok(()),
                Err(RejectReason::InvalidName(NameError::DotComponent)),
                Err(RejectReason::InconsistentMeta(MetaError::RootMismatch)),
                Err(RejectReason::ContentConflict { existing: meta().root }),
                Err(RejectReason::SessionQuota { max: 3 }),
                Err(RejectReason::SessionMetaQuota { max: 1 << 28 }),
                Err(RejectReason::GlobalMetaQuota { max: 1 << 31 }),
            ],
        },
        TrackerResponse::FileList {
            files: vec![FileSummary {
                name: "a".into(),
                length: 5,
                root: meta().root,
                chunk_size: MIN_CHUNK_SIZE,
                sources: 2,
                complete_sources: 1,
            }],
            more: true,
        },
        TrackerResponse::FileMeta(std::sync::Arc::new(meta())),
        TrackerResponse::FileLocations(Locations {
            root: meta().root,
            num_chunks: 4,
            total_sources: 2,
            sources: vec![
                SourceInfo { addr: "1.2.3.4:5".parse().unwrap(), have: Have::Complete },
                SourceInfo { addr: "1.2.3.5:5".parse().unwrap(), have: Have::Partial(bm) },
            ],
            availability: vec![2, 1, 1, 1],
        }),
        TrackerResponse::ChunkRegistered,
        TrackerResponse::Left,
        TrackerResponse::KeepAlive,
        TrackerResponse::Error(RequestError::ChunkOutOfRange { chunk: 9, num_chunks: 4 }),
        TrackerResponse::Error(RequestError::Handshake(HandshakeError::VersionMismatch { ours: 1, theirs: 9 })),
        TrackerResponse::Error(RequestError::ReplyTooLarge { len: 1 << 25, max: 1 << 24 }),
        TrackerResponse::Error(RequestError::Overloaded { len: 1 << 23, max: 1 << 28 }),
        TrackerResponse::Error(RequestError::ForeignEndpoint {
            announced: "10.0.0.1:7000".parse().unwrap(),
            observed: "10.0.0.2".parse().unwrap(),
        }),
        TrackerResponse::Error(RequestError::ForeignEndpoint {
            announced: "[2001:db8::1]:65535".parse().unwrap(),
            observed: "::1".parse().unwrap(),
        }),
        TrackerResponse::RootMatches {
            files: ["a", "b"]
                .map(|name| FileSummary {
                    name: name.into(),
                    length: 5,
                    root: meta().root,
                    chunk_size: MIN_CHUNK_SIZE,
                    sources: 2,
                    complete_sources: 1,
                })
                .to_vec(),
            more: true,
        },
        TrackerResponse::RootMatches { files: vec![], more: false },
        TrackerResponse::Error(RequestError::InvalidRootPrefix { prefix_len: 15 }),
        TrackerResponse::Error(RequestError::InvalidRootPrefix { prefix_len: u32::MAX }),
        TrackerResponse::Unregistered,
        TrackerResponse::Error(RequestError::NotHeld { name_len: 12 }),
    ]
}

fn peer_responses() -> Vec<PeerResponse> {
    vec![
        PeerResponse::Welcome { have: Have::Partial(Bitmap::full(9)) },
        PeerResponse::Chunk { chunk: 3, data: Bytes::from(vec![7u8; 1000]) },
        PeerResponse::Chunk { chunk: 0, data: Bytes::new() },
        PeerResponse::DontHave { chunk: 1 },
        PeerResponse::Have { chunk: 70_000 },
        PeerResponse::Error(PeerError::UnknownFile),
        PeerResponse::HaveMany { chunks: vec![0, 70_000, u32::MAX] },
        PeerResponse::HaveMany { chunks: vec![] },
    ]
}

fn encode_all<T: WireMessage + Clone>(msgs: &[T]) -> BytesMut {
    let mut codec = Codec::<T, T>::new(limits::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m.clone(), &mut buf).unwrap();
    }
    buf
}

fn decode_all<T: WireMessage>(mut buf: BytesMut) -> Vec<T> {
    let mut codec = Codec::<T, T>::new(limits::DEFAULT_MAX_FRAME);
    let mut out = Vec::new();
    while let Some(m) = codec.decode(&mut buf).unwrap() {
        out.push(m.unwrap());
    }
    assert!(buf.is_empty());
    out
}

/// All messages of one kind, encoded back to back into one buffer, decode to the same list:
/// round-trip and several frames in one buffer at once.
#[test]
fn every_message_round_trips() {
    let r = requests();
    assert_eq!(decode_all::<TrackerRequest>(encode_all(&r)), r);
    let r = responses();
    assert_eq!(decode_all::<TrackerResponse>(encode_all(&r)), r);
    let r = peer_responses();
    assert_eq!(decode_all::<PeerResponse>(encode_all(&r)), r);
    let r = vec![
        PeerRequest::Hello { hello: Hello::current(), name: "f".into(), root: meta().root },
        PeerRequest::GetChunk { chunk: 2 },
        PeerRequest::GetFresh { chunk: 70_000 },
        PeerRequest::BatchedHaves,
    ];
    assert_eq!(decode_all::<PeerRequest>(encode_all(&r)), r);
}

/// Every proper prefix of a frame decodes to "need more", and leaves the buffer intact.
#[test]
fn every_prefix_needs_more() {
    let full = encode_all(&responses()[..5]);
    let first_len = LEN_PREFIX + u32::from_be_bytes(full[..4].try_into().unwrap()) as usize;
    for cut in 0..first_len {
        let mut codec = TrackerClientCodec::new(limits::DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&full[..cut]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "prefix {cut}");
    }
}

#[test]
fn encoding_appends_without_touching_buffered_frames() {
    let mut codec = TrackerServerCodec::new(limits::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    codec.encode(TrackerResponse::Left, &mut buf).unwrap();
    let first = buf.clone();
    codec.encode(TrackerResponse::KeepAlive, &mut buf).unwrap();
    assert_eq!(&buf[..first.len()], &first[..]);
}

#[test]
fn oversized_length_prefix_is_fatal() {
    for len in [u32::MAX, 1025] {
        let mut codec = TrackerServerCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        buf.put_slice(&[0; 16]);
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { max: 1024, .. }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }
    // Exactly at the limit is fine (it is just an undecodable body).
    let mut codec = TrackerServerCodec::new(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1024);
    buf.put_slice(&[0xff; 1024]);
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(MessageError::Decode(_))))));
}

#[test]
fn encoding_an_oversized_message_fails_cleanly() {
    let mut codec = PeerServerCodec::new(100);
    let mut buf = BytesMut::new();
    codec.encode(PeerResponse::DontHave { chunk: 1 }, &mut buf).unwrap();
    let before = buf.clone();
    let err = codec.encode(PeerResponse::Chunk { chunk: 0, data: Bytes::from(vec![0u8; 200]) }, &mut buf);
    assert!(matches!(err, Err(CodecError::FrameTooLarge { max: 100, .. })));
    assert_eq!(buf, before);
}

fn frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf
}

/// A garbage body is a per-message error: the next frame still decodes.
#[test]
fn garbage_body_is_recoverable() {
    let mut codec = TrackerServerCodec::new(1024);
    let mut buf = frame(&[0xff, 0xff, 0xff]);
    buf.extend_from_slice(&frame(&[]));
    buf.extend_from_slice(&encode_all(&[TrackerRequest::Leave]));
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(MessageError::Decode(_))))));
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(MessageError::Decode(_))))));
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), TrackerRequest::Leave);
}

#[test]
fn trailing_bytes_and_bad_payload_length_are_errors() {
    let mut body = encode_all(&[TrackerRequest::Leave]).split_off(LEN_PREFIX).to_vec();
    body.push(0);
    let mut codec = TrackerServerCodec::new(1024);
    assert_eq!(codec.decode(&mut frame(&body)).unwrap().unwrap(), Err(MessageError::TrailingBytes(1)));

    let enc = encode_all(&[PeerResponse::Chunk { chunk: 1, data: Bytes::from_static(b"abcd") }]);
    let mut short = enc[LEN_PREFIX..enc.len() - 1].to_vec();
    let mut codec = PeerClientCodec::new(1024);
    assert!(matches!(
        codec.decode(&mut frame(&short)).unwrap().unwrap(),
        Err(MessageError::PayloadLength { announced: 4, actual: 3 })
    ));
    short.extend_from_slice(b"xy");
    assert!(matches!(codec.decode(&mut frame(&short)).unwrap().unwrap(), Err(MessageError::PayloadLength { .. })));
}

/// A body that claims a huge Vec or String inside a small frame fails without allocating it.
#[test]
fn length_bomb_inside_small_frame() {
    // Variant 1 (Register), listen addr V4 (variant 0) 1.2.3.4:5, then a files Vec claiming 2^32-1 entries.
    let mut body = vec![1u8, 0, 1, 2, 3, 4, 5];
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut codec = TrackerServerCodec::new(1024);
    assert!(matches!(codec.decode(&mut frame(&body)), Ok(Some(Err(MessageError::Decode(_))))));
    // FileMeta { name: String of 2^32-1 bytes }.
    let body = [3u8, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'];
    assert!(matches!(codec.decode(&mut frame(&body)), Ok(Some(Err(MessageError::Decode(_))))));
}

#[test]
fn bitmaps_from_the_wire_are_validated() {
    // FileLocations reply with a source whose bitmap has len 9 but 1 byte.
    let good = TrackerResponse::FileLocations(Locations {
        root: meta().root,
        num_chunks: 9,
        total_sources: 1,
        sources: vec![SourceInfo { addr: "1.2.3.4:5".parse().unwrap(), have: Have::Partial(Bitmap::new(9)) }],
        availability: vec![0; 9],
    });
    let enc = encode_all(&[good]);
    let body = &enc[LEN_PREFIX..];
    // The bitmap is encoded as len(9) then a 2-byte vec: [9, 2, 0, 0]. Find and shrink it.
    let pos = body.windows(4).position(|w| w == [9, 2, 0, 0]).unwrap();
    let mut bad = body[..pos].to_vec();
    bad.extend_from_slice(&[9, 1, 0]);
    bad.extend_from_slice(&body[pos + 4..]);
    let mut codec = TrackerClientCodec::new(1 << 20);
    assert!(matches!(codec.decode(&mut frame(&bad)), Ok(Some(Err(MessageError::Decode(_))))));
}

proptest! {
    /// Arbitrary bytes never panic any decoder; they yield messages, errors or "need more".
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fn drain<T: WireMessage>(bytes: &[u8]) {
            let mut codec = Codec::<T, T>::new(512);
            let mut buf = BytesMut::from(bytes);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
        drain::<TrackerRequest>(&bytes);
        drain::<TrackerResponse>(&bytes);
        drain::<PeerRequest>(&bytes);
        drain::<PeerResponse>(&bytes);
    }

    /// Arbitrary bodies inside valid frames never panic and never kill the stream.
    #[test]
    fn arbitrary_bodies_are_per_message_errors(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut codec = TrackerServerCodec::new(512);
        let mut buf = frame(&body);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
        prop_assert!(buf.is_empty());
    }
}

/// A client announcing a huge frame gets at most RESERVE_AHEAD reserved until its bytes arrive.
#[test]
fn announced_frames_are_not_reserved_up_front() {
    let mut codec = TrackerServerCodec::new(16 << 20);
    let mut buf = BytesMut::new();
    buf.put_u32((16 << 20) - 1);
    buf.put_u8(0);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() <= proto::codec::RESERVE_AHEAD + 64, "reserved {}", buf.capacity());
    // As the body arrives the frame still decodes.
    buf.extend_from_slice(&vec![0u8; (16 << 20) - 2]);
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(MessageError::TrailingBytes(_))))));
    assert!(buf.is_empty());
}

/// The separately written chunk header plus the data is byte for byte the encoder's frame.
#[test]
fn chunk_frame_header_matches_the_encoder() {
    for len in [0usize, 1, 1000, 70_000] {
        let data = Bytes::from(vec![9u8; len]);
        let mut framed = BytesMut::new();
        PeerServerCodec::new(1 << 20)
            .encode(PeerResponse::Chunk { chunk: 300, data: data.clone() }, &mut framed)
            .unwrap();
        let mut split = proto::codec::chunk_frame_header(300, len as u32, 1 << 20).unwrap();
        split.extend_from_slice(&data);
        assert_eq!(split, framed);
    }
    assert!(matches!(proto::codec::chunk_frame_header(1, 2000, 1000), Err(proto::CodecError::FrameTooLarge { .. })));
}

/// `chunk_frame_len` is the encoder's frame length, for indices and lengths of every varint width.
#[test]
fn chunk_frame_len_is_the_encoders() {
    let mut codec = PeerServerCodec::new(1 << 24);
    for chunk in [0u32, 1, 127, 128, 16_383, 16_384, 1 << 21, u32::MAX] {
        for len in [0usize, 1, 127, 128, 65_536, 1 << 21] {
            let mut framed = BytesMut::new();
            let data = Bytes::from(vec![0u8; len]);
            codec.encode(PeerResponse::Chunk { chunk, data }, &mut framed).unwrap();
            assert_eq!(proto::codec::chunk_frame_len(chunk, len as u32), framed.len(), "chunk {chunk}, {len} bytes");
        }
    }
}

/// `encoded_len` says exactly what encoding appends, for every message, without writing.
#[test]
fn encoded_len_is_exact() {
    fn check<T: WireMessage + Clone>(msgs: &[T]) {
        let mut codec = Codec::<T, T>::new(limits::DEFAULT_MAX_FRAME);
        for m in msgs {
            let mut buf = BytesMut::from(&b"queued"[..]);
            let want = codec.encoded_len(m).unwrap();
            codec.encode(m.clone(), &mut buf).unwrap();
            assert_eq!(buf.len() - 6, want);
        }
    }
    check(&requests());
    check(&responses());
    check(&peer_responses());
    let big = PeerResponse::Chunk { chunk: 0, data: Bytes::from(vec![0u8; 200]) };
    assert!(matches!(PeerServerCodec::new(100).encoded_len(&big), Err(CodecError::FrameTooLarge { max: 100, .. })));
}

/// A large message (metadata of 2^16 chunks, 2 MiB) is encoded into a buffer grown once to its
/// exact size, after whatever was queued before it: no doubling, no slack.
#[test]
fn large_messages_are_encoded_into_exactly_sized_buffers() {
    let n = 1usize << 16;
    let hashes: Vec<Hash> = (0..n).map(|i| Hash([(i % 251) as u8; 32])).collect();
    let length = n as u64 * u64::from(MIN_CHUNK_SIZE);
    let root = proto::meta::root_from_chunks(length, MIN_CHUNK_SIZE, &hashes);
    let meta = FileMeta { name: "big".into(), length, chunk_size: MIN_CHUNK_SIZE, root, chunk_hashes: hashes };
    let reply = TrackerResponse::FileMeta(std::sync::Arc::new(meta));
    let mut codec = TrackerServerCodec::new(limits::DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    codec.encode(TrackerResponse::KeepAlive, &mut buf).unwrap();
    let small = buf.len();
    let len = codec.encoded_len(&reply).unwrap();
    assert!(len > 32 * n);
    codec.encode(reply.clone(), &mut buf).unwrap();
    assert_eq!(buf.len(), small + len);
    assert_eq!(buf.capacity(), buf.len(), "the buffer grew to exactly the frames it holds");
    let mut client = TrackerClientCodec::new(limits::DEFAULT_MAX_FRAME);
    assert_eq!(client.decode(&mut buf).unwrap().unwrap().unwrap(), TrackerResponse::KeepAlive);
    assert_eq!(client.decode(&mut buf).unwrap().unwrap().unwrap(), reply);
}
