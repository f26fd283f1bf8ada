//! Name validation: an accepted name always joins to a path strictly inside any root, made only
//! of normal components; the bookkeeping folder is never reachable.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use proto::validate_name;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if validate_name(name).is_err() {
        return;
    }
    let root = Path::new("/srv/share");
    let joined = root.join(name);
    assert!(joined.starts_with(root) && joined != root, "{name:?} leaves the root");
    let inside = joined.strip_prefix(root).expect("inside the root");
    let comps: Vec<Component> = inside.components().collect();
    assert!(comps.iter().all(|c| matches!(c, Component::Normal(_))), "{name:?}");
    assert_eq!(comps.len(), name.split('/').count(), "{name:?} is not split as validated");
    assert!(!comps[0].as_os_str().eq_ignore_ascii_case(proto::name::RESERVED_DIR), "{name:?}");
});
