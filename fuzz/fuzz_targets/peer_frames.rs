//! Arbitrary bytes through the peer-protocol codecs (both directions): no panic, no frame over
//! the limit, and a decoded chunk always carries exactly the bytes its header announced.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::codec::{PeerClientCodec, PeerServerCodec};
use proto::peer::PeerResponse;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut server = PeerServerCodec::new(1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = server.decode(&mut buf) {}

    let mut client = PeerClientCodec::new(1 << 16);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match client.decode(&mut buf) {
            Ok(Some(msg)) => {
                let framed = before - buf.len();
                assert!(framed <= (1 << 16) + 4);
                if let Ok(PeerResponse::Chunk { data, .. }) = msg {
                    assert!(data.len() < framed);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
