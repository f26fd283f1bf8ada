//! Chunk Register Batch (all or nothing, duplicates harmless, an empty batch a no-op), and a
//! Register that turns a partial holding complete (what a peer sends when a download finishes).

use super::*;
use proto::limits::MAX_CHUNKS_PER_FILE;

/// A registry where session `a` (port 10) seeds "f" (5 chunks) and session `b` (port 20) has
/// registered its endpoint and nothing else.
fn seeded(limits: Limits) -> (Registry, PeerId, PeerId) {
    let r = Registry::new(limits);
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(meta("f", 1, 5), Have::Complete)]);
    reg(&r, b, 20, vec![]);
    (r, a, b)
}

/// What `b` holds of "f", as `a` sees it in File Locations.
fn have_of_b(r: &Registry, a: PeerId) -> Option<Have> {
    r.locations(a, "f").unwrap().sources.into_iter().find(|s| s.addr.port() == 20).map(|s| s.have)
}

fn partial(n: u32, chunks: &[u32]) -> Have {
    Have::Partial(Bitmap::with_ones(n, chunks.iter().copied()))
}

#[test]
fn a_batch_registers_every_chunk_in_it() {
    let (r, a, b) = seeded(Limits::default());
    // Any order; duplicates are harmless.
    r.chunk_register_batch(b, "f", &[3, 0, 3, 1]).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [2, 2, 1, 2, 1]);
    assert_eq!(have_of_b(&r, a), Some(partial(5, &[0, 1, 3])));
    // Chunks already held change nothing.
    r.chunk_register_batch(b, "f", &[1, 0]).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [2, 2, 1, 2, 1]);
    assert_eq!(r.stats().holdings, 2);
}

/// Every index is checked before any is applied: a batch with one index out of range is refused
/// whole, naming the first such index, and nothing changes (no holding, no bytes charged).
#[test]
fn a_batch_with_an_index_out_of_range_changes_nothing() {
    let (r, a, b) = seeded(Limits::default());
    let bytes = r.meta_bytes();
    assert_eq!(
        r.chunk_register_batch(b, "f", &[0, 1, 7, 9, 2]),
        Err(RequestError::ChunkOutOfRange { chunk: 7, num_chunks: 5 })
    );
    r.check_invariants();
    assert_eq!((r.stats().holdings, r.meta_bytes()), (1, bytes));
    assert_eq!(r.locations(a, "f").unwrap().availability, [1; 5]);
    // The same once b holds a chunk: its holding stays as it was.
    r.chunk_register(b, "f", 4).unwrap();
    assert_eq!(
        r.chunk_register_batch(b, "f", &[0, u32::MAX, 5]),
        Err(RequestError::ChunkOutOfRange { chunk: u32::MAX, num_chunks: 5 })
    );
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [1, 1, 1, 1, 2]);
    assert_eq!(have_of_b(&r, a), Some(partial(5, &[4])));
}

#[test]
fn a_batch_that_completes_the_file_makes_a_complete_holder() {
    let (r, a, b) = seeded(Limits::default());
    r.chunk_register(b, "f", 1).unwrap();
    r.chunk_register_batch(b, "f", &[4, 0, 3, 2, 2]).unwrap();
    r.check_invariants();
    assert_eq!((r.list(None).0[0].sources, r.list(None).0[0].complete_sources), (2, 2));
    assert_eq!(have_of_b(&r, a), Some(Have::Complete));
    assert_eq!(r.locations(a, "f").unwrap().availability, [2; 5]);
    // A batch of one session that holds everything in one go: complete at once.
    let c = r.open_session(addr(3));
    reg(&r, c, 30, vec![]);
    r.chunk_register_batch(c, "f", &[0, 1, 2, 3, 4]).unwrap();
    r.check_invariants();
    assert_eq!(r.list(None).0[0].complete_sources, 3);
    // More chunks for a complete holding change nothing.
    r.chunk_register_batch(c, "f", &[2]).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [3; 5]);
}

/// An empty batch is valid and changes nothing (no holding, so no quota to check), after the
/// same checks of name, endpoint and file as any other.
#[test]
fn an_empty_batch_is_a_no_op_after_the_same_checks() {
    let (r, a, b) = seeded(Limits { max_files_per_session: 1, ..Limits::default() });
    let c = r.open_session(addr(3));
    assert_eq!(r.chunk_register_batch(c, "f", &[]), Err(RequestError::NotRegistered));
    assert!(matches!(r.chunk_register_batch(b, "../f", &[]), Err(RequestError::InvalidName(_))));
    assert_eq!(r.chunk_register_batch(b, "nope", &[]), Err(RequestError::UnknownFile("nope".into())));
    // a is at its file quota of one, yet an empty batch of a file it does not hold is fine.
    reg(&r, b, 20, vec![(meta("g", 1, 2), Have::Complete)]);
    let bytes = r.meta_bytes();
    r.chunk_register_batch(a, "g", &[]).unwrap();
    r.chunk_register_batch(b, "f", &[]).unwrap();
    r.check_invariants();
    assert_eq!((r.stats().holdings, r.meta_bytes()), (2, bytes));
    assert_eq!(r.locations(b, "f").unwrap().total_sources, 1);
    // A non-empty one needs the quota.
    assert_eq!(r.chunk_register_batch(a, "g", &[1]), Err(RequestError::Quota(RejectReason::SessionQuota { max: 1 })));
    r.check_invariants();
    assert_eq!(r.meta_bytes(), bytes);
}

/// The checks come in Chunk Register's order: name, endpoint, file, range.
#[test]
fn a_batch_is_refused_before_register_and_checks_in_order() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete)]);
    assert!(matches!(r.chunk_register_batch(b, "/etc/passwd", &[9]), Err(RequestError::InvalidName(_))));
    assert_eq!(r.chunk_register_batch(b, "f", &[0]), Err(RequestError::NotRegistered));
    assert_eq!(r.chunk_register_batch(b, "nope", &[9]), Err(RequestError::NotRegistered));
    reg(&r, b, 20, vec![]);
    assert_eq!(r.chunk_register_batch(b, "nope", &[9]), Err(RequestError::UnknownFile("nope".into())));
    r.chunk_register_batch(b, "f", &[0, 2]).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [2, 1, 2]);
    // After Leave the session keeps its endpoint: a batch is accepted without a new Register.
    r.leave(b);
    r.chunk_register_batch(b, "f", &[1]).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, [1, 2, 1]);
}

/// The longest batch a file can use (every chunk of a file of the most chunks, in reverse, with
/// duplicates) completes the holding in one request.
#[test]
fn a_batch_of_every_chunk_of_the_largest_file() {
    let n = MAX_CHUNKS_PER_FILE;
    // Valid metadata needs no data: any chunk hashes merge into a root.
    let hashes: Vec<proto::Hash> = (0..n)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            proto::Hash(h)
        })
        .collect();
    let length = u64::from(n) * u64::from(MIN_CHUNK_SIZE);
    let root = proto::meta::root_from_chunks(length, MIN_CHUNK_SIZE, &hashes);
    let big = FileMeta { name: "big".into(), length, chunk_size: MIN_CHUNK_SIZE, root, chunk_hashes: hashes };
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(big, Have::Complete)]);
    reg(&r, b, 20, vec![]);
    let chunks: Vec<u32> = (0..n).rev().chain(0..16).collect();
    r.chunk_register_batch(b, "big", &chunks).unwrap();
    r.check_invariants();
    assert_eq!(r.list(None).0[0].complete_sources, 2);
}

/// A Register of `Complete` for a file the session holds in part (what a peer sends when its
/// download finishes) makes it a complete holder, charging nothing more.
#[test]
fn register_complete_upgrades_a_partial_holding() {
    let (r, a, b) = seeded(Limits::default());
    let f = meta("f", 1, 5);
    reg(&r, b, 20, vec![(f.clone(), partial(5, &[1]))]);
    r.chunk_register_batch(b, "f", &[0, 3]).unwrap();
    let bytes = r.meta_bytes();
    assert_eq!(have_of_b(&r, a), Some(partial(5, &[0, 1, 3])));
    assert_eq!(reg(&r, b, 20, vec![(f, Have::Complete)]), [Ok(())]);
    assert_eq!(have_of_b(&r, a), Some(Have::Complete));
    assert_eq!((r.list(None).0[0].sources, r.list(None).0[0].complete_sources), (2, 2));
    assert_eq!(r.locations(a, "f").unwrap().availability, [2; 5]);
    assert_eq!((r.stats().holdings, r.meta_bytes()), (2, bytes));
}
