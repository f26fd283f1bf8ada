//! A scan of a wide folder tree holds open only the folders on its current path: with the
//! process's descriptors capped far below the number of folders, every file is still found. (A
//! test binary of its own: it lowers the process's descriptor limit.)

// Test helpers, where a failure should panic.
#![allow(clippy::unwrap_used)]

use chunkstore::Store;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

#[test]
fn a_scan_of_many_folders_needs_few_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    for i in 0..600 {
        let dir = share.join(format!("d{i:03}/e"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), i.to_string()).unwrap();
    }
    let store = Store::open(&share).unwrap();
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(128), maximum: old.maximum }).unwrap();
    let scanned = store.scan_with_stats();
    setrlimit(Resource::Nofile, old).unwrap();
    let (metas, stats) = scanned.unwrap();
    assert_eq!((metas.len(), stats.skipped), (600, 0));
}
