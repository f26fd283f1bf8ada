//! The engine of the swarm benchmarks whose peers are separate processes: on network-namespace
//! hosts (`swarm-netns`, `hetero`, `churn`, `n32`, built by `tests::netns`, egress shaped with
//! `tc tbf`) or on loopback (`swarm-loopback`), with our `tracker` and `peer` binaries or, as the
//! reference in the same run, `opentracker` and `aria2c` (see `bittorrent.rs`).
//!
//! A [`Scenario`] says who uploads how fast, who starts late (when the first downloader is done)
//! and who leaves (SIGKILL once its data file holds a given fraction of the file). A run measures
//! each downloader's completion, the CPU time of every peer process (user + system, read from
//! `/proc/PID/stat` after it exited and before it is reaped, so its whole life is counted), the
//! system calls and context switches of the peers (`perf stat -p PIDS`, when perf works) and
//! the packets every peer host sent (its interface's counters, read with `ip -s`).
//!
//! `scenario.rs` holds the swarms and their bounds, `outcome.rs` what a run measured and its
//! report rows; this file starts the hosts' processes and watches them.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ::tests::netns::{self, Family, Net};
use anyhow::Context;

use super::bittorrent::{self, Torrent, BT_PORT, OT_PORT};
use super::util::{file_root, Bins, Proc};

/// The file every run distributes.
pub(crate) const NAME: &str = "swarm.bin";
/// Every tracker's port on the netns hosts.
const TRACKER_PORT: u16 = 6969;
/// Every peer's listen port on the netns hosts (all interfaces, IPv4 and IPv6).
const PEER_PORT: &str = "7000";

mod outcome;
mod scenario;

pub(crate) use outcome::{outcome_rows, perf_works, versus_rows, Kill, MemberOutcome, Outcome};
use outcome::{parse_perf, tx_counters, SWITCHES, SYSCALLS};
pub(crate) use scenario::{Member, Scenario};

/// Where the hosts are.
pub(crate) enum Env<'a> {
    /// Network-namespace hosts.
    Netns(&'a Net),
    /// Every process on this machine's loopback, unshaped.
    Loopback,
}

/// Which system runs the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// Our tracker and peers.
    Ours,
    /// opentracker and aria2c.
    Aria2,
}

/// A downloader being run.
struct Running {
    proc: Option<Proc>,
    dir: PathBuf,
    out: MemberOutcome,
    /// Our peer's JSON report, once stopped.
    report: Option<String>,
}

/// One swarm's hosts and files, run by [`Lab::run`] with either system.
pub(crate) struct Lab<'a> {
    pub(crate) bins: &'a Bins,
    pub(crate) env: Env<'a>,
    pub(crate) sc: &'a Scenario,
    /// Holds the file, `NAME`.
    pub(crate) seed_dir: PathBuf,
    pub(crate) scratch: &'a Path,
    pub(crate) root: blake3::Hash,
    /// Count system calls with perf.
    pub(crate) perf: bool,
    /// The BitTorrent run's torrent.
    pub(crate) torrent: Option<Torrent>,
    /// Every run fails after this many seconds.
    pub(crate) limit: f64,
}

impl Lab<'_> {
    fn seed_host(&self) -> usize {
        self.sc.trackers
    }

    fn host_of(&self, i: usize) -> usize {
        self.sc.trackers + 1 + i
    }

    fn cmd(&self, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.env {
            Env::Netns(net) => net.command(host, program),
            Env::Loopback => Command::new(program),
        }
    }

    fn loopback(&self) -> bool {
        matches!(self.env, Env::Loopback)
    }

    /// Our peer's listen option: a fixed port on its own host, or any port on loopback, where
    /// every peer also shares one address (so the per-address upload limit is lifted).
    fn peer_listen(&self, c: &mut Command) {
        if self.loopback() {
            c.args(["--listen", "127.0.0.1:0", "--max-uploads-per-ip", "256"]);
        } else {
            c.args(["--listen", PEER_PORT]);
        }
    }

    /// aria2c's listen port: the same on every host, one each on loopback.
    fn bt_port(&self, member: Option<usize>) -> u16 {
        match (self.loopback(), member) {
            (false, _) | (true, None) => BT_PORT,
            (true, Some(i)) => BT_PORT + 1 + i as u16,
        }
    }

    fn ipv6(&self) -> bool {
        self.sc.family != Family::V4
    }

    /// A GET over HTTP/1.0 from host `host` (for opentracker's scrape); the body.
    fn http_get(&self, host: usize, addr: SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: tracker\r\n\r\n");
        let get = move || -> anyhow::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(request.as_bytes())?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)?;
            let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
            Ok(answer[body..].to_vec())
        };
        match self.env {
            Env::Netns(net) => net.block_on(host, async move { get() })?,
            Env::Loopback => get(),
        }
    }

    /// Our trackers, each on its own host; the `--tracker` list every peer gets.
    fn start_trackers(&self) -> anyhow::Result<(Vec<Option<Proc>>, String)> {
        let mut procs = Vec::new();
        let mut list = Vec::new();
        for t in 0..self.sc.trackers {
            let mut cmd = self.cmd(t, &self.bins.tracker);
            let listen = if self.loopback() { "127.0.0.1:0".to_owned() } else { TRACKER_PORT.to_string() };
            cmd.args(["--listen", &listen]).env("RUST_LOG", "warn");
            let p = Proc::spawn(cmd, &tracker_name(self.sc.trackers, t))?;
            let addr = p.wait_line(Duration::from_secs(10), |l| {
                l.strip_prefix("tracker listening on ").map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
            })?;
            list.push(match self.env {
                Env::Netns(net) => net.host(t).name.clone(),
                Env::Loopback => addr,
            });
            procs.push(Some(p));
        }
        Ok((procs, list.join(",")))
    }

    /// opentracker on the first tracker host; the torrent file announcing to it.
    fn start_opentracker(&self, tag: &str) -> anyhow::Result<(Proc, PathBuf, SocketAddr)> {
        let torrent = self.torrent.as_ref().context("no torrent")?;
        let (addr, url) = match self.env {
            Env::Netns(net) => {
                let h = net.host(0);
                let ip = h.v4.map(IpAddr::V4).unwrap_or_else(|| h.addr());
                (SocketAddr::new(ip, OT_PORT), format!("http://{}:{OT_PORT}/announce", h.name))
            }
            Env::Loopback => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let a = SocketAddr::from(([127, 0, 0, 1], port));
                (a, format!("http://{a}/announce"))
            }
        };
        // Debian's opentracker serves whitelisted torrents only; the path must be absolute.
        let whitelist = self.scratch.join(format!("{tag}-whitelist.txt"));
        std::fs::write(&whitelist, format!("{}\n", torrent.info_hash_hex()))?;
        let mut cmd = self.cmd(0, "opentracker");
        let port = addr.port().to_string();
        cmd.args(["-i", &addr.ip().to_string(), "-p", &port, "-P", &port, "-w"])
            .arg(&whitelist)
            .current_dir(self.scratch);
        let p = Proc::spawn(cmd, "opentracker")?;
        let path = self.scratch.join(format!("{tag}.torrent"));
        std::fs::write(&path, torrent.encode(&url))?;
        let scrape = format!("/scrape?info_hash={}", torrent.info_hash_url());
        let since = Instant::now();
        while self.http_get(0, addr, &scrape).is_err() {
            anyhow::ensure!(since.elapsed() < Duration::from_secs(10), "opentracker did not answer within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((p, path, addr))
    }

    /// Spawns downloader `i` of `client`.
    fn spawn(&self, client: Client, tag: &str, i: usize, list: &str, bt: Option<&Path>) -> anyhow::Result<Running> {
        let dir = self.scratch.join(format!("{tag}-d{i}"));
        std::fs::create_dir_all(&dir)?;
        let host = self.host_of(i);
        let proc = match client {
            Client::Ours => {
                let mut cmd = self.cmd(host, &self.bins.peer);
                cmd.args(["--tracker", list, "--json", "download", NAME, "--seed"]).env("RUST_LOG", "warn");
                self.peer_listen(&mut cmd);
                cmd.arg("--share").arg(&dir);
                Proc::spawn(cmd, &format!("downloader {i}"))?
            }
            Client::Aria2 => {
                let hook = self.scratch.join("bt-done.sh");
                let mut cmd = self.cmd(host, "aria2c");
                cmd.args(bittorrent::aria2_args(self.bt_port(Some(i)), self.ipv6()))
                    .arg("-d")
                    .arg(&dir)
                    .arg(format!("--on-bt-download-complete={}", hook.display()))
                    .arg(bt.context("no torrent file")?);
                Proc::spawn(cmd, &format!("aria2c downloader {i}"))?
            }
        };
        Ok(Running { proc: Some(proc), dir, out: MemberOutcome::default(), report: None })
    }

    /// Whether downloader `d` has its verified file.
    fn is_done(client: Client, d: &Running) -> bool {
        match client {
            Client::Ours => d.dir.join(NAME).exists(),
            // The completion hook (before seeding starts) leaves a marker beside the file.
            Client::Aria2 => d.dir.join(format!("{NAME}.done")).exists(),
        }
    }

    /// The fraction of the file `d` holds: ours, the chunks set in its partial's `.have` bitmap
    /// (written as each verified chunk is stored; the `.data` file is allocated up front); aria2,
    /// the allocated blocks of the file (nothing is allocated ahead with --file-allocation=none).
    fn progress(&self, client: Client, d: &Running) -> f64 {
        match client {
            Client::Ours => {
                let chunks = proto::meta::chunk_count(self.sc.size, chunkstore::choose_chunk_size(self.sc.size));
                let set: u64 = std::fs::read_dir(d.dir.join(".p2p").join("partial"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".have"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .map(|bits| bits.iter().map(|b| u64::from(b.count_ones())).sum::<u64>())
                    .sum();
                (set as f64 / chunks.max(1) as f64).min(1.0)
            }
            Client::Aria2 => {
                let bytes = std::fs::metadata(d.dir.join(NAME)).map(|m| m.blocks() * 512).unwrap_or(0);
                (bytes as f64 / self.sc.size.max(1) as f64).min(1.0)
            }
        }
    }

    /// `perf stat` counting the system calls of `pids` until they all exit, if asked for.
    fn perf(&self, pids: &[u32], file: &Path) -> Option<Proc> {
        if !self.perf || pids.is_empty() {
            return None;
        }
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-e", &format!("{SYSCALLS},{SWITCHES}"), "-x", ",", "-o"])
            .arg(file)
            .args(["-p", &list.join(",")]);
        Proc::spawn(cmd, "perf").ok()
    }

    /// Packets and bytes sent by every peer host so far, by host index (netns only).
    fn tx_counters(&self) -> Option<Vec<(u64, u64)>> {
        let Env::Netns(net) = self.env else { return None };
        (self.seed_host()..net.hosts().len()).map(|h| tx_counters(&net.host(h).ns)).collect()
    }

    /// One swarm from start to finish with `client`: trackers, seed, downloaders (late ones when
    /// the first is done, leavers killed on the way); every finished file checked against the
    /// root; every process stopped. With `kill` (ours only), the file's responsible tracker is
    /// killed at that many seconds.
    pub(crate) fn run(&self, client: Client, tag: &str, kill: Option<f64>) -> anyhow::Result<Outcome> {
        // Trackers.
        let (mut trackers, list, torrent, _ot) = match client {
            Client::Ours => {
                let (t, list) = self.start_trackers()?;
                (t, list, None, None)
            }
            Client::Aria2 => {
                let hook = self.scratch.join("bt-done.sh");
                std::fs::write(&hook, "#!/bin/sh\n: > \"$3.done\"\n")?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
                let (p, path, addr) = self.start_opentracker(tag)?;
                (Vec::new(), String::new(), Some((path, addr)), Some(p))
            }
        };
        let tx_before = self.tx_counters();

        // The seed, ready when it serves (ours) or when the tracker counts it as a seed (aria2).
        let seed = match client {
            Client::Ours => {
                let mut cmd = self.cmd(self.seed_host(), &self.bins.peer);
                cmd.args(["--tracker", &list, "serve"]).env("RUST_LOG", "warn");
                self.peer_listen(&mut cmd);
                cmd.arg("--share").arg(&self.seed_dir);
                let seed = Proc::spawn(cmd, "seed")?;
                seed.wait_line(Duration::from_secs(120), |l| l.starts_with("serving ").then_some(()))?;
                seed
            }
            Client::Aria2 => {
                let (path, addr) = torrent.as_ref().context("no torrent")?;
                let mut cmd = self.cmd(self.seed_host(), "aria2c");
                cmd.args(bittorrent::aria2_args(self.bt_port(None), self.ipv6()))
                    .args(["--check-integrity=true", "--bt-seed-unverified=true", "-d"])
                    .arg(&self.seed_dir)
                    .arg(path);
                let seed = Proc::spawn(cmd, "aria2c seed")?;
                let scrape =
                    format!("/scrape?info_hash={}", self.torrent.as_ref().context("no torrent")?.info_hash_url());
                let since = Instant::now();
                loop {
                    let seeds = self.http_get(0, *addr, &scrape).ok().and_then(|b| bittorrent::scrape_complete(&b));
                    if seeds.unwrap_or(0) >= 1 {
                        break;
                    }
                    anyhow::ensure!(
                        since.elapsed() < Duration::from_secs(120),
                        "the aria2c seed never announced itself as a seed to opentracker"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                seed
            }
        };
        let bt_path = torrent.as_ref().map(|(p, _)| p.as_path());
        let perf_seed = self.perf(&[seed.pid()], &self.scratch.join(format!("{tag}-perf-seed")));

        // The downloaders: the early ones now, the late ones when the first is done.
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(self.limit);
        let mut dls: Vec<Option<Running>> = (0..self.sc.members.len()).map(|_| None).collect();
        for (i, m) in self.sc.members.iter().enumerate() {
            if !m.late {
                dls[i] = Some(self.spawn(client, tag, i, &list, bt_path)?);
            }
        }
        let pids = |dls: &[Option<Running>]| -> Vec<u32> {
            dls.iter().flatten().filter_map(|d| d.proc.as_ref().map(Proc::pid)).collect()
        };
        let mut perfs: Vec<Proc> = Vec::new();
        perfs.extend(self.perf(&pids(&dls), &self.scratch.join(format!("{tag}-perf-early"))));
        let mut late_start = None;
        let any_late = self.sc.members.iter().any(|m| m.late);
        let mut first_byte = None;

        // Our multi-tracker kill.
        let order = match self.env {
            Env::Netns(_) if client == Client::Ours => {
                let keys: Vec<String> = (0..self.sc.trackers)
                    .map(|t| format!("{}.{}:{TRACKER_PORT}", tracker_name(self.sc.trackers, t), netns::DOMAIN))
                    .collect();
                netns::tracker_order(&keys, NAME)
            }
            _ => Vec::new(),
        };
        let mut kill_at = kill.filter(|_| order.len() > 1);
        let mut killed = None;

        loop {
            let what = if client == Client::Ours { "our" } else { "the BitTorrent" };
            anyhow::ensure!(Instant::now() < deadline, "{what} swarm did not finish within {:.0} s", self.limit);
            let now = start.elapsed().as_secs_f64();
            if kill_at.is_some_and(|at| now >= at) {
                kill_at = None;
                // Dropping the process kills it with SIGKILL.
                drop(trackers[order[0]].take());
                killed = Some((order[0], now, self.locate_thread(&list, order[1])));
            }
            for (i, d) in dls.iter_mut().enumerate() {
                let Some(d) = d.as_mut() else { continue };
                if d.proc.is_none() || d.out.done.is_some() {
                    continue;
                }
                if Self::is_done(client, d) {
                    d.out.done = Some(now);
                } else if let Some(frac) = self.sc.members[i].leave_at {
                    let p = self.progress(client, d);
                    if p >= frac {
                        if let Some(proc) = d.proc.take() {
                            proc.signal("KILL");
                            d.out.cpu = proc.exit_cpu(Duration::from_secs(5)).unwrap_or(0.0);
                            proc.reap(Duration::from_secs(5));
                        }
                        d.out.left = Some((now, p));
                    }
                }
            }
            if first_byte.is_none() && dls.iter().flatten().any(|d| d.proc.is_some() && self.progress(client, d) > 0.0)
            {
                first_byte = Some(now);
            }
            if any_late && late_start.is_none() && dls.iter().flatten().any(|d| d.out.done.is_some()) {
                late_start = Some(now);
                let mut late = Vec::new();
                for (i, m) in self.sc.members.iter().enumerate() {
                    if m.late {
                        let mut d = self.spawn(client, tag, i, &list, bt_path)?;
                        d.out.started = now;
                        late.extend(d.proc.as_ref().map(Proc::pid));
                        dls[i] = Some(d);
                    }
                }
                perfs.extend(self.perf(&late, &self.scratch.join(format!("{tag}-perf-late"))));
            }
            let all_started = !any_late || late_start.is_some();
            if all_started && dls.iter().flatten().all(|d| d.out.done.is_some() || d.out.left.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }

        // Ours print their report, then "seeding on ..." on stderr: wait for that, so that a
        // downloader whose file just appeared is not stopped before it has reported.
        if client == Client::Ours {
            for d in dls.iter().flatten() {
                if let Some(p) = &d.proc {
                    let _ = p.wait_line(Duration::from_secs(30), |l| l.starts_with("seeding on").then_some(()));
                }
            }
        }
        // Stop them all at once (ours gracefully tell the tracker Leave), then read each one.
        for d in dls.iter().flatten() {
            if let Some(p) = &d.proc {
                p.signal("TERM");
            }
        }
        for (i, d) in dls.iter_mut().enumerate() {
            let Some(d) = d.as_mut() else { continue };
            let Some(p) = d.proc.take() else { continue };
            d.out.cpu = p.exit_cpu(Duration::from_secs(30)).unwrap_or(0.0);
            match client {
                Client::Ours => {
                    let (_, out) = p.output(Duration::from_secs(10)).with_context(|| format!("downloader {i}"))?;
                    d.report = Some(out);
                }
                Client::Aria2 => p.reap(Duration::from_secs(5)),
            }
        }
        seed.signal("TERM");
        let cpu_seed = seed.exit_cpu(Duration::from_secs(15)).unwrap_or(0.0);
        seed.reap(Duration::from_secs(5));
        drop(trackers);
        let tx_after = self.tx_counters();

        // Where our downloaders' bytes came from.
        let (mut seed_up, mut peers_up) = (None, None);
        if client == Client::Ours {
            let seed_ips: Vec<IpAddr> = match self.env {
                Env::Netns(net) => {
                    let h = net.host(self.seed_host());
                    [h.v4.map(IpAddr::V4), h.v6.map(IpAddr::V6)].into_iter().flatten().collect()
                }
                Env::Loopback => Vec::new(),
            };
            let (mut s, mut p) = (0u64, 0u64);
            let mut all_known = !self.loopback();
            // P2P_BENCH_REPORTS=DIR keeps every downloader's report, to see where a straggler's
            // data came from.
            let keep = std::env::var_os("P2P_BENCH_REPORTS").map(PathBuf::from);
            for (i, d) in dls.iter().flatten().enumerate() {
                let Some(rep) = &d.report else {
                    all_known = false;
                    continue;
                };
                if let Some(dir) = &keep {
                    let done = d.out.done.unwrap_or(-1.0);
                    let _ = std::fs::create_dir_all(dir);
                    let _ = std::fs::write(dir.join(format!("{tag}-d{i}-done{done:.3}s.json")), rep);
                }
                let Ok(rep) = serde_json::from_str::<serde_json::Value>(rep) else {
                    eprintln!("bench: downloader {i} printed no report; its sources are not counted");
                    all_known = false;
                    continue;
                };
                for src in rep["sources"].as_array().into_iter().flatten() {
                    let bytes = src["bytes"].as_u64().unwrap_or(0);
                    let addr = src["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                    if addr.is_some_and(|a| seed_ips.contains(&a.ip().to_canonical())) {
                        s += bytes;
                    } else {
                        p += bytes;
                    }
                }
            }
            if all_known {
                (seed_up, peers_up) = (Some(s), Some(p));
            }
        }

        // Every finished file is the seed's.
        for (i, d) in dls.iter().flatten().enumerate() {
            if d.out.done.is_some() {
                anyhow::ensure!(file_root(&d.dir.join(NAME))? == self.root, "downloader {i} has a different file");
            }
        }

        // perf ends with its processes.
        let (mut syscalls, mut switches) = (None, None);
        if self.perf {
            let mut counts = (0u64, 0u64);
            let mut cs = Some((0u64, 0u64));
            let mut ok = perf_seed.is_some() && !perfs.is_empty();
            for p in perfs.into_iter().chain(perf_seed) {
                p.reap(Duration::from_secs(10));
            }
            for (file, seed) in [("early", false), ("late", false), ("seed", true)] {
                let path = self.scratch.join(format!("{tag}-perf-{file}"));
                if file == "late" && !any_late {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match parse_perf(&text, SYSCALLS) {
                    Some(n) if seed => counts.1 += n,
                    Some(n) => counts.0 += n,
                    None => ok = false,
                }
                cs = match (cs, parse_perf(&text, SWITCHES)) {
                    (Some((d, s)), Some(n)) if seed => Some((d, s + n)),
                    (Some((d, s)), Some(n)) => Some((d + n, s)),
                    _ => None,
                };
            }
            syscalls = ok.then_some(counts);
            switches = cs.filter(|_| ok);
        }

        let (packets, seed_wire_bytes) = match (tx_before, tx_after) {
            (Some(b), Some(a)) => {
                let packets = a.iter().zip(&b).map(|(a, b)| a.0.saturating_sub(b.0)).sum();
                (Some(packets), Some(a[0].1.saturating_sub(b[0].1)))
            }
            _ => (None, None),
        };
        let members: Vec<MemberOutcome> = dls.iter().map(|d| d.as_ref().map(|d| d.out).unwrap_or_default()).collect();
        let mut times: Vec<f64> = members.iter().filter_map(|m| m.done).collect();
        times.sort_by(f64::total_cmp);
        let f = self.sc.size as f64;
        let delivered =
            members.iter().map(|m| if m.done.is_some() { f } else { m.left.map_or(0.0, |l| l.1 * f) }).sum();
        let kill = killed.map(|(t, at, locate)| Kill { tracker: t + 1, at, moved: locate.join().ok().flatten() });
        Ok(Outcome {
            client,
            times,
            cpu_downloaders: members.iter().map(|m| m.cpu).sum(),
            members,
            first_byte,
            late_start,
            seed_uploaded: seed_up,
            peers_uploaded: peers_up,
            cpu_seed,
            syscalls,
            switches,
            packets,
            seed_wire_bytes,
            delivered,
            size: f,
            kill,
        })
    }

    /// Polls tracker `t` (from its own host) with `peer locate` every 50 ms until it lists the
    /// file, for at most 30 s; the thread returns the seconds that took.
    fn locate_thread(&self, _list: &str, t: usize) -> std::thread::JoinHandle<Option<f64>> {
        let mut cmd = self.cmd(t, &self.bins.peer);
        let tracker = format!("{}.{}", tracker_name(self.sc.trackers, t), netns::DOMAIN);
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
pub(crate) fn tracker_name(count: usize, t: usize) -> String {
    if count == 1 {
        "tracker".into()
    } else {
        format!("tracker{}", t + 1)
    }
}

/// Builds the hosts of `sc` (netns), or says why they cannot be built.
pub(crate) fn build_net(sc: &Scenario) -> anyhow::Result<Net> {
    Net::build(sc.family, &sc.hosts())
}
