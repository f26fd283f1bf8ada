//! Building a [`Net`]: namespaces, the bridge, addresses, shaping, hosts files and neighbours,
//! with as few `ip` processes as possible (one batch per namespace), so a network of a hundred
//! hosts builds in a second or two.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{enter, etc_path, ns_path, poll_until, HostSpec, Net, IFACE, STATIC_NEIGHBOURS_ABOVE};

/// Runs `ip ARGS`; fails with its stderr.
pub(super) fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args), "ip", args)
}

/// Runs `tc ARGS`; fails with its stderr.
pub(super) fn tc(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("tc").args(args), "tc", args)
}

fn run(cmd: &mut Command, what: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {what} (iproute2)"))?;
    if !out.status.success() {
        bail!("{what} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `ip -n NS -batch -` with `commands`, one per line.
pub(super) fn ip_batch(ns: &str, commands: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("run ip (iproute2)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes()).context("write to ip -batch")?;
    }
    let out = child.wait_with_output().context("wait for ip -batch")?;
    if !out.status.success() {
        bail!("ip -n {ns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A locally administered MAC for host `i`, set rather than read back, so that neighbour entries
/// can be written without asking each host.
fn mac(i: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!("02:77:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// Sets sysctls in a namespace: /proc/sys/net shows the namespace of the thread that opens it,
/// so a thread that entered the namespace writes them (no process per namespace).
fn sysctls(ns: &str, settings: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = ns_path(ns);
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<()> {
            enter(&path)?;
            for (key, value) in &settings {
                let file = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&file, value).with_context(|| format!("set {key} in {ns}"))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("sysctl thread panicked")))
    })
}

pub(super) fn build(net: &Net, switch: &str, specs: &[HostSpec]) -> anyhow::Result<()> {
    let family = net.family;
    ip(&["netns", "add", switch])?;
    // The switch is a bridge and nothing else: no addresses of its own, no IPv6 chatter, and no
    // multicast snooping, which could hold back IPv6 neighbour discovery before a querier runs.
    sysctls(switch, &[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")])?;
    let mut ports = String::from("link add br0 type bridge mcast_snooping 0\nlink set br0 up\n");
    for (i, h) in net.hosts.iter().enumerate() {
        ip(&["netns", "add", &h.ns])?;
        // Before the interface exists, so its link-local address needs no duplicate detection
        // either (the global ones are added `nodad`): addresses are usable as soon as they are up.
        sysctls(&h.ns, &[("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")])?;
        let port = format!("s{i}");
        ip(&[
            "link",
            "add",
            IFACE,
            "address",
            &mac(i),
            "netns",
            &h.ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            switch,
        ])?;
        let _ = writeln!(ports, "link set {port} master br0 up");
        let mut cmds = String::new();
        if let Some(a) = h.v4 {
            let _ = writeln!(cmds, "addr add {a}/16 dev {IFACE}");
        }
        if let Some(a) = h.v6 {
            let _ = writeln!(cmds, "addr add {a}/64 dev {IFACE} nodad");
        }
        let _ = writeln!(cmds, "link set {IFACE} up\nlink set lo up");
        ip_batch(&h.ns, &cmds)?;
        if let Some(rate) = specs.get(i).and_then(|s| s.rate) {
            let bits = format!("{}bit", rate.saturating_mul(8));
            // A bucket of about 10 ms of traffic, at least 32 KiB, so the shaper keeps up at any rate.
            let burst = (rate / 100).max(32 * 1024).to_string();
            tc(&[
                "-n", &h.ns, "qdisc", "add", "dev", IFACE, "root", "tbf", "rate", &bits, "burst", &burst, "latency",
                "100ms",
            ])?;
        }
    }
    ip_batch(switch, &ports)?;
    write_hosts_files(net)?;
    if net.hosts.len() > STATIC_NEIGHBOURS_ABOVE {
        static_neighbours(net)?;
    }
    if family.v6() {
        for h in &net.hosts {
            poll_until(&format!("IPv6 addresses of {} usable", h.name), Duration::from_secs(10), || {
                Command::new("ip")
                    .args(["-n", &h.ns, "-6", "addr", "show", "dev", IFACE, "tentative"])
                    .output()
                    .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
            })?;
        }
    }
    Ok(())
}

/// `/etc/netns/NS/hosts` for every host: loopback, then every host's addresses and names.
fn write_hosts_files(net: &Net) -> anyhow::Result<()> {
    let mut lines = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in &net.hosts {
        let short = h.name.split('.').next().unwrap_or_default();
        for a in [h.v4.map(std::net::IpAddr::V4), h.v6.map(std::net::IpAddr::V6)].into_iter().flatten() {
            let _ = writeln!(lines, "{a}\t{} {short}", h.name);
        }
    }
    for h in &net.hosts {
        let dir = etc_path(&h.ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("hosts"), &lines).with_context(|| format!("write {}/hosts", dir.display()))?;
    }
    Ok(())
}

/// Permanent neighbour entries on every host for every other host: with many hosts, learned
/// entries would overflow the kernel's shared neighbour table (permanent ones are not counted
/// against it) and new neighbours would be dropped.
fn static_neighbours(net: &Net) -> anyhow::Result<()> {
    for (i, h) in net.hosts.iter().enumerate() {
        let mut cmds = String::new();
        for (j, o) in net.hosts.iter().enumerate().filter(|(j, _)| *j != i) {
            let m = mac(j);
            for a in [o.v4.map(std::net::IpAddr::V4), o.v6.map(std::net::IpAddr::V6)].into_iter().flatten() {
                let _ = writeln!(cmds, "neigh replace {a} lladdr {m} dev {IFACE} nud permanent");
            }
        }
        ip_batch(&h.ns, &cmds)?;
    }
    Ok(())
}
