//! Chunk arithmetic on arbitrary lengths and chunk sizes: the chunks of a file tile it exactly,
//! every index check agrees with the chunk count, and validation never panics.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::meta::{check_chunk_size, chunk_count, root_from_chunks};
use proto::{FileMeta, Hash};

#[derive(Debug, Arbitrary)]
struct Input {
    length: u64,
    chunk_size: u32,
    index: u32,
    hashes: Vec<[u8; 32]>,
}

fuzz_target!(|i: Input| {
    let n = chunk_count(i.length, i.chunk_size);
    let meta = FileMeta {
        name: "f".into(),
        length: i.length,
        chunk_size: i.chunk_size,
        root: Hash([0; 32]),
        chunk_hashes: i.hashes.iter().map(|&h| Hash(h)).collect(),
    };
    // Never panics, whatever the fields.
    let valid = meta.validate();
    if check_chunk_size(i.chunk_size).is_err() || n != meta.chunk_hashes.len() as u64 || n > 4096 {
        assert!(valid.is_err() || n == meta.chunk_hashes.len() as u64);
        return;
    }
    let _ = root_from_chunks(i.length, i.chunk_size, &meta.chunk_hashes);
    assert_eq!(meta.chunk(i.index).is_ok(), u64::from(i.index) < n);
    // The chunks tile [0, length) in order, each non-empty and at most a chunk long.
    let mut end = 0u64;
    for c in meta.chunks() {
        let (off, len) = meta.chunk_range(c);
        assert_eq!(off, end);
        assert!(len > 0 && len <= i.chunk_size);
        end = off + u64::from(len);
    }
    assert_eq!(end, i.length);
});
