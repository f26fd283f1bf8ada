//! Arbitrary bytes through the tracker codecs (both directions), as a connection would deliver
//! them: every frame decodes to a message, a typed per-message error, or a fatal framing error;
//! nothing panics, and no frame larger than the limit is ever accepted.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::codec::{TrackerClientCodec, TrackerServerCodec};
use tokio_util::codec::Decoder;

fn drain<D: Decoder>(mut codec: D, data: &[u8], max: usize) {
    // Delivered in two pieces, split where the input says, so partial frames are exercised too.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(_)) => assert!(before - buf.len() <= max + 4, "frame over the limit accepted"),
            Ok(None) if rest.is_empty() => return,
            Ok(None) => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drain(TrackerServerCodec::new(4096), data, 4096);
    drain(TrackerClientCodec::new(1 << 16), data, 1 << 16);
});
