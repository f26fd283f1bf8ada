//! `bench swarm-netns`: the swarm benchmark with every peer a separate `peer` process on its own
//! host: a Linux network namespace joined to the others through a bridge (in a namespace of its
//! own), each host's egress shaped with `tc tbf` to the upload rate. Nothing touches the machine's
//! own network: traffic flows only between the namespaces' 10.77.0.0/24 addresses. Needs root and
//! iproute2; skipped with a clear message otherwise. Namespaces are removed afterwards, also when
//! the benchmark is interrupted, and stale ones from a killed run are swept first.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::swarm::{report, Outcome, Setup};
use super::util::{file_root, write_random_file, Bins, OnExit, Proc, Report, Scratch};

/// Prefix of every namespace this benchmark creates; the creating process's id follows.
const PREFIX: &str = "p2pb";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("tc").args(args).output().context("run tc (iproute2)")?;
    if !out.status.success() {
        bail!("tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Names of existing namespaces.
fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespaces left by a run that was killed before it could clean up (its process is
/// gone).
fn sweep_stale() {
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// The hosts of one run: namespace names and addresses; all removed when dropped.
struct Net {
    hosts: Vec<String>,
    _cleanup: OnExit,
}

impl Net {
    /// Host `i` has address 10.77.0.(i+1); hosts other than 0 (the tracker's) have their egress
    /// shaped to `rate` bytes/s.
    fn build(count: usize, rate: u64) -> anyhow::Result<Net> {
        let tag = format!("{PREFIX}{}", std::process::id());
        let switch = format!("{tag}sw");
        let hosts: Vec<String> = (0..count).map(|i| format!("{tag}h{i}")).collect();
        let all: Vec<String> = std::iter::once(switch.clone()).chain(hosts.iter().cloned()).collect();
        let cleanup = OnExit::new(move || {
            for ns in &all {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        });
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let bits = (rate * 8).to_string() + "bit";
        // A bucket of about 10 ms of traffic, at least 32 KiB, so the shaper keeps up at any rate.
        let burst = (rate / 100).max(32 * 1024).to_string();
        for (i, h) in hosts.iter().enumerate() {
            ip(&["netns", "add", h])?;
            let (inner, outer) = (format!("h{i}"), format!("s{i}"));
            ip(&["link", "add", &inner, "netns", h, "type", "veth", "peer", "name", &outer, "netns", &switch])?;
            ip(&["-n", &switch, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", h, "addr", "add", &format!("10.77.0.{}/24", i + 1), "dev", &inner])?;
            ip(&["-n", h, "link", "set", &inner, "up"])?;
            ip(&["-n", h, "link", "set", "lo", "up"])?;
            if i > 0 {
                tc(&[
                    "-n", h, "qdisc", "add", "dev", &inner, "root", "tbf", "rate", &bits, "burst", &burst, "latency",
                    "100ms",
                ])?;
            }
        }
        Ok(Net { hosts, _cleanup: cleanup })
    }

    fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// A command run inside host `i`.
    fn exec(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i]]).arg(program);
        c
    }
}

/// Whether this machine lets us build namespaces: root and a working `ip netns`.
fn permitted() -> Result<(), String> {
    let probe = format!("{PREFIX}{}probe", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            Ok(())
        }
        Err(e) => Err(format!("{e:#}")),
    }
}

pub(crate) fn run(bins: &Bins, setup: Setup, dir: &Path) -> anyhow::Result<Report> {
    let mut r =
        Report::new("swarm-netns", format!("{} (separate processes, network namespaces, tc tbf)", setup.describe()));
    if let Err(why) = permitted() {
        r.note(format!("skipped: network namespaces are not available here (needs root and iproute2): {why}"));
        return Ok(r);
    }
    sweep_stale();
    let scratch = Scratch::new(dir, "netns")?;
    let seed_dir = scratch.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    let source = seed_dir.join("swarm.bin");
    write_random_file(&source, setup.size, 41)?;
    let root = file_root(&source)?;
    // Host 0: tracker; host 1: seed; hosts 2..: downloaders.
    let net = Net::build(setup.n + 2, setup.rate)?;
    let tracker_addr = format!("{}:6969", Net::addr(0));

    let mut cmd = net.exec(0, &bins.tracker);
    cmd.args(["--listen", &tracker_addr]).env("RUST_LOG", "warn");
    let tracker = Proc::spawn(cmd, "tracker")?;
    tracker.wait_line(Duration::from_secs(10), |l| l.starts_with("tracker listening").then_some(()))?;
    let peer_args = |i: usize| {
        vec!["--tracker".to_owned(), tracker_addr.clone(), "--listen".into(), format!("{}:7000", Net::addr(i))]
    };

    let mut cmd = net.exec(1, &bins.peer);
    cmd.args(&peer_args(1)[..2]).arg("serve").args(&peer_args(1)[2..]).arg("--share").arg(&seed_dir);
    let seed = Proc::spawn(cmd, "seed")?;
    seed.wait_line(Duration::from_secs(120), |l| l.starts_with("serving ").then_some(()))?;

    // Downloaders keep serving after their download (--seed) until every one is done, as the
    // in-process peers do; a file appears under its name only once verified.
    let start = Instant::now();
    let mut downloaders = Vec::new();
    for i in 0..setup.n {
        let host = i + 2;
        let d = scratch.path().join(format!("d{i}"));
        std::fs::create_dir_all(&d)?;
        let a = peer_args(host);
        let mut cmd = net.exec(host, &bins.peer);
        cmd.args(&a[..2]).args(["--json", "download", "swarm.bin", "--seed"]).args(&a[2..]).arg("--share").arg(&d);
        downloaders.push((Proc::spawn(cmd, &format!("downloader {i}"))?, d.join("swarm.bin"), None::<f64>));
    }
    let deadline = start + Duration::from_secs_f64(setup.t_min() * 20.0 + 60.0);
    while downloaders.iter().any(|(_, _, t)| t.is_none()) {
        anyhow::ensure!(Instant::now() < deadline, "the swarm did not finish in 20 × T_min");
        for (_, path, done) in downloaders.iter_mut().filter(|d| d.2.is_none()) {
            if path.exists() {
                *done = Some(start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut times: Vec<f64> = downloaders.iter().filter_map(|d| d.2).collect();
    times.sort_by(f64::total_cmp);

    // Stop them (gracefully: they tell the tracker Leave) and read where their bytes came from.
    let seed_addr = format!("{}:7000", Net::addr(1));
    let (mut from_seed, mut from_peers) = (0u64, 0u64);
    for (p, _, _) in &downloaders {
        let _ = Command::new("kill").args(["-TERM", &p.pid().to_string()]).status();
    }
    for (i, (p, path, _)) in downloaders.into_iter().enumerate() {
        let out = p.finish(Duration::from_secs(30))?;
        let rep: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("downloader {i}'s report"))?;
        for s in rep["sources"].as_array().into_iter().flatten() {
            let bytes = s["bytes"].as_u64().unwrap_or(0);
            if s["addr"].as_str() == Some(seed_addr.as_str()) {
                from_seed += bytes;
            } else {
                from_peers += bytes;
            }
        }
        anyhow::ensure!(file_root(&path)? == root, "downloader {i} has a different file");
    }
    drop(seed);
    drop(tracker);
    drop(net);
    let o = Outcome { times, seed_uploaded: from_seed, peers_uploaded: from_peers };
    let mut r = report("swarm-netns", &setup, "separate processes, network namespaces, tc tbf", &o);
    r.note("times run from starting the downloader processes until each file was in place (verified)");
    r.note("uploads are the bytes each downloader's report attributes to the seed and to other downloaders");
    Ok(r)
}
