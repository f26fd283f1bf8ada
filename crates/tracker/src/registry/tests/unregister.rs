//! Unregister: Leave for one file, with the same ownership rules and the same bookkeeping.

use super::*;

fn names(r: &Registry) -> Vec<(String, u32)> {
    r.list(None).0.into_iter().map(|f| (f.name, f.sources)).collect()
}

/// The last holder's Unregister drops the file from every listing; with other holders the file
/// stays, with one source fewer. The session keeps its other files and its endpoint.
#[test]
fn unregister_removes_the_holding_and_the_file_with_its_last_holder() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    let (f, g) = (meta("f", 1, 3), meta("g", 2, 1));
    reg(&r, a, 10, vec![(f.clone(), Have::Complete), (g.clone(), Have::Complete)]);
    let mut half = Bitmap::new(3);
    half.set(1);
    reg(&r, b, 20, vec![(f.clone(), Have::Partial(half))]);

    r.unregister(a, "f").unwrap();
    r.check_invariants();
    assert_eq!(names(&r), vec![("f".into(), 1), ("g".into(), 1)], "f still listed by its other holder");
    assert_eq!(r.locations(a, "f").unwrap().availability, vec![0, 1, 0], "a's chunks are gone");

    r.unregister(b, "f").unwrap();
    r.check_invariants();
    assert_eq!(names(&r), vec![("g".into(), 1)], "f gone with its last holder");
    assert!(matches!(r.meta("f"), Err(RequestError::UnknownFile(_))));
    assert!(r.find_root(&f.root.to_string()).unwrap().0.is_empty(), "gone from the index by root too");

    // The session stays registered: a Chunk Register of another file needs no new Register.
    reg(&r, b, 20, vec![(g.clone(), Have::Partial(Bitmap::new(1)))]);
    r.chunk_register(b, "g", 0).unwrap();
    assert_eq!(r.stats(), Stats { sessions: 2, files: 1, holdings: 2 });
}

/// A file the session does not hold (never registered, held by another session only, already
/// unregistered, or no such file) is a typed error that changes nothing; so is an invalid name.
#[test]
fn unregister_of_a_file_not_held_is_refused() {
    let r = Registry::new(Limits::default());
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(meta("f", 1, 2), Have::Complete)]);
    let before = (r.stats(), r.meta_bytes());
    let not_held = |name: &str| Err(RequestError::NotHeld { name_len: name.len() as u32 });
    assert_eq!(r.unregister(b, "f"), not_held("f"), "another session's file cannot be removed");
    assert_eq!(r.unregister(b, "nothing"), not_held("nothing"));
    assert!(matches!(r.unregister(a, "../f"), Err(RequestError::InvalidName(_))));
    assert_eq!((r.stats(), r.meta_bytes()), before, "nothing changed");
    r.unregister(a, "f").unwrap();
    assert_eq!(r.unregister(a, "f"), not_held("f"), "only once");
    r.check_invariants();
    // The error names the name's length only; a name past the length limit is invalid first.
    let long = ["x".repeat(200), "y".repeat(200), "z".repeat(200)].join("/");
    assert_eq!(r.unregister(a, &long), not_held(&long));
    assert!(matches!(r.unregister(a, &"x".repeat(100_000)), Err(RequestError::InvalidName(_))));
}

/// The metadata budgets are given back exactly as on Leave: the session's charge by the file's
/// session cost, the registry's by a holding, and by the file too when it goes. So the budget
/// freed is usable again at once.
#[test]
fn unregister_gives_back_the_metadata_budgets_as_leave_does() {
    let (big, small) = (meta("big", 1, 8), meta("small", 2, 1));
    let (big_cost, small_cost) = (session_cost(&big), session_cost(&small));
    let limits = Limits {
        max_meta_bytes_per_session: big_cost + small_cost,
        max_meta_bytes_total: 2 * big_cost + small_cost,
        ..Limits::default()
    };
    let r = Registry::new(limits);
    let (a, b) = (r.open_session(addr(1)), r.open_session(addr(2)));
    reg(&r, a, 10, vec![(big.clone(), Have::Complete), (small.clone(), Have::Complete)]);
    reg(&r, b, 20, vec![(big.clone(), Have::Complete)]);
    let full = r.meta_bytes();
    assert_eq!(full, big_cost + small_cost + holding_bytes(&big));

    // Another holder remains: only a holding is given back.
    r.unregister(a, "big").unwrap();
    r.check_invariants();
    assert_eq!(r.meta_bytes(), full - holding_bytes(&big));
    // The last holder: the file's own bytes too.
    r.unregister(b, "big").unwrap();
    r.check_invariants();
    assert_eq!(r.meta_bytes(), small_cost);

    // The same figures as a Leave of the same holdings, from the same start.
    let r2 = Registry::new(Limits::default());
    let (a2, b2) = (r2.open_session(addr(1)), r2.open_session(addr(2)));
    reg(&r2, a2, 10, vec![(small.clone(), Have::Complete)]);
    reg(&r2, b2, 20, vec![(big.clone(), Have::Complete)]);
    r2.leave(b2);
    assert_eq!(r2.meta_bytes(), r.meta_bytes());

    // The session's budget is free again: a file as large as the one given back now fits, where
    // it would not have before (`check_invariants` checks the session's charge itself).
    let other = meta("bag", 3, 8);
    assert_eq!(session_cost(&other), big_cost);
    assert_eq!(reg(&r, a, 10, vec![(other, Have::Complete)]), vec![Ok(())]);
    assert_eq!(
        reg(&r, a, 10, vec![(meta("more", 4, 1), Have::Complete)]),
        vec![Err(RejectReason::SessionMetaQuota { max: big_cost + small_cost })]
    );
}

/// A session may register a name again with other content once it unregistered the old: what a
/// peer does when a file it shares changes.
#[test]
fn unregister_then_register_replaces_a_files_content() {
    let r = Registry::new(Limits::default());
    let a = r.open_session(addr(1));
    let (old, new) = (meta("f", 1, 2), meta("f", 2, 3));
    reg(&r, a, 10, vec![(old.clone(), Have::Complete)]);
    assert_eq!(
        reg(&r, a, 10, vec![(new.clone(), Have::Complete)]),
        vec![Err(RejectReason::ContentConflict { existing: old.root })]
    );
    r.unregister(a, "f").unwrap();
    assert_eq!(reg(&r, a, 10, vec![(new.clone(), Have::Complete)]), vec![Ok(())]);
    assert_eq!(r.meta("f").unwrap().root, new.root);
}
