//! The one codec: a 4-byte big-endian length prefix (not counting itself) followed by the body,
//! with an explicit maximum frame length. Bodies are postcard; a chunk's bytes follow their header
//! raw.
//!
//! The framing is done here rather than by `tokio_util`'s `LengthDelimitedCodec` (the layout is the
//! same) because that codec reserves the whole announced frame as soon as it reads a length: a
//! client announcing a near-maximum frame and trickling its body would pin that much memory per
//! connection. Here at most [`RESERVE_AHEAD`] is reserved beyond what has arrived.
//!
//! Two kinds of failure are kept apart. A frame that cannot be framed (too large, I/O) is a
//! [`CodecError`]: the stream cannot be trusted past it and the connection must close. A frame that
//! was framed but holds no valid message is a [`MessageError`] *item*: frame boundaries are intact,
//! so the receiver answers with a typed error and carries on.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::peer::{PeerRequest, PeerResponse, ResponseHeader};
use crate::tracker::{TrackerRequest, TrackerResponse};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Most bytes reserved for a frame beyond those received: a whole default-size chunk frame in one
/// allocation, but never the full announced length of a large frame before its bytes arrive.
pub const RESERVE_AHEAD: usize = 1024 * 1024 + 64 * 1024;

/// A fatal framing failure: close the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A frame is longer than the limit (either announced by a peer or about to be sent).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The frame's length, when known.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(#[from] postcard::Error),
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A well-framed body that holds no valid message. The connection may continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Postcard could not decode the body.
    #[error("undecodable body: {0}")]
    Decode(postcard::Error),
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A chunk's announced length does not match the bytes that follow.
    #[error("chunk header announces {announced} bytes, frame holds {actual}")]
    PayloadLength {
        /// Length in the header.
        announced: u32,
        /// Bytes present.
        actual: usize,
    },
}

/// A message that knows its body encoding.
pub trait WireMessage: Sized {
    /// Appends the body to `dst`.
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), postcard::Error>;
    /// The exact length of the body [`WireMessage::encode_body`] would append, computed without
    /// writing it (one pass over the message, no allocation).
    fn body_len(&self) -> Result<usize, postcard::Error>;
    /// Decodes one whole body.
    fn decode_body(frame: BytesMut) -> Result<Self, MessageError>;
}

/// Room tried first by [`encode_into`]: enough for most messages.
const SMALL_MESSAGE: usize = 1024;

/// Serializes `msg` straight into `dst`'s memory. Small messages (most of them) go through
/// postcard's slice flavor, the fastest, into [`SMALL_MESSAGE`] bytes of room. A larger message
/// has its exact size computed first (a pass that writes nothing), `dst` grows once by exactly
/// that much, and the message is appended: no doubling, no zero-filling, no temporary vector to
/// grow and copy (a File Meta reply of 2^18 chunks is 8 MiB).
fn encode_into<T: serde::Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), postcard::Error> {
    let start = dst.len();
    dst.resize(start + SMALL_MESSAGE, 0);
    match postcard::to_slice(msg, &mut dst[start..]) {
        Ok(used) => {
            let n = used.len();
            dst.truncate(start + n);
            return Ok(());
        }
        Err(postcard::Error::SerializeBufferFull) => dst.truncate(start),
        Err(e) => {
            dst.truncate(start);
            return Err(e);
        }
    }
    let len = postcard::experimental::serialized_size(msg)?;
    dst.reserve(len);
    let result = postcard::serialize_with_flavor(msg, Append(dst));
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// A postcard flavor that appends to a `BytesMut` (which [`encode_into`] has grown to fit).
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn postcard_decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<(T, usize), MessageError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(frame).map_err(MessageError::Decode)?;
    Ok((msg, frame.len() - rest.len()))
}

macro_rules! postcard_message {
    ($($t:ty),*) => {$(
        impl WireMessage for $t {
            fn encode_body(&self, dst: &mut BytesMut) -> Result<(), postcard::Error> {
                encode_into(self, dst)
            }
            fn body_len(&self) -> Result<usize, postcard::Error> {
                postcard::experimental::serialized_size(self)
            }
            fn decode_body(frame: BytesMut) -> Result<Self, MessageError> {
                let (msg, used) = postcard_decode(&frame)?;
                match frame.len() - used {
                    0 => Ok(msg),
                    n => Err(MessageError::TrailingBytes(n)),
                }
            }
        }
    )*};
}

postcard_message!(TrackerRequest, TrackerResponse, PeerRequest);

impl PeerResponse {
    fn header(&self) -> Result<ResponseHeader, postcard::Error> {
        Ok(match self {
            PeerResponse::Welcome { have } => ResponseHeader::Welcome { have: have.clone() },
            PeerResponse::Chunk { chunk, data } => {
                let len = u32::try_from(data.len()).map_err(|_| postcard::Error::SerializeBufferFull)?;
                ResponseHeader::Chunk { chunk: *chunk, len }
            }
            PeerResponse::DontHave { chunk } => ResponseHeader::DontHave { chunk: *chunk },
            PeerResponse::Error(e) => ResponseHeader::Error(e.clone()),
            PeerResponse::Have { chunk } => ResponseHeader::Have { chunk: *chunk },
            PeerResponse::HaveMany { chunks } => ResponseHeader::HaveMany { chunks: chunks.clone() },
        })
    }
}

impl WireMessage for PeerResponse {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), postcard::Error> {
        dst.extend_from_slice(&postcard::to_stdvec(&self.header()?)?);
        if let PeerResponse::Chunk { data, .. } = self {
            dst.extend_from_slice(data);
        }
        Ok(())
    }

    fn body_len(&self) -> Result<usize, postcard::Error> {
        let data = match self {
            PeerResponse::Chunk { data, .. } => data.len(),
            _ => 0,
        };
        Ok(postcard::experimental::serialized_size(&self.header()?)? + data)
    }

    fn decode_body(mut frame: BytesMut) -> Result<Self, MessageError> {
        let (header, used) = postcard_decode::<ResponseHeader>(&frame)?;
        let rest = frame.len() - used;
        match header {
            ResponseHeader::Chunk { chunk, len } => {
                if rest != len as usize {
                    return Err(MessageError::PayloadLength { announced: len, actual: rest });
                }
                // Zero-copy: the chunk keeps the frame's buffer.
                let data = frame.split_off(used).freeze();
                Ok(PeerResponse::Chunk { chunk, data })
            }
            _ if rest != 0 => Err(MessageError::TrailingBytes(rest)),
            ResponseHeader::Welcome { have } => Ok(PeerResponse::Welcome { have }),
            ResponseHeader::DontHave { chunk } => Ok(PeerResponse::DontHave { chunk }),
            ResponseHeader::Error(e) => Ok(PeerResponse::Error(e)),
            ResponseHeader::Have { chunk } => Ok(PeerResponse::Have { chunk }),
            ResponseHeader::HaveMany { chunks } => Ok(PeerResponse::HaveMany { chunks }),
        }
    }
}

/// The start of a [`PeerResponse::Chunk`] frame of `len` data bytes: the length prefix and the
/// postcard header, exactly as the encoder writes them, to be followed by the chunk's bytes. A
/// server that writes this and the data from their own buffers (one vectored write) sends a chunk
/// without copying it into a frame buffer. Fails like the encoder if the frame would exceed
/// `max_frame`.
pub fn chunk_frame_header(chunk: u32, len: u32, max_frame: usize) -> Result<BytesMut, CodecError> {
    let header = postcard::to_stdvec(&ResponseHeader::Chunk { chunk, len })?;
    let body = header.len() + len as usize;
    if body > max_frame {
        return Err(CodecError::FrameTooLarge { len: body, max: max_frame });
    }
    let mut out = BytesMut::with_capacity(LEN_PREFIX + header.len());
    out.put_u32(body as u32);
    out.extend_from_slice(&header);
    Ok(out)
}

/// The whole length of a [`PeerResponse::Chunk`] frame for chunk `chunk` of `len` bytes, length
/// prefix included: what [`chunk_frame_header`] and the data add up to, computed without encoding.
pub fn chunk_frame_len(chunk: u32, len: u32) -> usize {
    // Sizing this header cannot fail (no sequence of unknown length); 0 would only make a reader
    // wait for less.
    let header = postcard::experimental::serialized_size(&ResponseHeader::Chunk { chunk, len }).unwrap_or(0);
    LEN_PREFIX + header + len as usize
}

/// Decodes `In` messages and encodes `Out` messages, with a maximum frame length in both
/// directions.
#[derive(Debug)]
pub struct Codec<In, Out> {
    max_frame: usize,
    max_encode: usize,
    _types: PhantomData<fn(Out) -> In>,
}

/// What a tracker uses.
pub type TrackerServerCodec = Codec<TrackerRequest, TrackerResponse>;
/// What a tracker client uses.
pub type TrackerClientCodec = Codec<TrackerResponse, TrackerRequest>;
/// What a serving peer uses.
pub type PeerServerCodec = Codec<PeerRequest, PeerResponse>;
/// What a downloading peer uses.
pub type PeerClientCodec = Codec<PeerResponse, PeerRequest>;

impl<In, Out> Codec<In, Out> {
    /// A codec that accepts and sends frames of at most `max_frame` body bytes.
    pub fn new(max_frame: usize) -> Self {
        Self::with_limits(max_frame, max_frame)
    }

    /// A codec with a limit per direction: a server that only ever receives small requests but
    /// sends whole chunks accepts little and sends much.
    pub fn with_limits(max_decode: usize, max_encode: usize) -> Self {
        Self { max_frame: max_decode, max_encode, _types: PhantomData }
    }

    /// Changes the receive limit, e.g. from the small pre-handshake limit to the full one.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The current receive limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl<In, Out: WireMessage> Codec<In, Out> {
    /// The bytes encoding `item` would append to the write buffer (length prefix included),
    /// computed without writing anything, or the error encoding it would give (e.g. the frame
    /// limit). A server that budgets its memory asks before it encodes.
    pub fn encoded_len(&self, item: &Out) -> Result<usize, CodecError> {
        let len = item.body_len()?;
        if len > self.max_encode {
            return Err(CodecError::FrameTooLarge { len, max: self.max_encode });
        }
        Ok(LEN_PREFIX + len)
    }
}

/// How many more bytes `buf` needs before the frame it starts with is whole: the rest of the
/// length prefix if that is incomplete (the body's length is not known yet), else the rest of the
/// body. 0 when a whole frame is there. A receiver uses it to be woken only once they arrived.
pub fn frame_missing(buf: &[u8]) -> usize {
    match buf.get(..LEN_PREFIX) {
        Some(head) => {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            (LEN_PREFIX + len).saturating_sub(buf.len())
        }
        None => LEN_PREFIX - buf.len(),
    }
}

impl<In: WireMessage, Out> Decoder for Codec<In, Out> {
    type Item = Result<In, MessageError>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let Some(head) = src.get(..LEN_PREFIX) else { return Ok(None) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge { len, max: self.max_frame });
        }
        let missing = frame_missing(src);
        if missing > 0 {
            src.reserve(missing.min(RESERVE_AHEAD));
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        let frame = src.split_to(len);
        Ok(Some(In::decode_body(frame)))
    }
}

impl<In, Out: WireMessage> Encoder<Out> for Codec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        // Append in place: the length is patched in once the body is written, and nothing already
        // buffered in `dst` is touched.
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = item.encode_body(dst) {
            dst.truncate(start);
            return Err(e.into());
        }
        let len = dst.len() - start - LEN_PREFIX;
        if len > self.max_encode {
            dst.truncate(start);
            return Err(CodecError::FrameTooLarge { len, max: self.max_encode });
        }
        dst[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}
