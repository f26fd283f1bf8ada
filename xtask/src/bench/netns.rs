//! The swarm benchmarks with every peer a separate `peer` process on its own host (a Linux network
//! namespace on a bridge, built by the tests crate's `tests::netns`, the same harness the CI
//! tests use), each peer host's egress shaped with `tc tbf`. Nothing touches the machine's own
//! network. Needs root and iproute2; skipped with a clear message otherwise. Namespaces are
//! removed afterwards, also when the benchmark is interrupted (an `OnExit` runs the network's
//! teardown), and stale ones from a killed run are swept first. The runs themselves are in
//! `lab/`.
//!
//! - `swarm-netns`: equal rates; options: the address family, several trackers, and killing the
//!   file's responsible tracker part-way (then the swarm runs twice, without and with the kill).
//! - `hetero`: half the downloaders upload at a quarter of the others' rate.
//! - `churn`: a third of the downloaders start when the first is done; a quarter leave (SIGKILL)
//!   half-way through the file.
//! - `n32`: 32 downloaders at 4 MiB/s.
//!
//! Each is measured against its own bound, and beside `aria2c` + `opentracker` on the same hosts
//! when both are installed.

use std::path::Path;

use ::tests::netns;
pub(crate) use ::tests::netns::Family;
use anyhow::Context;

use super::bittorrent::{self, Torrent};
use super::lab::{self, Client, Env, Lab, Member, Scenario, NAME};
use super::swarm::{Setup, TIME_TARGET};
use super::util::{file_root, write_random_file, Bins, OnExit, Report, Scratch, MIB};

/// The swarm with the kill may take at most this factor of the swarm without it.
const KILL_TARGET: f64 = 1.10;
/// `hetero`: the last downloader within this factor of T_min.
const HETERO_TARGET: f64 = 1.15;
/// `churn`: the last downloader within this factor of the churn bound.
const CHURN_TARGET: f64 = 1.20;
/// `n32`: the last downloader within this factor of T_min.
const N32_TARGET: f64 = 1.12;

/// What the netns benchmarks measure besides our swarm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extras {
    /// Run the same swarm with aria2c and opentracker when they are installed.
    pub(crate) bittorrent: bool,
    /// Count system calls with perf when it works.
    pub(crate) perf: bool,
}

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

/// One netns benchmark: its scenario, its target and its own rows.
struct Plan {
    bench: &'static str,
    setup: String,
    sc: Scenario,
    target: f64,
    /// The bound's formula, as shown in the report.
    bound_name: &'static str,
    kill_at: Option<f64>,
    extras: Extras,
}

/// `bench swarm-netns`.
pub(crate) fn run(bins: &Bins, s: NetnsSetup, extras: Extras, dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(s.trackers >= 1, "--trackers must be at least 1");
    anyhow::ensure!(s.kill_at.is_none() || s.trackers > 1, "--kill-tracker-at needs --trackers 2 or more");
    anyhow::ensure!(
        s.kill_at.is_none_or(|f| f > 0.0 && f < 1.0),
        "--kill-tracker-at is a fraction of T_min, 0 < F < 1"
    );
    anyhow::ensure!(s.swarm.n >= 1, "-n must be at least 1");
    let mode = format!("separate processes, network namespaces, tc tbf; {}", s.describe());
    run_plan(
        bins,
        Plan {
            bench: "swarm-netns",
            setup: format!("{} ({mode})", s.swarm.describe()),
            sc: Scenario::equal(s.swarm.n, s.swarm.size, s.swarm.rate, s.family, s.trackers),
            target: TIME_TARGET,
            bound_name: "T_min = max(F/u_s, N·F/(u_s + Σu_i))",
            kill_at: s.kill_at,
            extras,
        },
        dir,
    )
}

/// `bench hetero`: every odd-numbered downloader's upload at `rate / slow_factor`, the others
/// and the seed at `rate`.
pub(crate) fn hetero(
    bins: &Bins,
    s: Setup,
    slow_factor: u64,
    family: Family,
    extras: Extras,
    dir: &Path,
) -> anyhow::Result<Report> {
    anyhow::ensure!(s.n >= 2 && slow_factor >= 1, "hetero needs -n 2 or more and --slow-factor 1 or more");
    let slow = (s.rate / slow_factor).max(1);
    let members = (0..s.n)
        .map(|i| Member { rate: Some(if i % 2 == 1 { slow } else { s.rate }), late: false, leave_at: None })
        .collect();
    let sc = Scenario { size: s.size, seed_rate: Some(s.rate), members, family, trackers: 1 };
    run_plan(
        bins,
        Plan {
            bench: "hetero",
            setup: format!(
                "1 seed + {} downloaders, {:.0} MiB file; seed and {} downloaders upload at {:.1} MiB/s, {} at {:.2} MiB/s \
                 ({family}, network namespaces, tc tbf)",
                s.n,
                s.size as f64 / MIB,
                s.n.div_ceil(2),
                s.rate as f64 / MIB,
                s.n / 2,
                slow as f64 / MIB
            ),
            sc,
            target: HETERO_TARGET,
            bound_name: "T_min = max(F/u_s, N·F/(u_s + Σu_i))",
            kill_at: None,
            extras,
        },
        dir,
    )
}

/// `bench churn`: the last third of the downloaders start when the first downloader is done; the
/// first quarter leave (SIGKILL) once they hold `leave_at` of the file.
pub(crate) fn churn(
    bins: &Bins,
    s: Setup,
    leave_at: f64,
    family: Family,
    extras: Extras,
    dir: &Path,
) -> anyhow::Result<Report> {
    anyhow::ensure!(s.n >= 4, "churn needs -n 4 or more");
    anyhow::ensure!(leave_at > 0.0 && leave_at < 1.0, "--leave-at is a fraction of the file, 0 < F < 1");
    let (late, leavers) = churn_split(s.n);
    let members = (0..s.n)
        .map(|i| Member { rate: Some(s.rate), late: i >= s.n - late, leave_at: (i < leavers).then_some(leave_at) })
        .collect();
    let sc = Scenario { size: s.size, seed_rate: Some(s.rate), members, family, trackers: 1 };
    run_plan(
        bins,
        Plan {
            bench: "churn",
            setup: format!(
                "{}; {late} of them start when the first downloader is done, {leavers} leave (SIGKILL) at {:.0}% of the \
                 file ({family}, network namespaces, tc tbf)",
                s.describe(),
                leave_at * 100.0
            ),
            sc,
            target: CHURN_TARGET,
            bound_name: "bound: fluid, with this run's arrivals/departures",
            kill_at: None,
            extras,
        },
        dir,
    )
}

/// Late starters (a third, rounded) and leavers (a quarter, rounded down, at least 1) of a churn
/// swarm of `n`.
pub(crate) fn churn_split(n: usize) -> (usize, usize) {
    ((n as f64 / 3.0).round() as usize, (n / 4).max(1))
}

/// `bench n32`: the equal-rate swarm at scale (32 downloaders at 4 MiB/s by default).
pub(crate) fn n32(bins: &Bins, s: Setup, family: Family, extras: Extras, dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(s.n >= 1, "-n must be at least 1");
    run_plan(
        bins,
        Plan {
            bench: "n32",
            setup: format!("{} ({family}, network namespaces, tc tbf)", s.describe()),
            sc: Scenario::equal(s.n, s.size, s.rate, family, 1),
            target: N32_TARGET,
            bound_name: "T_min = max(F/u_s, N·F/(u_s + Σu_i))",
            kill_at: None,
            extras,
        },
        dir,
    )
}

fn run_plan(bins: &Bins, plan: Plan, dir: &Path) -> anyhow::Result<Report> {
    let mut r = Report::new(plan.bench, plan.setup.clone());
    if let Err(why) = netns::permitted() {
        r.note(format!("skipped: network namespaces are not available here (needs root and iproute2): {why}"));
        return Ok(r);
    }
    let sc = &plan.sc;
    let scratch = Scratch::new(dir, plan.bench)?;
    let seed_dir = scratch.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    write_random_file(&seed_dir.join(NAME), sc.size, 41)?;
    let root = file_root(&seed_dir.join(NAME))?;

    // BitTorrent and perf, when they can run.
    let mut bt_skip = None;
    let torrent = if !plan.extras.bittorrent {
        bt_skip = Some("BitTorrent comparison off (--no-bittorrent)".to_owned());
        None
    } else if let Err(why) = bittorrent::available() {
        bt_skip = Some(format!("BitTorrent comparison skipped: {why}"));
        None
    } else if sc.family == Family::V6 {
        bt_skip = Some("BitTorrent comparison skipped: opentracker (Debian's build) listens on IPv4 only".to_owned());
        None
    } else if plan.kill_at.is_some() {
        bt_skip = Some("BitTorrent comparison skipped with --kill-tracker-at (opentracker is one tracker)".to_owned());
        None
    } else {
        Some(Torrent::of_file(&seed_dir.join(NAME), NAME)?)
    };
    let perf = plan.extras.perf && {
        match lab::perf_works() {
            Ok(()) => true,
            Err(why) => {
                r.note(format!("system calls not counted: {why}"));
                false
            }
        }
    };

    let net = lab::build_net(sc)?;
    // The interrupt handler exits without dropping `net`: it runs this instead.
    let teardown = net.teardown();
    let _cleanup = OnExit::new(move || teardown.run());
    // Generous: a swarm 20 times slower than its Kumar–Ross bound has failed.
    let limit = sc.kumar_ross().unwrap_or(60.0) * 20.0 + 60.0;
    let lab = Lab { bins, env: Env::Netns(&net), sc, seed_dir, scratch: scratch.path(), root, perf, torrent, limit };

    let ours = lab.run(Client::Ours, "ours", None)?;
    let bound = sc.bound(&ours);
    if let Some(b) = bound {
        r.row(plan.bound_name, b, "s");
    }
    lab::outcome_rows(&mut r, &ours, bound, Some(plan.target));
    if plan.bench == "churn" {
        churn_rows(&mut r, &ours);
    }
    r.note("times run from starting the downloader processes until each file was in place (verified)");
    r.note("CPU: user + system seconds of every process over its whole life, read from /proc/PID/stat at exit");
    r.note(
        "delivered: the file to every finisher (and to leavers what they held); packets: sent by the seed's and \
            downloaders' hosts (eth0 counters), TCP ACKs included",
    );

    if let Some(f) = plan.kill_at {
        let kill_secs = f * sc.kumar_ross().unwrap_or(0.0);
        let o = lab.run(Client::Ours, "kill", Some(kill_secs))?;
        let kill = o.kill.as_ref().context("the tracker was never killed")?;
        let (t0, t1) = (ours.last(), o.last());
        r.row("T without the kill (the run above)", t0, "s");
        r.row(&format!("T with tracker{} killed at {:.2} s", kill.tracker, kill.at), t1, "s");
        r.at_most("T with the kill / T without", t1 / t0.max(1e-9), "ratio", KILL_TARGET);
        if let Some(s) = o.seed_uploaded {
            r.row("with the kill: seed uploaded / F", s as f64 / sc.size as f64, "copies");
        }
        // Peers move a file once its tracker has been lost for one keep-alive interval.
        let two_keepalives = 2.0 * proto::limits::DEFAULT_KEEPALIVE_MS as f64 / 1000.0;
        match kill.moved {
            Some(m) => r.at_most("file listed at its next tracker, after the kill", m, "s", two_keepalives),
            None => r.note("the file was never listed at its next tracker within 30 s of the kill"),
        }
        r.note("the killed tracker is the file's first in rendezvous order, as the peers compute it");
        r.note("the trackers run with their default keep-alive interval");
    }

    match bt_skip {
        Some(why) => r.note(why),
        None => match lab.run(Client::Aria2, "bt", None) {
            Ok(bt) => {
                let bt_bound = sc.bound(&bt);
                lab::outcome_rows(&mut r, &bt, bt_bound, None);
                if plan.bench == "churn" {
                    churn_rows(&mut r, &bt);
                }
                lab::versus_rows(&mut r, &ours, &bt, bound, bt_bound);
                r.note(format!(
                    "aria2: aria2c {} with opentracker on the same hosts and shaping, .torrent with {} KiB pieces; \
                     downloaders seed until all are done (--seed-ratio=0.0); done = its completion hook ran \
                     (every piece SHA-1 checked, no fsync); each system against its own run's bound",
                    aria2_version(),
                    bittorrent::PIECE_LEN / 1024
                ));
            }
            Err(e) => r.note(format!("BitTorrent run failed: {e:#}")),
        },
    }
    Ok(r)
}

/// The churn figures: when the late ones started, what the leavers held, how long the late ones
/// took from their own start.
fn churn_rows(r: &mut Report, o: &lab::Outcome) {
    let p = if o.client == Client::Aria2 { "aria2: " } else { "" };
    if let Some(t) = o.late_start {
        r.row(&format!("{p}late downloaders started (first done)"), t, "s");
        let late: Vec<f64> =
            o.members.iter().filter(|m| m.started > 0.0).filter_map(|m| m.done.map(|d| d - m.started)).collect();
        r.row(&format!("{p}late downloaders: longest download"), late.iter().copied().fold(0.0, f64::max), "s");
    }
    let left: Vec<(f64, f64)> = o.members.iter().filter_map(|m| m.left).collect();
    if !left.is_empty() {
        let n = left.len() as f64;
        r.row(&format!("{p}leavers killed at, mean"), left.iter().map(|l| l.0).sum::<f64>() / n, "s");
        r.row(&format!("{p}leavers held when killed, mean"), left.iter().map(|l| l.1).sum::<f64>() / n, "of F");
    }
}

/// `aria2c --version`'s first line's version.
pub(crate) fn aria2_version() -> String {
    std::process::Command::new("aria2c")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.replace("aria2 version ", "")))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::churn_split;

    #[test]
    fn churn_takes_a_third_late_and_a_quarter_leaving() {
        assert_eq!(churn_split(12), (4, 3));
        assert_eq!(churn_split(6), (2, 1));
        assert_eq!(churn_split(4), (1, 1));
    }
}
