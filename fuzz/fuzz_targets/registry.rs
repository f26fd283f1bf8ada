//! The tracker registry driven by arbitrary operation sequences from several sessions: register
//! (valid, conflicting, partial, moved endpoints), chunk register (any index), locate, list,
//! leave, unregister, disconnect, and sessions expiring as time passes. Every invariant is checked after
//! every operation, and no reply exceeds its caps.
#![no_main]

use std::net::SocketAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proto::limits::MIN_CHUNK_SIZE;
use proto::tracker::RegisterFile;
use proto::{Bitmap, FileMeta, Have};
use tracker::{Limits, PeerId, Registry};

#[derive(Debug, Arbitrary)]
enum Op {
    Open,
    Register {
        peer: u8,
        port: u8,
        files: Vec<(u8, u8, Option<u8>)>,
    },
    ChunkRegister {
        peer: u8,
        file: u8,
        chunk: u32,
    },
    Locate {
        peer: u8,
        file: u8,
    },
    List {
        after: Option<u8>,
    },
    Leave {
        peer: u8,
    },
    Disconnect {
        peer: u8,
    },
    /// Time passes: the oldest session misses its keep-alives and expires.
    Expire,
    Unregister {
        peer: u8,
        file: u8,
    },
}

const FILES: usize = 4;

/// File f has f + 1 chunks; variant v changes its content. Hashed once per process.
fn metas() -> &'static [[FileMeta; 2]] {
    static METAS: std::sync::OnceLock<Vec<[FileMeta; 2]>> = std::sync::OnceLock::new();
    METAS.get_or_init(|| {
        (0..FILES)
            .map(|f| {
                [0u8, 1].map(|v| {
                    let data = vec![v + 1; (f + 1) * MIN_CHUNK_SIZE as usize - 7];
                    FileMeta::from_bytes(&format!("f{f}"), MIN_CHUNK_SIZE, &data)
                })
            })
            .collect()
    })
}

fuzz_target!(|ops: Vec<Op>| {
    let r = Registry::new(Limits {
        max_files_per_register: 3,
        max_files_per_session: 3,
        max_files_total: 3,
        max_locations: 2,
        list_page: 2,
        list_page_bytes: 1 << 20,
        allow_foreign_endpoints: false,
        // About two of these small files per session, six in all: the byte budgets bind too.
        max_meta_bytes_per_session: 1000,
        max_meta_bytes_total: 3000,
    });
    let metas = metas();
    let mut peers: Vec<PeerId> = Vec::new();
    for op in ops.into_iter().take(200) {
        let pick = |i: u8| (!peers.is_empty()).then(|| peers[usize::from(i) % peers.len()]);
        match op {
            Op::Open => peers.push(r.open_session(SocketAddr::from(([127, 0, 0, 1], 1)))),
            Op::Register { peer, port, files } => {
                let Some(p) = pick(peer) else { continue };
                let files = files
                    .into_iter()
                    .map(|(f, v, bits)| {
                        let meta = metas[usize::from(f) % FILES][usize::from(v % 2)].clone();
                        let n = meta.num_chunks();
                        let have = match bits {
                            None => Have::Complete,
                            Some(b) => {
                                let mut bm = Bitmap::new(n);
                                (0..n).filter(|c| b & (1 << (c % 8)) != 0).for_each(|c| {
                                    bm.set(c);
                                });
                                Have::Partial(bm)
                            }
                        };
                        RegisterFile { meta, have }
                    })
                    .collect();
                let _ = r.register(p, SocketAddr::from(([127, 0, 0, 1], u16::from(port))), files);
            }
            Op::ChunkRegister { peer, file, chunk } => {
                if let Some(p) = pick(peer) {
                    let _ = r.chunk_register(p, &format!("f{}", usize::from(file) % FILES), chunk);
                }
            }
            Op::Locate { peer, file } => {
                let Some(p) = pick(peer) else { continue };
                if let Ok(loc) = r.locations(p, &format!("f{}", usize::from(file) % FILES)) {
                    assert!(loc.sources.len() <= 2);
                    assert!(loc.sources.len() as u32 <= loc.total_sources);
                    assert_eq!(loc.availability.len() as u32, loc.num_chunks);
                }
            }
            Op::List { after } => {
                let after = after.map(|a| format!("f{}", usize::from(a) % FILES));
                let (page, _) = r.list(after.as_deref());
                assert!(page.len() <= 2);
            }
            Op::Leave { peer } => {
                if let Some(p) = pick(peer) {
                    r.leave(p);
                }
            }
            Op::Disconnect { peer } => {
                if !peers.is_empty() {
                    let i = usize::from(peer) % peers.len();
                    r.close_session(peers.remove(i));
                }
            }
            Op::Expire => {
                if !peers.is_empty() {
                    r.close_session(peers.remove(0));
                }
            }
            Op::Unregister { peer, file } => {
                if let Some(p) = pick(peer) {
                    let _ = r.unregister(p, &format!("f{}", usize::from(file) % FILES));
                }
            }
        }
        r.check_invariants();
    }
    for p in peers {
        r.close_session(p);
    }
    r.check_invariants();
    assert_eq!(r.stats(), tracker::Stats::default());
});
