//! Unit tests of the registry through its public methods; Chunk Register Batch's are in
//! `tests/batch.rs`, the peers on the tracker's own host in `tests/own_host.rs`, Find Root's in
//! `tests/find_root.rs`, Unregister's in `tests/unregister.rs`, the stateful proptest in
//! `tests/sequences.rs`.

mod batch;
mod find_root;
mod own_host;
mod sequences;
mod unregister;

use super::*;
use proto::limits::MIN_CHUNK_SIZE;
use proto::tracker::{RegisterFile, RejectReason};
use proto::{Bitmap, Have};

fn meta(name: &str, seed: u8, chunks: usize) -> FileMeta {
    let data = vec![seed; chunks * MIN_CHUNK_SIZE as usize - 3];
    FileMeta::from_bytes(name, MIN_CHUNK_SIZE, &data)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn reg(r: &Registry, p: PeerId, port: u16, files: Vec<(FileMeta, Have)>) -> Vec<Result<(), RejectReason>> {
    let files = files.into_iter().map(|(meta, have)| RegisterFile { meta, have }).collect();
    let out = r.register(p, addr(port), files).unwrap();
    r.check_invariants();
    out
}

#[test]
fn register_adds_sources_and_rejects_conflicts() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    assert_eq!(reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete)]), vec![Ok(())]);
    assert_eq!(reg(&r, b, 20, vec![(meta("f", 1, 3), Have::Complete)]), vec![Ok(())]);
    let res = reg(&r, b, 20, vec![(meta("f", 2, 3), Have::Complete), (meta("g", 2, 1), Have::Complete)]);
    assert_eq!(res, vec![Err(RejectReason::ContentConflict { existing: meta("f", 1, 3).root }), Ok(())]);
    let (list, more) = r.list(None);
    assert!(!more);
    assert_eq!(list.iter().map(|f| (f.name.as_str(), f.sources)).collect::<Vec<_>>(), vec![("f", 2), ("g", 1)]);
    let loc = r.locations(a, "f").unwrap();
    assert_eq!(loc.sources.len(), 1, "caller excluded");
    assert_eq!(loc.availability, vec![2, 2, 2]);
}

#[test]
fn register_rejections_have_reasons() {
    let r = Registry::new(Limits { max_files_per_session: 2, ..Limits::default() });
    let p = r.open_session(addr(1));
    let mut bad_root = meta("x", 1, 2);
    bad_root.root = meta("x", 2, 2).root;
    let mut bad_name = meta("y", 1, 1);
    bad_name.name = "../y".into();
    let res = reg(
        &r,
        p,
        10,
        vec![
            (bad_root, Have::Complete),
            (bad_name, Have::Complete),
            (meta("z", 1, 2), Have::Partial(Bitmap::new(5))),
            (meta("a", 1, 1), Have::Complete),
            (meta("a", 1, 1), Have::Complete),
            (meta("b", 1, 1), Have::Complete),
            (meta("c", 1, 1), Have::Complete),
        ],
    );
    assert_eq!(res[0], Err(RejectReason::InconsistentMeta(proto::MetaError::RootMismatch)));
    assert!(matches!(res[1], Err(RejectReason::InvalidName(_))));
    assert_eq!(res[2], Err(RejectReason::BitmapLength { want: 2, got: 5 }));
    assert_eq!(res[3], Ok(()));
    assert_eq!(res[4], Err(RejectReason::Duplicate));
    assert_eq!(res[5], Ok(()));
    assert_eq!(res[6], Err(RejectReason::SessionQuota { max: 2 }));
    assert_eq!(r.register(p, addr(0), vec![]), Err(RequestError::BadEndpoint(addr(0))));
    let too_many = vec![RegisterFile { meta: meta("q", 1, 1), have: Have::Complete }; 1025];
    assert_eq!(r.register(p, addr(5), too_many), Err(RequestError::TooManyFiles { got: 1025, max: 1024 }));
}

#[test]
fn global_quota() {
    let r = Registry::new(Limits { max_files_total: 1, ..Limits::default() });
    let p = r.open_session(addr(1));
    let q = r.open_session(addr(2));
    assert_eq!(reg(&r, p, 1, vec![(meta("a", 1, 1), Have::Complete)]), vec![Ok(())]);
    assert_eq!(reg(&r, q, 1, vec![(meta("b", 1, 1), Have::Complete)]), vec![Err(RejectReason::GlobalQuota { max: 1 })]);
    // The same file from another peer is a source, not a new file.
    assert_eq!(reg(&r, q, 1, vec![(meta("a", 1, 1), Have::Complete)]), vec![Ok(())]);
}

#[test]
fn chunk_register_rules() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    assert_eq!(r.chunk_register(b, "f", 0), Err(RequestError::NotRegistered));
    reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete)]);
    reg(&r, b, 20, vec![]);
    assert_eq!(r.chunk_register(b, "nope", 0), Err(RequestError::UnknownFile("nope".into())));
    assert_eq!(r.chunk_register(b, "f", 3), Err(RequestError::ChunkOutOfRange { chunk: 3, num_chunks: 3 }));
    assert_eq!(
        r.chunk_register(b, "f", u32::MAX),
        Err(RequestError::ChunkOutOfRange { chunk: u32::MAX, num_chunks: 3 })
    );
    assert!(matches!(r.chunk_register(b, "/etc/passwd", 0), Err(RequestError::InvalidName(_))));
    r.chunk_register(b, "f", 1).unwrap();
    r.chunk_register(b, "f", 1).unwrap();
    r.check_invariants();
    assert_eq!(r.locations(a, "f").unwrap().availability, vec![1, 2, 1]);
    r.chunk_register(b, "f", 0).unwrap();
    r.chunk_register(b, "f", 2).unwrap();
    r.check_invariants();
    assert_eq!(r.list(None).0[0].complete_sources, 2, "a full partial is promoted");
}

#[test]
fn leave_and_close_remove_everything_and_empty_files_vanish() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(meta("f", 1, 3), Have::Complete), (meta("g", 1, 1), Have::Complete)]);
    reg(&r, b, 20, vec![]);
    r.chunk_register(b, "f", 0).unwrap();
    r.leave(a);
    r.check_invariants();
    assert_eq!(r.list(None).0.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), vec!["f"]);
    assert_eq!(r.locations(b, "f").unwrap().total_sources, 0);
    r.close_session(b);
    r.check_invariants();
    assert_eq!(r.stats(), Stats { sessions: 1, files: 0, holdings: 0 });
}

#[test]
fn list_pages() {
    let r = Registry::new(Limits { list_page: 2, ..Limits::default() });
    let p = r.open_session(addr(1));
    reg(&r, p, 1, ["a", "b", "c"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
    let (page, more) = r.list(None);
    assert_eq!((page.len(), more), (2, true));
    let (page, more) = r.list(Some("b"));
    assert_eq!((page[0].name.as_str(), more), ("c", false));

    // Pages also stop at a byte budget, but always hold at least one entry.
    let r = Registry::new(Limits { list_page_bytes: 2 * summary_size("a"), ..Limits::default() });
    let p = r.open_session(addr(1));
    reg(&r, p, 1, ["a", "b", "c"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
    assert_eq!(r.list(None).0.len(), 2);
    let r = Registry::new(Limits { list_page_bytes: 1, ..Limits::default() });
    let p = r.open_session(addr(1));
    reg(&r, p, 1, ["a", "b"].iter().map(|n| (meta(n, 1, 1), Have::Complete)).collect());
    assert_eq!(r.list(None), (vec![r.list(None).0[0].clone()], true));
}

#[test]
fn locations_capped_mixed_and_varied() {
    let r = Registry::new(Limits { max_locations: 8, ..Limits::default() });
    let caller = r.open_session(addr(1));
    let m = meta("f", 1, 4);
    let mut ports = std::collections::HashMap::new();
    for i in 0..40u16 {
        let p = r.open_session(addr(100 + i));
        let have = if i % 2 == 0 { Have::Complete } else { Have::Partial(Bitmap::full(4)) };
        // Odd peers register only some chunks so they stay partial.
        if i % 2 == 0 {
            reg(&r, p, 1000 + i, vec![(m.clone(), have)]);
        } else {
            reg(&r, p, 1000 + i, vec![]);
            r.chunk_register(p, "f", u32::from(i % 4)).unwrap();
        }
        ports.insert(1000 + i, i % 2 == 0);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let loc = r.locations(caller, "f").unwrap();
        assert_eq!(loc.sources.len(), 8);
        assert_eq!(loc.total_sources, 40);
        let complete = loc.sources.iter().filter(|s| s.have == Have::Complete).count();
        assert_eq!(complete, 4, "half complete, half partial");
        seen.extend(loc.sources.iter().map(|s| s.addr.port()));
    }
    assert!(seen.len() > 20, "selection varies between calls: saw {}", seen.len());
}

#[test]
fn endpoints_must_be_on_the_sessions_own_ip() {
    let r = Registry::new(Limits::default());
    let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
    let elsewhere = SocketAddr::from(([10, 9, 9, 9], 7000));
    let refused = RequestError::ForeignEndpoint { announced: elsewhere, observed: [10, 1, 2, 3].into() };
    assert_eq!(r.register(a, elsewhere, vec![]), Err(refused.clone()));
    assert_eq!(
        refused.to_string(),
        "announced endpoint 10.9.9.9:7000 is not on 10.1.2.3, the address this session connects from \
         (a tracker started with --allow-foreign-endpoints accepts it)"
    );
    // Port 0 is still no endpoint at all, whatever the IP.
    let no_port = SocketAddr::from(([10, 9, 9, 9], 0));
    assert_eq!(r.register(a, no_port, vec![]), Err(RequestError::BadEndpoint(no_port)));
    assert!(r.register(a, SocketAddr::from(([10, 1, 2, 3], 7000)), vec![]).is_ok());
    let r = Registry::new(Limits { allow_foreign_endpoints: true, ..Limits::default() });
    let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
    assert!(r.register(a, elsewhere, vec![]).is_ok());
}

/// With many holders (the sampling by runs), a reply still never lists the caller, never lists
/// a holder twice, and is full.
#[test]
fn many_holders_sampled_without_the_caller_or_repeats() {
    let r = Registry::new(Limits::default());
    let m = meta("f", 1, 8);
    let mut peers = Vec::new();
    for i in 0..600u16 {
        let p = r.open_session(addr(2000 + i));
        let have =
            if i % 3 == 0 { Have::Complete } else { Have::Partial(Bitmap::from_parts(8, vec![1 << (i % 7)]).unwrap()) };
        reg(&r, p, 2000 + i, vec![(m.clone(), have)]);
        peers.push((p, 2000 + i));
    }
    for (p, port) in peers.iter().step_by(37) {
        let loc = r.locations(*p, "f").unwrap();
        assert_eq!((loc.sources.len(), loc.total_sources), (64, 599));
        let mut ports: Vec<u16> = loc.sources.iter().map(|s| s.addr.port()).collect();
        assert!(!ports.contains(port), "caller listed");
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 64, "a holder listed twice");
    }
}

#[test]
fn unspecified_listen_ip_is_replaced_by_observed() {
    let r = Registry::new(Limits::default());
    let a = r.open_session(SocketAddr::from(([10, 1, 2, 3], 5555)));
    let b = r.open_session(addr(2));
    r.register(
        a,
        SocketAddr::from(([0, 0, 0, 0], 7000)),
        vec![RegisterFile { meta: meta("f", 1, 1), have: Have::Complete }],
    )
    .unwrap();
    assert_eq!(r.locations(b, "f").unwrap().sources[0].addr, SocketAddr::from(([10, 1, 2, 3], 7000)));
}

/// Each session's metadata bytes are budgeted, and so are the registry's: a file past either
/// budget is refused with its typed error, in Register and in Chunk Register, and leaving gives
/// the bytes back.
#[test]
fn metadata_budgets_in_bytes() {
    let (big, small) = (meta("big", 1, 64), meta("small", 1, 1));
    let (big_cost, small_cost) = (session_cost(&big), session_cost(&small));
    assert_eq!(big_cost, 256 + 80 + 3 * 3 + 68 * 64 + 64 + 8);
    let limits = Limits {
        max_meta_bytes_per_session: big_cost + small_cost,
        max_meta_bytes_total: big_cost + small_cost + holding_bytes(&big),
        ..Limits::default()
    };
    let r = Registry::new(limits.clone());
    let (a, b, c) = (r.open_session(addr(1)), r.open_session(addr(2)), r.open_session(addr(3)));
    assert_eq!(reg(&r, a, 10, vec![(big.clone(), Have::Complete), (small.clone(), Have::Complete)]), [Ok(()), Ok(())]);
    assert_eq!(r.meta_bytes(), big_cost + small_cost);
    // a is at its budget: one more chunk of a small file is refused.
    let per_session = RejectReason::SessionMetaQuota { max: limits.max_meta_bytes_per_session };
    assert_eq!(reg(&r, a, 10, vec![(meta("x", 1, 1), Have::Complete)]), [Err(per_session.clone())]);
    // Re-registering what it holds costs nothing more.
    assert_eq!(reg(&r, a, 10, vec![(big.clone(), Have::Partial(Bitmap::new(64)))]), [Ok(())]);
    // b may add a holding of big (a row more for the registry), not then a new file.
    let total = RejectReason::GlobalMetaQuota { max: limits.max_meta_bytes_total };
    assert_eq!(reg(&r, b, 20, vec![(big.clone(), Have::Complete)]), [Ok(())]);
    assert_eq!(reg(&r, c, 30, vec![(meta("y", 2, 1), Have::Complete)]), [Err(total.clone())]);
    // Chunk Register of a file not held yet is a new holding, under the same budgets.
    assert_eq!(r.chunk_register(c, "small", 0), Err(RequestError::Quota(total)));
    r.leave(b);
    r.chunk_register(c, "small", 0).unwrap();
    r.check_invariants();
    assert_eq!(r.meta_bytes(), big_cost + small_cost + holding_bytes(&small));
    let r2 = Registry::new(Limits { max_meta_bytes_per_session: big_cost - 1, ..Limits::default() });
    let d = r2.open_session(addr(4));
    reg(&r2, d, 40, vec![]);
    assert_eq!(
        reg(&r2, d, 40, vec![(big.clone(), Have::Complete)]),
        [Err(RejectReason::SessionMetaQuota { max: big_cost - 1 })]
    );
    assert_eq!(r2.meta_bytes(), 0);
    // Everything given back when the sessions end.
    for p in [a, c] {
        r.close_session(p);
    }
    r.check_invariants();
    assert_eq!(r.meta_bytes(), 0);
}

/// An IPv4-mapped IPv6 address (what a dual-stack listener sees of an IPv4 client) is the
/// IPv4 address: for the same-IP check, for an unspecified listen IP, and in File Locations.
#[test]
fn ipv4_mapped_addresses_are_canonical() {
    let mapped = |port| SocketAddr::new("::ffff:10.1.2.3".parse().unwrap(), port);
    let plain = |port| SocketAddr::from(([10, 1, 2, 3], port));
    let r = Registry::new(Limits::default());
    let caller = r.open_session(addr(1));
    for (observed, listen) in [(mapped(5000), mapped(7000)), (plain(5001), mapped(7001)), (mapped(5002), plain(7002))] {
        let p = r.open_session(observed);
        let files = vec![RegisterFile { meta: meta("f", 1, 1), have: Have::Complete }];
        assert_eq!(r.register(p, listen, files), Ok(vec![Ok(())]), "{observed} {listen}");
    }
    let p = r.open_session(mapped(5003));
    r.register(p, SocketAddr::new("::".parse().unwrap(), 7003), vec![]).unwrap();
    r.chunk_register(p, "f", 0).unwrap();
    let mut got: Vec<SocketAddr> = r.locations(caller, "f").unwrap().sources.iter().map(|s| s.addr).collect();
    got.sort();
    assert_eq!(got, [plain(7000), plain(7001), plain(7002), plain(7003)]);
    // A mapped address of another host is still another host.
    let other = SocketAddr::new("::ffff:10.9.9.9".parse().unwrap(), 7000);
    let refused = RequestError::ForeignEndpoint {
        announced: SocketAddr::from(([10, 9, 9, 9], 7000)),
        observed: [10, 1, 2, 3].into(),
    };
    assert_eq!(r.register(p, other, vec![]), Err(refused));
}

/// What a Register did names the first file it refused, whichever half refused it (the checks
/// outside the lock, or a duplicate, a conflict or a quota under it), for the tracker's log.
#[test]
fn the_first_refused_file_is_named() {
    let r = Registry::new(Limits::default());
    let p = r.open_session(addr(1));
    let apply = |files: Vec<FileMeta>| {
        let files = files.into_iter().map(|meta| RegisterFile { meta, have: Have::Complete }).collect();
        r.apply_register(p, r.check_register(addr(10), files).unwrap()).unwrap()
    };
    let done = apply(vec![meta("a", 1, 1)]);
    assert_eq!((done.results, done.first_refused), (vec![Ok(())], None));
    let mut bad_name = meta("b", 1, 1);
    bad_name.name = "../b".into();
    let done = apply(vec![meta("c", 1, 1), meta("a", 2, 1), bad_name]);
    assert_eq!(done.first_refused.as_deref(), Some("a"), "a conflict, before an invalid name");
    assert_eq!(done.results.iter().filter(|r| r.is_err()).count(), 2);
    let mut bad_name = meta("b", 1, 1);
    bad_name.name = "../b".into();
    let done = apply(vec![bad_name, meta("d", 1, 1), meta("d", 1, 1)]);
    assert_eq!(done.first_refused.as_deref(), Some("../b"));
    assert_eq!(done.results[2], Err(RejectReason::Duplicate));
    r.check_invariants();
}
