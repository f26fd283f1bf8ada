use proto::Hash;

use super::*;

fn root(n: u8) -> Hash {
    Hash([n; 32])
}

#[test]
fn names_prefixes_globs_and_pins_are_told_apart() {
    assert_eq!(Selector::parse("a/b.bin").ok(), Some(Selector::Name { name: "a/b.bin".into(), root: None }));
    assert_eq!(Selector::parse("data/imagenet/").ok(), Some(Selector::Prefix("data/imagenet/".into())));
    let Ok(Selector::Glob(g)) = Selector::parse("models/*.safetensors") else { panic!("a glob") };
    assert!(g.matches("models/a.safetensors"));
    assert!(!g.matches("models/sub/a.safetensors"), "* stays within one folder");
    assert!(!g.matches("models/a.bin"));
    let Ok(Selector::Glob(deep)) = Selector::parse("models/**/*.bin") else { panic!("a glob") };
    assert!(deep.matches("models/x/y/z.bin"));

    let full = root(0xab).to_string();
    let Ok(Selector::Name { name, root: Some(r) }) = Selector::parse(&format!("x.bin@{full}")) else { panic!() };
    assert_eq!(name, "x.bin");
    assert!(r.matches(&root(0xab)) && !r.matches(&root(0xac)));
    let Ok(Selector::Name { root: Some(r), .. }) = Selector::parse("x.bin@ABABABABABABABAB") else { panic!() };
    assert!(r.matches(&root(0xab)), "upper-case prefixes match");
    // A part after '@' that is not all hex is part of the name.
    assert_eq!(Selector::parse("me@home.txt").ok(), Some(Selector::Name { name: "me@home.txt".into(), root: None }));
}

#[test]
fn bad_selectors_are_refused_with_reasons() {
    assert_eq!(Selector::parse(""), Err(SelectError::Empty));
    assert!(matches!(Selector::parse("x@abcdef"), Err(SelectError::RootLength { len: 6, .. })));
    assert!(matches!(Selector::parse(&format!("x@{}", "a".repeat(65))), Err(SelectError::RootLength { len: 65, .. })));
    assert!(matches!(Selector::parse("../etc/passwd"), Err(SelectError::InvalidName { .. })));
    assert!(matches!(Selector::parse("/etc/"), Err(SelectError::InvalidName { .. })));
    assert!(matches!(Selector::parse(".p2p/partial/"), Err(SelectError::InvalidName { .. })));
    assert!(matches!(Selector::parse("a[b"), Err(SelectError::BadGlob { .. })));
    assert!(matches!(parse_root("0123456789abcdeg"), Err(SelectError::RootNotHex { bad: 'g', .. })));
    let e = parse_root("0123456789abcde").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("15 hex digits") && e.contains("at least 16"), "{e}");
}

#[test]
fn manifests_round_trip_and_bad_lines_are_named() {
    let text = format_manifest([(&root(2), "b/two.bin"), (&root(1), "one.bin")]);
    assert_eq!(text, format!("{}  b/two.bin\n{}  one.bin\n", root(2), root(1)));
    let parsed = parse_manifest(&format!("# a comment\n\n{text}{}  one.bin\n", root(1))).unwrap_or_default();
    assert_eq!(parsed, vec![(root(2), "b/two.bin".to_owned()), (root(1), "one.bin".to_owned())], "duplicates merged");
    // b3sum's binary-mode marker is accepted too.
    assert_eq!(parse_manifest(&format!("{} *x\n", root(3))).ok(), Some(vec![(root(3), "x".to_owned())]));

    let line = |text: &str| match parse_manifest(text) {
        Err(SelectError::Manifest { line, reason }) => (line, reason),
        other => panic!("expected a manifest error, got {other:?}"),
    };
    let ok = format!("{}  fine\n", root(1));
    assert_eq!(line(&format!("{ok}{}  ../../etc/passwd\n", root(2))).0, 2);
    assert!(line(&format!("{ok}{}  /abs\n", root(2))).1.contains("unsafe"));
    assert_eq!(line(&format!("{ok}{ok}zz{}  x\n", &root(1).to_string()[2..])).0, 3);
    assert_eq!(line(&format!("{} x\n", root(1))).0, 1);
    assert_eq!(line("short  x\n").0, 1);
    assert!(line(&format!("{ok}{}  fine\n", root(2))).1.contains("twice"));
    assert!(line(&format!("\\{}  a\\\\b\n", root(1))).1.contains("escaped"));
    assert_eq!(parse_manifest("# nothing\n\n"), Err(SelectError::EmptyManifest));
}

#[test]
fn manifests_are_sorted_by_name() {
    let text = format_manifest([(&root(2), "b"), (&root(1), "a")]);
    assert_eq!(text, format!("{}  a\n{}  b\n", root(1), root(2)));
}
