//! Find Root through the registry: matching by prefix, the order, the cap, and the index by root
//! kept in step with the files through every way a file comes and goes (a proptest compares it
//! with a scan of the file list).

use super::*;
use proptest::prelude::*;
use proto::Hash;

/// A one-chunk file: its only chunk hash is its root, so any root makes valid metadata.
fn rooted(name: &str, root: [u8; 32]) -> FileMeta {
    FileMeta {
        name: name.into(),
        length: 1,
        chunk_size: MIN_CHUNK_SIZE,
        root: Hash(root),
        chunk_hashes: vec![Hash(root)],
    }
}

/// A root of eight bytes `head`, then 24 bytes `tail`.
fn root(head: u8, tail: u8) -> [u8; 32] {
    let mut r = [tail; 32];
    r[..8].fill(head);
    r
}

fn names(found: &(Vec<FileSummary>, bool)) -> (Vec<&str>, bool) {
    (found.0.iter().map(|f| f.name.as_str()).collect(), found.1)
}

#[test]
fn prefixes_list_by_root_then_name() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    let files = [("b", root(0x11, 1)), ("a", root(0x11, 1)), ("c", root(0x11, 2)), ("d", root(0x22, 1))];
    reg(&r, a, 10, files.iter().map(|&(n, rt)| (rooted(n, rt), Have::Complete)).collect());
    reg(&r, b, 20, vec![(rooted("c", root(0x11, 2)), Have::Partial(Bitmap::full(1)))]);
    let find = |p: &str| r.find_root(p).unwrap();
    assert_eq!(names(&find("1111111111111111")), (vec!["a", "b", "c"], false));
    assert_eq!(names(&find(&Hash(root(0x11, 1)).to_string())), (vec!["a", "b"], false));
    assert_eq!(names(&find(&Hash(root(0x11, 2)).to_string().to_uppercase())), (vec!["c"], false));
    // An odd number of digits ends in half a byte: 0x01 and 0x02 share their high nibble.
    assert_eq!(names(&find("11111111111111110")), (vec!["a", "b", "c"], false));
    assert_eq!(names(&find("111111111111111102")), (vec!["c"], false));
    assert_eq!(find("3333333333333333"), (vec![], false));
    // Summarised as File List summarises: "c" has two sources, both complete.
    let listed: Vec<FileSummary> = r.list(None).0;
    assert_eq!(find("2222222222222222").0, [listed[3].clone()]);
    assert_eq!(find("1111111111111111").0, listed[..3]);
    assert_eq!((listed[2].sources, listed[2].complete_sources), (2, 2));
}

#[test]
fn invalid_prefixes_are_refused_by_length() {
    let r = Registry::new(Limits::default());
    let refused = |len| Err(RequestError::InvalidRootPrefix { prefix_len: len });
    assert_eq!(r.find_root(&"1".repeat(15)), refused(15));
    assert_eq!(r.find_root(&"1".repeat(65)), refused(65));
    assert_eq!(r.find_root("111111111111111x"), refused(16));
    assert_eq!(r.find_root(&"x".repeat(1 << 20)), refused(1 << 20));
    assert_eq!(r.find_root(&"1".repeat(64)), Ok((vec![], false)));
}

/// At most `MAX_ROOT_MATCHES` files, the first in (root, name) order; `more` says some were left
/// out, and only then.
#[test]
fn the_cap_and_more() {
    let r = Registry::new(Limits::default());
    let p = r.open_session(addr(1));
    let cap = MAX_ROOT_MATCHES as u8;
    // Registered in reverse, so the order comes from the index, not from registration.
    reg(&r, p, 10, (1..=cap).rev().map(|i| (rooted(&format!("f{i:02}"), root(0x44, i)), Have::Complete)).collect());
    let (files, more) = r.find_root("4444444444444444").unwrap();
    assert_eq!((files.len(), more), (MAX_ROOT_MATCHES, false));
    reg(&r, p, 10, vec![(rooted("f00", root(0x44, cap + 1)), Have::Complete)]);
    let (files, more) = r.find_root("4444444444444444").unwrap();
    assert_eq!((files.len(), more), (MAX_ROOT_MATCHES, true));
    let want: Vec<String> = (1..=cap).map(|i| format!("f{i:02}")).collect();
    assert_eq!(files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), want, "the highest root left out");
}

/// A file leaves the index with its last holder, whether it leaves or its session ends, and
/// comes back if registered again.
#[test]
fn files_leave_the_index_with_their_last_holder() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    let shared = rooted("shared", root(0x55, 1));
    reg(&r, a, 10, vec![(shared.clone(), Have::Complete), (rooted("alone", root(0x55, 2)), Have::Complete)]);
    reg(&r, b, 20, vec![]);
    r.chunk_register(b, "shared", 0).unwrap();
    let find = || names(&r.find_root("5555555555555555").unwrap()).0.into_iter().map(String::from).collect::<Vec<_>>();
    assert_eq!(find(), ["shared", "alone"]);
    r.leave(a);
    r.check_invariants();
    assert_eq!(find(), ["shared"]);
    r.close_session(b);
    r.check_invariants();
    assert!(find().is_empty());
    reg(&r, a, 10, vec![(shared, Have::Complete)]);
    assert_eq!(find(), ["shared"]);
}

#[derive(Debug, Clone)]
enum Op {
    /// Session, name, root.
    Register(usize, usize, usize),
    ChunkRegister(usize, usize),
    Leave(usize),
    /// Ends a session (as a closed connection or an expiry does) and opens another in its place.
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..5usize, 0..4usize).prop_map(|(p, n, r)| Op::Register(p, n, r)),
        2 => (0..3usize, 0..5usize).prop_map(|(p, n)| Op::ChunkRegister(p, n)),
        1 => (0..3usize).prop_map(Op::Leave),
        1 => (0..3usize).prop_map(Op::Close),
    ]
}

proptest! {
    /// After any sequence of registrations, leaves and session ends, the index by root holds
    /// exactly the files' (root, name) (`check_invariants`), and Find Root of every prefix tried
    /// equals a scan of the file list.
    #[test]
    fn the_index_equals_a_scan(ops in proptest::collection::vec(op(), 1..40)) {
        let r = Registry::new(Limits::default());
        // Five names over four roots, three sharing their first eight bytes: names share roots,
        // prefixes match several roots, and a name's content may conflict.
        let roots = [root(0xab, 1), root(0xab, 2), root(0xab, 0x21), root(0xcd, 1)];
        let mut peers: Vec<PeerId> = (0..3).map(|i| r.open_session(addr(i))).collect();
        let prefixes: Vec<String> = ["abababababababab", "ABABABABABABABAB0", "abababababababab2", "cdcdcdcdcdcdcdcd"]
            .into_iter()
            .map(String::from)
            .chain(roots.iter().map(|rt| Hash(*rt).to_string()))
            .collect();
        for op in ops {
            match op {
                Op::Register(p, n, rt) => {
                    let file = RegisterFile { meta: rooted(&format!("n{n}"), roots[rt]), have: Have::Complete };
                    r.register(peers[p], addr(100 + p as u16), vec![file]).unwrap();
                }
                Op::ChunkRegister(p, n) => {
                    let _ = r.chunk_register(peers[p], &format!("n{n}"), 0);
                }
                Op::Leave(p) => r.leave(peers[p]),
                Op::Close(p) => {
                    r.close_session(peers[p]);
                    peers[p] = r.open_session(addr(p as u16));
                }
            }
            r.check_invariants();
            let listed = r.list(None).0;
            for prefix in &prefixes {
                let parsed = RootPrefix::parse(prefix).unwrap();
                let mut scan: Vec<FileSummary> = listed.iter().filter(|f| parsed.matches(&f.root)).cloned().collect();
                scan.sort_by(|x, y| (x.root, &x.name).cmp(&(y.root, &y.name)));
                prop_assert_eq!(r.find_root(prefix).unwrap(), (scan, false), "{}", prefix);
            }
        }
    }
}
