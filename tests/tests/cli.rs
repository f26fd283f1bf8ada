//! The `peer` command line as a user meets it: exit codes a script can tell apart, a closed
//! stdout, progress lines with rate and ETA (and "waiting" without sources), resumed bytes kept
//! out of the rate, help texts, a port in use, a share path that is a file, waiting for a file
//! that is not there yet, stall and run timeouts, `serve`'s reports, and the default linger after a
//! download. Trackers and seeds run in-process on port 0; the `peer` under test is the real binary.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::netns::{Finished, Proc};
use tests::{binary, spawn_peer, spawn_tracker, with_timeout, write_file, MIB};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

/// A `peer` command: `--tracker T ARGS`, logs quiet, nothing from the environment.
fn peer_cmd(tracker: SocketAddr, args: &[&str]) -> Command {
    let mut c = Command::new(binary("peer"));
    c.arg("--tracker").arg(tracker.to_string()).args(args);
    c.env("RUST_LOG", "warn").env_remove("P2P_TRACKER").env_remove("P2P_SHARE").env_remove("P2P_STATE_DIR");
    c.stdin(Stdio::null());
    c
}

/// Runs `peer` to its end (at most 60 s).
async fn run(tracker: SocketAddr, args: &[&str]) -> Finished {
    let p = Proc::spawn(peer_cmd(tracker, args), &format!("peer {args:?}")).unwrap();
    p.finish(Duration::from_secs(60)).await.unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A download's arguments: `download NAME --share DIR --state-dir DIR/.state` and `extra`.
fn download_args<'a>(name: &'a str, share: &'a Path, state: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["download", name, "--listen", "127.0.0.1:0", "--share", s(share), "--state-dir", s(state)];
    a.extend_from_slice(extra);
    a
}

fn tracker_config() -> tracker::Config {
    tracker::Config::default()
}

/// `peer --json locate NAME` whose stdout reader is gone before it writes: it ends quietly,
/// exit 0, instead of panicking with "Broken pipe" (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "f.bin", 100_000, 1);
        let seed = spawn_peer(t.addr(), dir.path(), |_| {}).await;
        for args in [&["--json", "locate", "f.bin"][..], &["list"][..], &["--json", "list"][..]] {
            let mut c = tokio::process::Command::from(peer_cmd(t.addr(), args));
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            // The reader goes away at once, as `| head` does once it has its lines.
            drop(child.stdout.take());
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
            assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        }
        seed.shutdown().await;
    })
    .await;
}

/// Piped progress lines carry a rate and an ETA and say "1 source" (not "1 sources"); after a
/// resume, the rate counts only this run's bytes and the report says how much was resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_show_rate_and_eta_and_a_resume_is_not_counted_as_transfer() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst, state) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("state"));
        let data = write_file(&src, "f.bin", 6 * MIB, 2);
        // 6 MiB at 1 MiB/s: several progress lines (one every 2 s).
        let seed = spawn_peer(t.addr(), &src, |c| c.upload_rate = Some(MIB as u64)).await;
        // Half of the file is already here from "an earlier run".
        let meta = tests::meta_of(&data, "f.bin");
        let half = meta.num_chunks() / 2;
        tests::make_partial(&dst, &meta, &data, 0..half);

        let end = run(t.addr(), &download_args("f.bin", &dst, &state, &["--linger", "0"])).await;
        assert!(end.status.success(), "{:?}", end.stderr);
        assert_eq!(std::fs::read(dst.join("f.bin")).unwrap(), data);
        let lines: Vec<&String> = end.stderr.iter().filter(|l| l.starts_with("f.bin: ")).collect();
        assert!(!lines.is_empty(), "no progress lines: {:?}", end.stderr);
        for l in &lines {
            assert!(l.contains("/s, ETA ") || l.contains("waiting for sources"), "no rate or ETA: {l}");
            assert!(!l.contains("1 sources"), "{l}");
        }
        assert!(lines.iter().any(|l| l.contains("(1 source)")), "{lines:?}");
        // This run fetched about 3 MiB at the seed's 1 MiB/s: the rate printed is that, not
        // 6 MiB over the time.
        let report = end.stdout.lines().next().unwrap();
        let rate = report.split(", ").find(|p| p.ends_with("/s")).unwrap();
        let mib_s: f64 = rate.trim_end_matches(" MiB/s").trim_end_matches(" KiB/s").parse().unwrap();
        let mib_s = if rate.ends_with("KiB/s") { mib_s / 1024.0 } else { mib_s };
        assert!(mib_s < 1.5, "the rate counts resumed bytes: {report}");
        assert!(end.stdout.contains(&format!("resumed {half} chunks")), "{}", end.stdout);
        assert!(end.stdout.contains("fetched 3.00 MiB now"), "{}", end.stdout);
        seed.shutdown().await;
    })
    .await;
}

/// `-h` and `--help` start with the same description; both list the exit codes.
#[test]
fn short_and_long_help_describe_the_tool_alike() {
    let help = |flag: &str| {
        let out = Command::new(binary("peer")).arg(flag).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (short, long) = (help("-h"), help("--help"));
    let first = |s: &str| s.lines().next().unwrap_or_default().trim_end_matches('.').to_owned();
    assert_eq!(first(&short), first(&long));
    for h in [&short, &long] {
        assert!(h.contains("Exit codes:") && h.contains("3    not found"), "{h}");
    }
}

/// A port in use is named once, with the address and what to do; a share path that is a file
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_and_a_share_that_is_a_file_are_clear_errors() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().to_string();
        let share = dir.path().join("share");
        let end = run(t.addr(), &["serve", "--listen", &port, "--share", s(&share)]).await;
        assert_eq!(end.status.code(), Some(1));
        let err = end.stderr.join("\n");
        assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
        assert_eq!(err.matches("Address already in use").count(), 1, "said twice: {err}");

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let end = run(t.addr(), &["serve", "--share", s(&file)]).await;
        assert_eq!(end.status.code(), Some(1));
        assert!(end.stderr.join("\n").contains("is a file"), "{:?}", end.stderr);
    })
    .await;
}

/// `list` keeps its columns in line past 40-character names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_columns_stay_aligned_with_long_names() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}.bin", "a-rather-long-folder-name-for-a-data-set", "x".repeat(30));
        write_file(dir.path(), &long, 1000, 3);
        write_file(dir.path(), "short.bin", 5_000_000, 4);
        let seed = spawn_peer(t.addr(), dir.path(), |_| {}).await;
        let end = run(t.addr(), &["list"]).await;
        assert!(end.status.success());
        let lines: Vec<&str> = end.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", end.stdout);
        // The root column starts at the same place on every line.
        let at = |l: &str| l.rfind("  ").unwrap();
        assert!(lines.iter().all(|l| at(l) == at(lines[0])), "{}", end.stdout);
        seed.shutdown().await;
    })
    .await;
}

/// Exit codes: 3 for a name the trackers do not have (at once, without --wait); with --wait,
/// the download waits for it, and succeeds once a seed shares it; with --wait and --timeout and
/// no seed, 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_a_file_that_is_not_there_yet() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst, state) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("state"));
        let end = run(t.addr(), &download_args("late.bin", &dst, &state, &[])).await;
        assert_eq!(end.status.code(), Some(3), "{:?}", end.stderr);
        let end = run(t.addr(), &download_args("late.bin", &dst, &state, &["--wait", "--timeout", "1500ms"])).await;
        assert_eq!(end.status.code(), Some(5), "{:?}", end.stderr);
        assert!(end.stderr.join("\n").contains("still not on the trackers"), "{:?}", end.stderr);

        let mut waiting = Proc::spawn(
            peer_cmd(t.addr(), &download_args("late.bin", &dst, &state, &["--wait", "--linger", "0"])),
            "waiting downloader",
        )
        .unwrap();
        waiting.wait_line("waiting: ", Duration::from_secs(20)).await.unwrap();
        let data = write_file(&src, "late.bin", 300_000, 5);
        let seed = spawn_peer(t.addr(), &src, |_| {}).await;
        let end = waiting.finish(Duration::from_secs(30)).await.unwrap();
        assert!(end.status.success(), "{:?}", end.stderr);
        assert_eq!(std::fs::read(dst.join("late.bin")).unwrap(), data);
        seed.shutdown().await;
    })
    .await;
}

/// The only seed vanishes without a word (SIGKILL) mid-download: the progress lines say the
/// download waits for sources (not a growing ETA), and --stall-timeout fails it with exit 5,
/// the partial kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_fails_with_exit_code_5_and_says_it_waits_for_sources() {
    binary("peer");
    with_timeout(async {
        // The vanished seed stays listed for the whole test.
        let t = spawn_tracker(tracker::Config { session_timeout: Duration::from_secs(60), ..tracker_config() }).await;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst, state) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("state"));
        write_file(&src, "f.bin", 8 * MIB, 6);
        let seed_args = ["serve", "--listen", "127.0.0.1:0", "--upload-rate", "1MiB", "--share", s(&src)];
        let mut seed = Proc::spawn(peer_cmd(t.addr(), &seed_args), "seed").unwrap();
        seed.wait_line("serving", Duration::from_secs(20)).await.unwrap();
        let args = download_args("f.bin", &dst, &state, &["--stall-timeout", "4s", "--linger", "0"]);
        let mut dl = Proc::spawn(peer_cmd(t.addr(), &args), "downloader").unwrap();
        dl.wait_line("f.bin: ", Duration::from_secs(20)).await.unwrap();
        seed.kill().await;
        let end = dl.finish(Duration::from_secs(40)).await.unwrap();
        assert_eq!(end.status.code(), Some(5), "{:?}", end.stderr);
        let err = end.stderr.join("\n");
        assert!(err.contains("no verified data arrived for 4s"), "{err}");
        assert!(err.contains("waiting for sources"), "{err}");
        assert!(!dst.join("f.bin").exists());
    })
    .await;
}

/// `serve --json` prints a `serving` line, `stats` lines with what was uploaded, and totals in a
/// `stopped` line when it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_what_it_uploads() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        write_file(&src, "f.bin", 2 * MIB, 7);
        let args = ["--json", "serve", "--stats-every", "300ms", "--listen", "127.0.0.1:0", "--share", s(&src)];
        let mut c = tokio::process::Command::from(peer_cmd(t.addr(), &args));
        c.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut serve = c.spawn().unwrap();
        let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
        let first = next_json(&mut lines).await;
        assert_eq!((first["event"].as_str(), first["files"].as_u64()), (Some("serving"), Some(1)), "{first}");

        let downloader = spawn_peer(t.addr(), &dst, |_| {}).await;
        downloader.download("f.bin", peer::DownloadOptions::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut uploaded = 0;
        while uploaded < 2 * MIB as u64 {
            let l = next_json(&mut lines).await;
            assert_eq!(l["event"].as_str(), Some("stats"), "{l}");
            uploaded = l["total_uploaded_bytes"].as_u64().unwrap();
            assert!(Instant::now() < deadline, "never reported the upload");
        }
        nix_term(serve.id().unwrap());
        let mut last = next_json(&mut lines).await;
        while last["event"].as_str() == Some("stats") {
            last = next_json(&mut lines).await;
        }
        assert_eq!(last["event"].as_str(), Some("stopped"), "{last}");
        assert_eq!(last["total_uploaded_bytes"].as_u64(), Some(2 * MIB as u64));
        assert!(last["connections_opened"].as_u64() >= Some(1));
        let status = tokio::time::timeout(Duration::from_secs(10), serve.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}");
        downloader.shutdown().await;
    })
    .await;
}

/// The next JSON line of a child's stdout.
async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(&line).unwrap()
}

fn nix_term(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

/// Three downloaders started 5 s apart with the default linger (10 s without uploads): each
/// stays while the next fetches from it, so the capped seed uploads little more than one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_downloaders_linger_and_spare_the_seed() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        const SIZE: usize = 4 * MIB;
        let data = write_file(&src, "f.bin", SIZE, 8);
        let seed = spawn_peer(t.addr(), &src, |c| c.upload_rate = Some(2 * MIB as u64)).await;
        let mut dls = Vec::new();
        for i in 0..3 {
            if i > 0 {
                // The scenario: downloaders that arrive 5 s apart.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let (d, st) = (dir.path().join(format!("d{i}")), dir.path().join(format!("st{i}")));
            let args = download_args("f.bin", &d, &st, &[]);
            dls.push((Proc::spawn(peer_cmd(t.addr(), &args), &format!("downloader {i}")).unwrap(), d));
        }
        for (p, d) in dls {
            let end = p.finish(Duration::from_secs(60)).await.unwrap();
            assert!(end.status.success(), "{:?}", end.stderr);
            assert!(end.stderr.iter().any(|l| l.starts_with("staying while others fetch")), "{:?}", end.stderr);
            assert_eq!(std::fs::read(d.join("f.bin")).unwrap(), data);
        }
        let copies = seed.uploaded_bytes() as f64 / SIZE as f64;
        eprintln!("the seed uploaded {copies:.2} copies to 3 staggered downloaders");
        assert!(copies <= 1.2, "the seed uploaded {copies:.2} copies");
        seed.shutdown().await;
    })
    .await;
}

/// `peer serve --http` watches its folder and serves the API; `peer download --node` has that
/// node fetch a file into its own share and shows its progress; a name the trackers do not have
/// is exit 3 there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_shares_new_files_and_downloads_for_the_command_line() {
    binary("peer");
    with_timeout(async {
        let t = spawn_tracker(tracker_config()).await;
        let dir = tempfile::tempdir().unwrap();
        let (src, share, state) = (dir.path().join("src"), dir.path().join("node"), dir.path().join("state"));
        let data = write_file(&src, "f.bin", 3 * MIB, 9);
        let seed = spawn_peer(t.addr(), &src, |_| {}).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let api = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(&share).unwrap();
        let args = ["serve", "--http", &api, "--listen", "127.0.0.1:0", "--share", s(&share), "--state-dir", s(&state)];
        let mut node = Proc::spawn(peer_cmd(t.addr(), &args), "node").unwrap();
        node.wait_line("HTTP API on", Duration::from_secs(20)).await.unwrap();

        // A file copied into the node's folder is shared without a restart.
        write_file(&share, "new.bin", 10_000, 10);
        let start = Instant::now();
        loop {
            let end = run(t.addr(), &["--json", "list"]).await;
            let listed: serde_json::Value = serde_json::from_str(&end.stdout).unwrap();
            if listed.as_array().unwrap().iter().any(|f| f["name"] == "new.bin") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "new.bin never listed\n{}", node.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let end = run(t.addr(), &["--json", "download", "--node", &api, "f.bin"]).await;
        assert!(end.status.success(), "{:?}\n{}", end.stderr, node.log());
        let status: serde_json::Value = serde_json::from_str(&end.stdout).unwrap();
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(std::fs::read(share.join("f.bin")).unwrap(), data, "the node fetched it into its own share");

        let end = run(t.addr(), &["download", "--node", &api, "missing.bin"]).await;
        assert_eq!(end.status.code(), Some(3), "{:?}", end.stderr);

        nix_term(node.pid().unwrap());
        let end = node.finish(Duration::from_secs(20)).await.unwrap();
        assert!(end.status.success(), "{:?}", end.stderr);
        seed.shutdown().await;
    })
    .await;
}

/// Shell completions, man pages and the commented default config come from the binary; a config
/// file's values are used, and a bad one is one line naming the file, the line and the key.
#[test]
fn completions_man_pages_and_config_files() {
    let peer = |args: &[&str], env: &[(&str, &Path)]| {
        let mut c = Command::new(binary("peer"));
        c.args(args).env_remove("P2P_CONFIG").env_remove("P2P_TRACKER").stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = peer(&["completions", shell], &[]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success() && text.contains("download") && text.contains("linger"), "{shell}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    assert!(peer(&["man", s(&man)], &[]).status.success());
    for page in ["peer.1", "peer-serve.1", "peer-download.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}: {text}");
    }

    // The default config, as printed, is a valid config (every line commented out).
    let out = peer(&["default-config"], &[]);
    assert!(out.status.success());
    let default = dir.path().join("default.toml");
    std::fs::write(&default, &out.stdout).unwrap();
    assert!(peer(&["--config", s(&default), "default-config"], &[]).status.success());

    // A value from the file is used (an unreachable tracker fails listing, naming it); a flag wins.
    let file = dir.path().join("peer.toml");
    std::fs::write(&file, "tracker = \"127.0.0.1:1\"\n").unwrap();
    let out = peer(&["list"], &[("P2P_CONFIG", &file)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"), "{out:?}");

    std::fs::write(&file, "pipeline = 8\n\n[download]\nlinger = \"a while\"\n").unwrap();
    let out = peer(&["--config", s(&file), "list"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with(&format!("peer: {}:4: linger: ", file.display())), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
