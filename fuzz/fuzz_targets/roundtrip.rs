//! Encode then decode is the identity for every message: any body postcard accepts as a message is
//! re-encoded by the codec and decoded back to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use proto::codec::{Codec, WireMessage};
use proto::peer::{PeerRequest, PeerResponse};
use proto::tracker::{TrackerRequest, TrackerResponse};
use tokio_util::codec::{Decoder, Encoder};

fn roundtrip<T: WireMessage + PartialEq + std::fmt::Debug + Clone>(body: &[u8]) {
    let Ok(msg) = T::decode_body(BytesMut::from(body)) else { return };
    let mut codec = Codec::<T, T>::new(1 << 24);
    let mut buf = BytesMut::new();
    codec.encode(msg.clone(), &mut buf).expect("a decoded message encodes");
    match codec.decode(&mut buf) {
        Ok(Some(Ok(back))) => assert_eq!(back, msg),
        other => panic!("re-encoded message did not decode: {other:?}"),
    }
    assert!(buf.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 4 {
        0 => roundtrip::<TrackerRequest>(body),
        1 => roundtrip::<TrackerResponse>(body),
        2 => roundtrip::<PeerRequest>(body),
        _ => roundtrip::<PeerResponse>(body),
    }
});
