//! The load generator's codec: requests encoded, replies only framed and classified.

use anyhow::Context;
use bytes::{Buf, BytesMut};
use proto::codec::{TrackerClientCodec, TrackerServerCodec, LEN_PREFIX};
use proto::limits::DEFAULT_MAX_FRAME;
use proto::tracker::{Locations, TrackerRequest, TrackerResponse};
use tokio_util::codec::{Decoder, Encoder};

/// The generator's codec once sessions are set up: requests are encoded by the protocol's codec;
/// replies are only framed and told apart by their variant tag, not decoded, so that the
/// generator spends as little of the shared CPU as it can (a tracker's client would decode them).
pub(super) struct LoadCodec {
    requests: TrackerClientCodec,
    /// Tags of the replies the load expects (File Locations, Chunk Registered, Keep-Alive).
    expected: [u8; 3],
}

impl LoadCodec {
    pub(super) fn new() -> anyhow::Result<Self> {
        // Learn the tags from the protocol's own encoder rather than hard-coding positions.
        let tag = |r: TrackerResponse| -> anyhow::Result<u8> {
            let mut buf = BytesMut::new();
            TrackerServerCodec::new(DEFAULT_MAX_FRAME).encode(r, &mut buf)?;
            buf.get(LEN_PREFIX).copied().context("empty reply")
        };
        let locations = TrackerResponse::FileLocations(Locations {
            root: proto::Hash([0; 32]),
            num_chunks: 0,
            total_sources: 0,
            sources: Vec::new(),
            availability: Vec::new(),
        });
        Ok(Self {
            requests: TrackerClientCodec::new(DEFAULT_MAX_FRAME),
            expected: [tag(locations)?, tag(TrackerResponse::ChunkRegistered)?, tag(TrackerResponse::KeepAlive)?],
        })
    }
}

impl Encoder<TrackerRequest> for LoadCodec {
    type Error = proto::CodecError;
    fn encode(&mut self, item: TrackerRequest, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.requests.encode(item, dst)
    }
}

impl Decoder for LoadCodec {
    /// Whether the reply was one the load expects.
    type Item = bool;
    type Error = proto::CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<bool>, Self::Error> {
        let Some(head) = src.get(..LEN_PREFIX) else { return Ok(None) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if src.len() < LEN_PREFIX + len {
            src.reserve(LEN_PREFIX + len - src.len());
            return Ok(None);
        }
        let ok = len > 0 && self.expected.contains(&src[LEN_PREFIX]);
        src.advance(LEN_PREFIX + len);
        Ok(Some(ok))
    }
}
