//! `bench swarm-netns`: the swarm benchmark with every peer a separate `peer` process on its own
//! host (a Linux network namespace on a bridge, built by the tests crate's `tests::netns`, the
//! same harness the CI tests use), each peer host's egress shaped with `tc tbf` to the upload
//! rate. Nothing touches the machine's own network. Needs root and iproute2; skipped with a clear
//! message otherwise. Namespaces are removed afterwards, also when the benchmark is interrupted
//! (an `OnExit` runs the network's teardown), and stale ones from a killed run are swept first.
//!
//! Options: the address family (`v4`, `v6` only, `dual`), several trackers (peers given all of
//! them by name; each file has its tracker by rendezvous hashing), and killing the file's
//! responsible tracker with SIGKILL part-way: then the swarm runs twice, without and with the
//! kill, and the report compares the two times.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
pub(crate) use tests::netns::Family;
use tests::netns::{self, HostSpec, Net};

use super::swarm::{report, Outcome, Setup};
use super::util::{file_root, write_random_file, Bins, OnExit, Proc, Report, Scratch};

/// The file every run distributes.
const NAME: &str = "swarm.bin";
/// Every tracker's port.
const TRACKER_PORT: u16 = 6969;
/// Every peer's listen port (all interfaces, IPv4 and IPv6).
const PEER_PORT: &str = "7000";
/// The swarm with the kill may take at most this factor of the swarm without it.
const KILL_TARGET: f64 = 1.10;

/// What `bench swarm-netns` is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetnsSetup {
    /// Downloaders, file size, rate.
    pub(crate) swarm: Setup,
    /// Addresses of the hosts.
    pub(crate) family: Family,
    /// Trackers, each on its own host.
    pub(crate) trackers: usize,
    /// SIGKILL the file's responsible tracker at this fraction of T_min.
    pub(crate) kill_at: Option<f64>,
}

impl NetnsSetup {
    /// What this benchmark adds to the swarm's description.
    fn describe(&self) -> String {
        let mut s = self.family.to_string();
        if self.trackers > 1 {
            s += &format!(", {} trackers", self.trackers);
        }
        if let Some(f) = self.kill_at {
            s += &format!(", the file's tracker killed at {f}·T_min");
        }
        s
    }
}

/// The hosts of a run: trackers first, then the seed, then the downloaders.
struct Lab<'a> {
    bins: &'a Bins,
    net: &'a Net,
    setup: NetnsSetup,
    /// The `--tracker` list every peer is given: every tracker by name.
    list: String,
    seed_dir: PathBuf,
    scratch: &'a Path,
}

/// What a run with a kill adds to its outcome.
struct Kill {
    /// Which tracker (1-based), and when, seconds after the start.
    tracker: usize,
    at: f64,
    /// Seconds from the kill until the file was listed at its next tracker, if it was.
    moved: Option<f64>,
}

impl Lab<'_> {
    fn seed_host(&self) -> usize {
        self.setup.trackers
    }

    fn peer(&self, host: usize) -> Command {
        let mut c = self.net.command(host, &self.bins.peer);
        c.args(["--tracker", &self.list]).env("RUST_LOG", "warn");
        c
    }

    /// One swarm from start to finish: trackers, seed, downloaders; every file checked against
    /// `root`; every process stopped. With `kill`, the file's responsible tracker is killed then.
    fn run(&self, tag: &str, root: blake3::Hash, kill: Option<f64>) -> anyhow::Result<(Outcome, Option<Kill>)> {
        let setup = self.setup.swarm;
        let mut trackers = Vec::new();
        for t in 0..self.setup.trackers {
            let mut cmd = self.net.command(t, &self.bins.tracker);
            cmd.args(["--listen", &TRACKER_PORT.to_string()]).env("RUST_LOG", "warn");
            let p = Proc::spawn(cmd, &tracker_name(self.setup.trackers, t))?;
            p.wait_line(Duration::from_secs(10), |l| l.starts_with("tracker listening").then_some(()))?;
            trackers.push(Some(p));
        }
        let mut cmd = self.peer(self.seed_host());
        cmd.args(["serve", "--listen", PEER_PORT]).arg("--share").arg(&self.seed_dir);
        let seed = Proc::spawn(cmd, "seed")?;
        seed.wait_line(Duration::from_secs(120), |l| l.starts_with("serving ").then_some(()))?;

        // Downloaders keep serving after their download (--seed) until every one is done, as the
        // in-process peers do; a file appears under its name only once verified.
        let start = Instant::now();
        let mut downloaders = Vec::new();
        for i in 0..setup.n {
            let d = self.scratch.join(format!("{tag}-d{i}"));
            std::fs::create_dir_all(&d)?;
            let mut cmd = self.peer(self.seed_host() + 1 + i);
            cmd.args(["--json", "download", NAME, "--seed", "--listen", PEER_PORT]).arg("--share").arg(&d);
            downloaders.push((Proc::spawn(cmd, &format!("downloader {i}"))?, d.join(NAME), None::<f64>));
        }
        let keys: Vec<String> = (0..self.setup.trackers)
            .map(|t| format!("{}.{}:{TRACKER_PORT}", tracker_name(self.setup.trackers, t), netns::DOMAIN))
            .collect();
        let order = netns::tracker_order(&keys, NAME);
        let mut kill_at = kill.map(|f| f * setup.t_min());
        let mut killed = None;
        let deadline = start + Duration::from_secs_f64(setup.t_min() * 20.0 + 60.0);
        while downloaders.iter().any(|(_, _, t)| t.is_none()) {
            anyhow::ensure!(Instant::now() < deadline, "the swarm did not finish in 20 × T_min");
            if kill_at.is_some_and(|at| start.elapsed().as_secs_f64() >= at) {
                kill_at = None;
                // Dropping the process kills it with SIGKILL.
                drop(trackers[order[0]].take());
                killed = Some((order[0], start.elapsed().as_secs_f64(), self.locate_thread(order[1])));
            }
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
        let seed_ips: Vec<IpAddr> = {
            let h = self.net.host(self.seed_host());
            [h.v4.map(IpAddr::V4), h.v6.map(IpAddr::V6)].into_iter().flatten().collect()
        };
        let (mut from_seed, mut from_peers) = (0u64, 0u64);
        for (p, _, _) in &downloaders {
            let _ = Command::new("kill").args(["-TERM", &p.pid().to_string()]).status();
        }
        for (i, (p, path, _)) in downloaders.into_iter().enumerate() {
            let out = p.finish(Duration::from_secs(30))?;
            let rep: serde_json::Value =
                serde_json::from_str(&out).with_context(|| format!("downloader {i}'s report"))?;
            for s in rep["sources"].as_array().into_iter().flatten() {
                let bytes = s["bytes"].as_u64().unwrap_or(0);
                let addr = s["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                if addr.is_some_and(|a| seed_ips.contains(&a.ip().to_canonical())) {
                    from_seed += bytes;
                } else {
                    from_peers += bytes;
                }
            }
            anyhow::ensure!(file_root(&path)? == root, "downloader {i} has a different file");
        }
        drop(seed);
        drop(trackers);
        let kill = killed.map(|(t, at, locate)| Kill { tracker: t + 1, at, moved: locate.join().ok().flatten() });
        Ok((Outcome { times, seed_uploaded: from_seed, peers_uploaded: from_peers }, kill))
    }

    /// Polls tracker `t` (from its own host) with `peer locate` every 50 ms until it lists the
    /// file, for at most 30 s; the thread returns the seconds that took.
    fn locate_thread(&self, t: usize) -> std::thread::JoinHandle<Option<f64>> {
        let mut cmd = self.net.command(t, &self.bins.peer);
        let tracker = format!("{}.{}", tracker_name(self.setup.trackers, t), netns::DOMAIN);
        cmd.args(["--tracker", &tracker, "locate", NAME]).stdout(Stdio::null()).stderr(Stdio::null());
        let since = Instant::now();
        std::thread::spawn(move || {
            while since.elapsed() < Duration::from_secs(30) {
                if cmd.status().is_ok_and(|s| s.success()) {
                    return Some(since.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        })
    }
}

/// Host `t`'s name among `count` trackers.
fn tracker_name(count: usize, t: usize) -> String {
    if count == 1 {
        "tracker".into()
    } else {
        format!("tracker{}", t + 1)
    }
}

pub(crate) fn run(bins: &Bins, s: NetnsSetup, dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(s.trackers >= 1, "--trackers must be at least 1");
    anyhow::ensure!(s.kill_at.is_none() || s.trackers > 1, "--kill-tracker-at needs --trackers 2 or more");
    anyhow::ensure!(
        s.kill_at.is_none_or(|f| f > 0.0 && f < 1.0),
        "--kill-tracker-at is a fraction of T_min, 0 < F < 1"
    );
    let mode = format!("separate processes, network namespaces, tc tbf; {}", s.describe());
    if let Err(why) = netns::permitted() {
        let mut r = Report::new("swarm-netns", format!("{} ({mode})", s.swarm.describe()));
        r.note(format!("skipped: network namespaces are not available here (needs root and iproute2): {why}"));
        return Ok(r);
    }
    let scratch = Scratch::new(dir, "netns")?;
    let seed_dir = scratch.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    write_random_file(&seed_dir.join(NAME), s.swarm.size, 41)?;
    let root = file_root(&seed_dir.join(NAME))?;

    // Trackers unshaped; the seed and the downloaders shaped to the upload rate.
    let mut hosts: Vec<HostSpec> = (0..s.trackers).map(|t| HostSpec::new(tracker_name(s.trackers, t), None)).collect();
    hosts.push(HostSpec::new("seed", Some(s.swarm.rate)));
    hosts.extend((0..s.swarm.n).map(|i| HostSpec::new(format!("d{i}"), Some(s.swarm.rate))));
    let net = Net::build(s.family, &hosts)?;
    // The interrupt handler exits without dropping `net`: it runs this instead.
    let teardown = net.teardown();
    let _cleanup = OnExit::new(move || teardown.run());
    let list: Vec<String> = net.hosts()[..s.trackers].iter().map(|h| h.name.clone()).collect();
    let list = list.join(",");
    let lab = Lab { bins, net: &net, setup: s, list, seed_dir, scratch: scratch.path() };

    let (plain, _) = lab.run("plain", root, None)?;
    let mut r = report("swarm-netns", &s.swarm, &mode, &plain);
    r.note("times run from starting the downloader processes until each file was in place (verified)");
    r.note("uploads are the bytes each downloader's report attributes to the seed and to other downloaders");
    if let Some(f) = s.kill_at {
        let (o, kill) = lab.run("kill", root, Some(f))?;
        let kill = kill.context("the tracker was never killed")?;
        let (t0, t1) = (plain.times.last().copied().unwrap_or(0.0), o.times.last().copied().unwrap_or(0.0));
        r.row("T without the kill (the run above)", t0, "s");
        r.row(&format!("T with tracker{} killed at {:.2} s", kill.tracker, kill.at), t1, "s");
        r.at_most("T with the kill / T without", t1 / t0.max(1e-9), "ratio", KILL_TARGET);
        r.row("with the kill: seed uploaded / F", o.seed_uploaded as f64 / s.swarm.size as f64, "copies");
        // Peers move a file once its tracker has been lost for one keep-alive interval.
        let two_keepalives = 2.0 * proto::limits::DEFAULT_KEEPALIVE_MS as f64 / 1000.0;
        match kill.moved {
            Some(m) => r.at_most("file listed at its next tracker, after the kill", m, "s", two_keepalives),
            None => r.note("the file was never listed at its next tracker within 30 s of the kill"),
        }
        r.note("the killed tracker is the file's first in rendezvous order, as the peers compute it");
        r.note("the trackers run with their default keep-alive interval");
    }
    Ok(r)
}
