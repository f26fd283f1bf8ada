//! Unit tests of [`Holders`]: the arrays kept in step through every change, and the draw.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Every peer `PeerId(i)` serves at port `i`.
fn check(h: &Holders) {
    h.check_invariants("f", |p| Some(addr(p.0 as u16)));
}

fn partial(n: u32, chunks: &[u32]) -> Have {
    Have::Partial(Bitmap::with_ones(n, chunks.iter().copied()))
}

/// Adding, promoting and removing holders in any order keeps the lists, rows, counts and
/// availability in step, including the holder a swap-remove moves into a freed slot.
#[test]
fn changes_keep_the_arrays_in_step() {
    let mut h = Holders::new(10);
    h.add(PeerId(1), addr(1), Have::Complete);
    h.add(PeerId(2), addr(2), partial(10, &[0, 9]));
    h.add(PeerId(3), addr(3), partial(10, &[1]));
    h.add(PeerId(4), addr(4), partial(10, &[]));
    h.add(PeerId(5), addr(5), partial(10, &(0..10).collect::<Vec<_>>()));
    check(&h);
    assert_eq!((h.len(), h.sources(), h.complete_sources()), (5, 4, 2));
    assert_eq!(h.availability(), [3, 3, 2, 2, 2, 2, 2, 2, 2, 3]);
    // Removing the first partial holder moves the last into its slot and row.
    h.remove(PeerId(2));
    check(&h);
    // An empty holding becomes partial at its first chunk, and complete at its last.
    (0..9).for_each(|c| h.add_chunks(PeerId(4), addr(4), &[c]));
    check(&h);
    h.add_chunks(PeerId(4), addr(4), &[9]);
    check(&h);
    assert_eq!((h.sources(), h.complete_sources()), (4, 3));
    // Re-registering replaces the holding; a chunk already held changes nothing.
    h.add(PeerId(1), addr(1), partial(10, &[3]));
    h.add_chunks(PeerId(1), addr(1), &[3]);
    check(&h);
    assert_eq!(h.availability(), [2, 3, 2, 3, 2, 2, 2, 2, 2, 2]);
    [1, 3, 4, 5].into_iter().for_each(|p| h.remove(PeerId(p)));
    check(&h);
    assert!(h.is_empty());
    assert_eq!(h.availability(), [0; 10]);
}

/// A holder that moves is drawn at its new address; the caller is never drawn nor counted.
#[test]
fn draw_leaves_out_the_caller_and_follows_moves() {
    let mut h = Holders::new(4);
    h.add(PeerId(1), addr(1), Have::Complete);
    h.add(PeerId(2), addr(2), partial(4, &[2]));
    h.moved(PeerId(2), addr(7));
    h.check_invariants("f", |p| Some(addr(if p.0 == 2 { 7 } else { p.0 as u16 })));
    let host = OwnHost::reached_at(std::net::Ipv4Addr::LOCALHOST.into());
    let (sources, total) = h.draw(PeerId(1), 8, host, &mut rand::rng());
    assert_eq!(total, 1);
    assert_eq!(sources, [SourceInfo { addr: addr(7), have: partial(4, &[2]) }]);
}

/// A holder at an unspecified IP (on the tracker's host, every interface) is drawn at the address
/// the caller reached the tracker at; others as they are, partial or complete.
#[test]
fn draw_lists_holders_on_the_trackers_host_where_the_caller_reaches_them() {
    let mut h = Holders::new(4);
    let everywhere = SocketAddr::from(([0, 0, 0, 0], 7000));
    h.add(PeerId(1), everywhere, Have::Complete);
    h.add(PeerId(2), everywhere, partial(4, &[1]));
    h.add(PeerId(3), addr(7003), Have::Complete);
    let host = OwnHost::reached_at(SocketAddr::from(([10, 0, 0, 1], 6969)).ip());
    let (sources, total) = h.draw(PeerId(9), 8, host, &mut rand::rng());
    let mut got: Vec<SocketAddr> = sources.iter().map(|s| s.addr).collect();
    got.sort();
    let there = SocketAddr::from(([10, 0, 0, 1], 7000));
    assert_eq!((total, got), (3, vec![there, there, addr(7003)]));
}
