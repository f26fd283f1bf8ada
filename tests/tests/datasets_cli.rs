//! Data sets through the real binaries, as a user meets them: a manifest written by `peer
//! manifest`, fetched with `peer download --manifest` and checked with `b3sum --check`; a
//! read-only share served; bad selections refused with nothing written; `peer partials`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::netns::{Finished, Proc};
use tests::{binary, with_timeout, write_file};
use tokio::time::Instant;

/// `peer ARGS`, bounded in time.
async fn peer(args: &[&str]) -> Finished {
    let mut c = Command::new(binary("peer"));
    c.args(args).env_remove("RUST_LOG").env_remove("P2P_TRACKER").env_remove("P2P_SHARE").stdin(Stdio::null());
    let p = Proc::spawn(c, &format!("peer {args:?}")).unwrap();
    p.finish(Duration::from_secs(60)).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn tracker() -> (Proc, String) {
    let port = free_port();
    let mut c = Command::new(binary("tracker"));
    c.args(["--listen", &format!("127.0.0.1:{port}")]).env("RUST_LOG", "warn");
    let mut p = Proc::spawn(c, "tracker").unwrap();
    p.wait_line("tracker listening", Duration::from_secs(10)).await.unwrap();
    (p, format!("127.0.0.1:{port}"))
}

/// `peer serve` of `share` (state in `state`), waited for until the tracker lists `n` files.
async fn seed(t: &str, share: &Path, state: &Path, n: usize) -> Proc {
    let mut c = Command::new(binary("peer"));
    c.args(["--tracker", t, "serve", "--listen", "127.0.0.1:0", "--share"]).arg(share).arg("--state-dir").arg(state);
    let p = Proc::spawn(c, "seed").unwrap();
    let start = Instant::now();
    loop {
        let end = peer(&["--tracker", t, "--json", "list"]).await;
        let listed: serde_json::Value = serde_json::from_str(&end.stdout).unwrap_or_default();
        if listed.as_array().is_some_and(|a| a.len() == n) {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the seed never registered\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// b3sum, or a skip message; required when P2P_REQUIRE_TOOLS is set (CI installs it).
fn b3sum() -> Option<()> {
    let found = Command::new("b3sum").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("P2P_REQUIRE_TOOLS").is_none(), "b3sum is required (apt-get install b3sum)");
        eprintln!("SKIPPED the b3sum check: b3sum is not installed (apt-get install b3sum)");
        return None;
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_pins_a_data_set_and_b3sum_checks_the_copy() {
    binary("peer");
    with_timeout(async {
        let (_t, t) = tracker().await;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for (i, name) in
            ["data/v3/a.bin", "data/v3/sub/b.bin", "data/v3/empty", "data/v2/old.bin", "other.txt"].iter().enumerate()
        {
            write_file(&src, name, [300_000, 70_000, 0, 5000, 10][i], i as u64);
        }
        let _seed = seed(&t, &src, &dir.path().join("state-src"), 5).await;

        let manifest = peer(&["--tracker", &t, "manifest", "data/v3/"]).await;
        assert!(manifest.status.success(), "{:?}", manifest.stderr);
        let lines: Vec<&str> = manifest.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", manifest.stdout);
        assert!(lines.iter().all(|l| l.len() > 66 && &l[64..66] == "  "), "b3sum's format: {lines:?}");
        let file = dir.path().join("v3.b3");
        std::fs::write(&file, &manifest.stdout).unwrap();

        let state = dir.path().join("state-dst");
        let args = [
            "--tracker",
            &t,
            "download",
            "--linger",
            "0",
            "--manifest",
            s(&file),
            "--share",
            s(&dst),
            "--state-dir",
            s(&state),
        ];
        let end = peer(&args).await;
        assert!(end.status.success(), "{:?}\n{}", end.stderr, end.stdout);
        assert!(end.stdout.contains("3 of 3 files"), "{}", end.stdout);
        assert!(!dst.join("data/v2/old.bin").exists() && !dst.join("other.txt").exists());
        if b3sum().is_some() {
            let check = Command::new("b3sum").arg("--check").arg(&file).current_dir(&dst).output().unwrap();
            let out = String::from_utf8_lossy(&check.stdout);
            assert!(check.status.success(), "{out}{}", String::from_utf8_lossy(&check.stderr));
            assert_eq!(out.matches(": OK").count(), 3, "{out}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_selections_are_clear_errors_and_nothing_is_written() {
    binary("peer");
    with_timeout(async {
        let (_t, t) = tracker().await;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write_file(&src, "data/a.bin", 1000, 1);
        write_file(&src, "dup1.bin", 1000, 2);
        write_file(&src, "dup2.bin", 1000, 2);
        let _seed = seed(&t, &src, &dir.path().join("state-src"), 3).await;
        let dst = dir.path().join("dst");
        let state = dir.path().join("state-dst");
        let root = tests::meta_of(&tests::test_data(1000, 2), "dup1.bin").root.to_string();
        let unsafe_manifest = dir.path().join("unsafe.b3");
        std::fs::write(&unsafe_manifest, format!("{root}  ok.bin\n{root}  ../../etc/passwd\n")).unwrap();
        let malformed = dir.path().join("bad.b3");
        std::fs::write(&malformed, format!("{root}  ok.bin\nnot a manifest line\n")).unwrap();
        // Exit codes: 3 for what is not on the tracker, 2 for what cannot be understood.
        let cases: Vec<(Vec<String>, &str, i32)> = vec![
            (vec!["nothing/".into()], "no file on the tracker matches \"nothing/\"", 3),
            (vec!["data/*.gguf".into()], "matches \"data/*.gguf\"", 3),
            (vec!["--root".into(), "0".repeat(64)], "no file on the tracker has root", 3),
            (vec!["--root".into(), root[..20].to_owned()], "matches 2 files", 2),
            (vec!["--root".into(), root[..15].to_owned()], "has 15 hex digits: give at least 16", 2),
            (vec![format!("dup1.bin@{}", &root[..10])], "has 10 hex digits", 2),
            (vec!["--manifest".into(), s(&malformed).to_owned()], "manifest line 2", 2),
            (vec!["--manifest".into(), s(&unsafe_manifest).to_owned()], "manifest line 2: unsafe or invalid name", 2),
            (vec!["../escape".into()], "invalid name", 2),
        ];
        for (what, expected, code) in cases {
            let mut args =
                vec!["--tracker", &t, "download", "--linger", "0", "--share", s(&dst), "--state-dir", s(&state)];
            args.extend(what.iter().map(String::as_str));
            let end = peer(&args).await;
            assert_eq!(end.status.code(), Some(code), "{what:?}: {:?}", end.stderr);
            let err = end.stderr.join("\n");
            assert!(err.contains(expected), "{what:?}: expected {expected:?} in {err:?}");
            let written = if dst.exists() { tests::walk_files(&dst) } else { Vec::new() };
            assert!(written.is_empty(), "{what:?} wrote {written:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_share_is_served() {
    binary("peer");
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        let data = write_file(&ro, "weights/model.bin", 500_000, 7);
        // A read-only mount, so not even root can write it (root ignores permission bits).
        let bind = Command::new("mount").arg("--bind").arg(&ro).arg(&ro).stderr(Stdio::null()).status();
        if !bind.is_ok_and(|s| s.success()) {
            eprintln!("SKIPPED: cannot bind-mount (needs root)");
            return;
        }
        let _unmount = tests::Unmount(ro.clone());
        let remount = Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&ro).status().unwrap();
        assert!(remount.success());
        assert!(std::fs::write(ro.join("probe"), b"x").is_err(), "the share is read-only");

        let (_t, t) = tracker().await;
        let _seed = seed(&t, &ro, &dir.path().join("state-ro"), 1).await;
        let dst = dir.path().join("dst");
        let st = dir.path().join("st");
        let args = [
            "--tracker",
            &t,
            "download",
            "--linger",
            "0",
            "weights/model.bin",
            "--share",
            s(&dst),
            "--state-dir",
            s(&st),
        ];
        let end = peer(&args).await;
        assert!(end.status.success(), "{:?}", end.stderr);
        assert_eq!(std::fs::read(dst.join("weights/model.bin")).unwrap(), data);
        assert_eq!(tests::walk_files(&ro), vec![std::path::PathBuf::from("weights/model.bin")], "nothing written");
        assert!(dir.path().join("state-ro/hash-cache").exists(), "the hash cache is in the state folder");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_are_listed_and_cleaned() {
    binary("peer");
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let state = dir.path().join("state");
        let data = tests::test_data(400_000, 3);
        let meta = tests::meta_of(&data, "big/part.bin");
        tests::make_partial(&share, &meta, &data, 0..2);
        let list = peer(&["--json", "partials", "--share", s(&share), "--state-dir", s(&state)]).await;
        assert!(list.status.success(), "{:?}", list.stderr);
        let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
        assert_eq!(rows[0]["name"], "big/part.bin");
        assert_eq!(rows[0]["chunks_done"], 2);
        assert_eq!(rows[0]["root"], meta.root.to_string());
        // Untouched for a day? Not yet: nothing removed.
        let young =
            peer(&["partials", "--clean", "--older-than", "1d", "--share", s(&share), "--state-dir", s(&state)]).await;
        assert!(young.status.success() && young.stdout.contains("no partial downloads"), "{}", young.stdout);
        let clean = peer(&["partials", "--clean", "--share", s(&share), "--state-dir", s(&state)]).await;
        assert!(clean.status.success() && clean.stdout.contains("removed 1"), "{}", clean.stdout);
        let after = peer(&["partials", "--share", s(&share), "--state-dir", s(&state)]).await;
        assert!(after.stdout.contains("no partial downloads"), "{}", after.stdout);
        let bad = peer(&["partials", "--older-than", "soon", "--share", s(&share)]).await;
        assert_eq!(bad.status.code(), Some(2), "a bad duration is a usage error: {:?}", bad.stderr);
    })
    .await;
}
