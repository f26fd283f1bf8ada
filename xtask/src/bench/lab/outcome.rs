//! What a run measured ([`Outcome`]), how it is counted (CPU from `/proc`, system calls and
//! context switches from `perf stat`, packets from the hosts' interfaces), and its report rows.

use std::process::Command;

use super::super::util::{Report, MIB};
use super::Client;

/// Bytes in a GiB, as a float.
const GIB_F: f64 = 1024.0 * 1024.0 * 1024.0;

/// What the tracker kill of `swarm-netns --kill-tracker-at` did.
pub(crate) struct Kill {
    /// Which tracker (1-based), and when, seconds after the start.
    pub(crate) tracker: usize,
    pub(crate) at: f64,
    /// Seconds from the kill until the file was listed at its next tracker, if it was.
    pub(crate) moved: Option<f64>,
}

/// What one downloader did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemberOutcome {
    /// When it was started, seconds after the start of the run.
    pub(crate) started: f64,
    /// When its verified file was in place.
    pub(crate) done: Option<f64>,
    /// When it was killed, and the fraction of the file it held then.
    pub(crate) left: Option<(f64, f64)>,
    /// Its CPU seconds.
    pub(crate) cpu: f64,
}

/// What a run measured.
pub(crate) struct Outcome {
    pub(crate) client: Client,
    /// Completion instants of the downloaders that finished, ascending, seconds since the start.
    pub(crate) times: Vec<f64>,
    pub(crate) members: Vec<MemberOutcome>,
    /// When the first byte of data reached any downloader's disk.
    pub(crate) first_byte: Option<f64>,
    /// When the late downloaders were started.
    pub(crate) late_start: Option<f64>,
    /// Bytes the seed and the downloaders uploaded, from our downloaders' reports (finishers).
    pub(crate) seed_uploaded: Option<u64>,
    pub(crate) peers_uploaded: Option<u64>,
    /// CPU seconds of all downloader processes, and of the seed.
    pub(crate) cpu_downloaders: f64,
    pub(crate) cpu_seed: f64,
    /// System calls of the downloaders and of the seed, when perf could count them.
    pub(crate) syscalls: Option<(u64, u64)>,
    /// Context switches (each a thread going to sleep or being preempted: the cost of a wake-up)
    /// of the downloaders and of the seed, counted by the same perf.
    pub(crate) switches: Option<(u64, u64)>,
    /// Packets sent by all peer hosts (seed and downloaders), and bytes sent by the seed's host.
    pub(crate) packets: Option<u64>,
    pub(crate) seed_wire_bytes: Option<u64>,
    /// Bytes delivered: the file to every finisher, what every leaver held.
    pub(crate) delivered: f64,
    /// The file's size, bytes.
    pub(crate) size: f64,
    pub(crate) kill: Option<Kill>,
}

impl Outcome {
    /// The last completion.
    pub(crate) fn last(&self) -> f64 {
        self.times.last().copied().unwrap_or(0.0)
    }

    fn cpu_per_gib(&self, cpu: f64) -> f64 {
        cpu / (self.delivered / GIB_F).max(1e-12)
    }
}

/// Packets and bytes sent so far by namespace `ns`'s interface, from `ip -s -j link`.
pub(super) fn tx_counters(ns: &str) -> Option<(u64, u64)> {
    let out = Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", "eth0"]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let tx = &v[0]["stats64"]["tx"];
    Some((tx["packets"].as_u64()?, tx["bytes"].as_u64()?))
}

/// perf's name for the system-call tracepoint.
pub(super) const SYSCALLS: &str = "raw_syscalls:sys_enter";
/// perf's name for the context-switch software event.
pub(super) const SWITCHES: &str = "context-switches";

/// The count of `event` in `perf stat -x,` output.
pub(crate) fn parse_perf(text: &str, event: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(',').nth(2).is_some_and(|e| e == event))?;
    line.split(',').next()?.trim().parse().ok()
}

/// Whether `perf stat -e raw_syscalls:sys_enter` works here; the reason if not.
pub(crate) fn perf_works() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "--", "true"])
        .output()
        .map_err(|e| format!("perf not found ({e})"))?;
    if out.status.success() && parse_perf(&String::from_utf8_lossy(&out.stderr), SYSCALLS).is_some() {
        Ok(())
    } else {
        Err(format!("perf cannot count raw_syscalls:sys_enter here: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The rows of one system's run: completion against `bound` (target on ours), CPU per GiB
/// delivered, system calls and packets per MiB delivered. `p` prefixes every name.
pub(crate) fn outcome_rows(r: &mut Report, o: &Outcome, bound: Option<f64>, target: Option<f64>) {
    let p = if o.client == Client::Aria2 { "aria2: " } else { "" };
    r.row(&format!("{p}first downloader done"), o.times.first().copied().unwrap_or(0.0), "s");
    r.row(&format!("{p}T: last downloader done"), o.last(), "s");
    if let Some(b) = bound {
        let b = b.max(1e-9);
        use super::super::util::percentile;
        r.row(&format!("{p}completion p50 / bound"), percentile(&o.times, 50.0) / b, "ratio");
        r.row(&format!("{p}completion p90 / bound"), percentile(&o.times, 90.0) / b, "ratio");
        let name = format!("{p}completion max / bound (T / T_min)");
        match target {
            Some(t) => r.at_most(&name, o.last() / b, "ratio", t),
            None => r.row(&name, o.last() / b, "ratio"),
        }
    }
    if let (Some(s), Some(u)) = (o.seed_uploaded, o.peers_uploaded) {
        r.at_most(&format!("{p}seed uploaded / F"), s as f64 / o.size, "copies", super::super::swarm::SEED_TARGET);
        r.row(&format!("{p}downloaders uploaded to each other / F"), u as f64 / o.size, "copies");
    }
    if let Some(w) = o.seed_wire_bytes {
        r.row(&format!("{p}seed's host sent / F, on the wire"), w as f64 / o.size, "copies");
    }
    r.row(&format!("{p}CPU seconds: downloaders, all"), o.cpu_downloaders, "CPU-s");
    r.row(&format!("{p}CPU seconds: seed"), o.cpu_seed, "CPU-s");
    r.row(&format!("{p}downloaders' CPU per GiB delivered"), o.cpu_per_gib(o.cpu_downloaders), "CPU-s/GiB");
    r.row(&format!("{p}seed's CPU per GiB delivered"), o.cpu_per_gib(o.cpu_seed), "CPU-s/GiB");
    let mib = (o.delivered / MIB).max(1e-12);
    if let Some((d, s)) = o.syscalls {
        r.row(&format!("{p}downloaders' syscalls per MiB delivered"), d as f64 / mib, "calls/MiB");
        r.row(&format!("{p}seed's syscalls per MiB delivered"), s as f64 / mib, "calls/MiB");
    }
    if let Some((d, s)) = o.switches {
        r.row(&format!("{p}downloaders' context switches per MiB delivered"), d as f64 / mib, "cs/MiB");
        r.row(&format!("{p}seed's context switches per MiB delivered"), s as f64 / mib, "cs/MiB");
    }
    if let Some(n) = o.packets {
        r.row(&format!("{p}peer hosts' packets sent per MiB delivered"), n as f64 / mib, "pkts/MiB");
    }
}

/// Ours against BitTorrent in the same run: time and CPU ratios (below 1: ours better).
pub(crate) fn versus_rows(
    r: &mut Report,
    ours: &Outcome,
    bt: &Outcome,
    bound_ours: Option<f64>,
    bound_bt: Option<f64>,
) {
    match (bound_ours, bound_bt) {
        (Some(a), Some(b)) => r.row("ours / aria2: T / bound", (ours.last() / a) / (bt.last() / b).max(1e-9), "ratio"),
        _ => r.row("ours / aria2: T", ours.last() / bt.last().max(1e-9), "ratio"),
    }
    r.row(
        "ours / aria2: downloaders' CPU per GiB",
        ours.cpu_per_gib(ours.cpu_downloaders) / bt.cpu_per_gib(bt.cpu_downloaders).max(1e-12),
        "ratio",
    );
    r.row(
        "ours / aria2: seed's CPU per GiB",
        ours.cpu_per_gib(ours.cpu_seed) / bt.cpu_per_gib(bt.cpu_seed).max(1e-12),
        "ratio",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_output() {
        let text =
            "# started on Mon\n\n130686,,raw_syscalls:sys_enter,130686,100.00,,\n2954,,context-switches,1,100.00,,\n";
        assert_eq!(parse_perf(text, SYSCALLS), Some(130_686));
        assert_eq!(parse_perf(text, SWITCHES), Some(2954));
        assert_eq!(parse_perf("<not counted>,,raw_syscalls:sys_enter,0,0.00,,", SYSCALLS), None);
    }
}
