//! The stateful proptest: arbitrary sequences of operations from several sessions, with every
//! invariant checked after each.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Open,
    Close(usize),
    /// Session, where (0: its own port, 1: another port, 2: every interface of the tracker's host
    /// at a third port), files.
    Register(usize, u16, Vec<(usize, usize, Option<u8>)>),
    ChunkRegister(usize, usize, u32),
    ChunkRegisterBatch(usize, usize, Vec<u32>),
    Leave(usize),
    Unregister(usize, usize),
    Locations(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Files: index 0..3, content variant 0..2; a bitmap byte (None: complete).
    let file = (0..3usize, 0..2usize, proptest::option::of(any::<u8>()));
    prop_oneof![
        1 => Just(Op::Open),
        1 => (0..6usize).prop_map(Op::Close),
        6 => (0..6usize, 0..3u16, proptest::collection::vec(file, 0..4))
            .prop_map(|(p, alt, f)| Op::Register(p, alt, f)),
        6 => (0..6usize, 0..3usize, 0..6u32).prop_map(|(p, f, c)| Op::ChunkRegister(p, f, c)),
        // Indices past some files' ends, so some batches are refused whole.
        4 => (0..6usize, 0..3usize, proptest::collection::vec(0..4u32, 0..5))
            .prop_map(|(p, f, c)| Op::ChunkRegisterBatch(p, f, c)),
        1 => (0..6usize).prop_map(Op::Leave),
        2 => (0..6usize, 0..3usize).prop_map(|(p, f)| Op::Unregister(p, f)),
        2 => (0..6usize, 0..3usize).prop_map(|(p, f)| Op::Locations(p, f)),
    ]
}

proptest! {
    /// Arbitrary sequences of operations from several sessions keep every invariant, and
    /// File Locations never lists the caller nor more than the cap.
    #[test]
    fn operation_sequences_keep_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        // Byte budgets that bind too: two of the larger files exceed a session's, about five
        // holdings the registry's.
        let r = Registry::new(Limits {
            max_locations: 2,
            max_files_per_session: 2,
            max_meta_bytes_per_session: 800,
            max_meta_bytes_total: 2000,
            ..Limits::default()
        });
        // File i has i+1 chunks; variant v changes its content.
        let metas: Vec<Vec<FileMeta>> =
            (0..3).map(|i| (0..2).map(|v| meta(&format!("f{i}"), v as u8 + 1, i + 1)).collect()).collect();
        // Each session with the port it registers, unique for the whole run.
        let mut peers: Vec<(PeerId, u16)> = Vec::new();
        let mut next_port = 1000;
        for op in std::iter::repeat_n(Op::Open, 4).chain(ops) {
            match op {
                Op::Open => {
                    next_port += 1;
                    peers.push((r.open_session(addr(next_port)), next_port));
                }
                Op::Close(i) if i < peers.len() => {
                    r.close_session(peers.remove(i).0);
                }
                Op::Register(i, alt, files) if i < peers.len() => {
                    let files = files
                        .into_iter()
                        .map(|(f, v, bits)| {
                            let meta = metas[f][v].clone();
                            let n = meta.num_chunks();
                            let have = match bits {
                                None => Have::Complete,
                                Some(b) => {
                                    let mut bm = Bitmap::new(n);
                                    (0..n).filter(|c| b & (1 << c) != 0).for_each(|c| { bm.set(c); });
                                    Have::Partial(bm)
                                }
                            };
                            RegisterFile { meta, have }
                        })
                        .collect();
                    // Sometimes at another port: the peer moved, its holdings follow; sometimes
                    // on every interface (the session comes from loopback: kept unspecified).
                    let (peer, port) = peers[i];
                    let listen = match alt {
                        2 => SocketAddr::from(([0, 0, 0, 0], port + 10_000)),
                        _ => addr(port + alt * 5000),
                    };
                    r.register(peer, listen, files).unwrap();
                }
                Op::ChunkRegister(i, f, c) if i < peers.len() => {
                    let _ = r.chunk_register(peers[i].0, &format!("f{f}"), c);
                }
                Op::ChunkRegisterBatch(i, f, chunks) if i < peers.len() => {
                    let name = format!("f{f}");
                    let before = (r.stats(), r.meta_bytes(), r.locations(peers[i].0, &name).ok());
                    let refused = r.chunk_register_batch(peers[i].0, &name, &chunks).is_err();
                    // All or nothing; an empty batch changes nothing either.
                    if refused || chunks.is_empty() {
                        let after = (r.stats(), r.meta_bytes(), r.locations(peers[i].0, &name).ok());
                        prop_assert_eq!(
                            (before.0, before.1, before.2.map(|l| l.availability)),
                            (after.0, after.1, after.2.map(|l| l.availability))
                        );
                    }
                }
                Op::Leave(i) if i < peers.len() => r.leave(peers[i].0),
                Op::Unregister(i, f) if i < peers.len() => {
                    let before = (r.stats(), r.meta_bytes());
                    // Refused (not held) changes nothing; accepted removes exactly one holding.
                    match r.unregister(peers[i].0, &format!("f{f}")) {
                        Ok(()) => prop_assert_eq!(r.stats().holdings + 1, before.0.holdings),
                        Err(_) => prop_assert_eq!((r.stats(), r.meta_bytes()), before),
                    }
                }
                Op::Locations(i, f) if i < peers.len() => {
                    let (peer, port) = peers[i];
                    if let Ok(loc) = r.locations(peer, &format!("f{f}")) {
                        prop_assert!(loc.sources.len() <= 2);
                        prop_assert!(loc.sources.len() as u32 <= loc.total_sources);
                        prop_assert!(
                            loc.sources.iter().all(|s| ![0, 5000, 10_000].contains(&s.addr.port().wrapping_sub(port))),
                            "caller listed"
                        );
                    }
                }
                _ => {}
            }
            r.check_invariants();
        }
    }
}
