//! Hosts for tests and benchmarks that need real networks: each host a Linux network namespace
//! with a veth into a bridge that lives in a namespace of its own (the "switch"), so traffic flows
//! only between the hosts and nothing touches the machine's own network. Shared by the CI tests
//! (`tests/tests/netns.rs`) and `cargo xtask bench swarm-netns`, so both build the same network.
//!
//! A run picks an address family ([`Family`]): IPv4 (10.77.0.0/16), IPv6 only (fd00:77::/64, no
//! IPv4 address but loopback), or both. Hosts have names: `ip netns exec` bind-mounts
//! `/etc/netns/NS/hosts` over `/etc/hosts`, so every host's file lists every host as
//! `NAME.lab`. Each host's egress may be shaped with `tc tbf`.
//!
//! Needs root and iproute2: [`permitted`] says why not. Everything is removed when the [`Net`]
//! drops (also while a panicking test unwinds), by [`Teardown::run`] for callers with their own
//! interrupt handling, and on Ctrl-C / SIGTERM once [`cleanup_on_signal`] is installed. What a
//! process killed outright leaves is swept by the next [`Net::build`]: namespaces are named with
//! [`PREFIX`] and the creating process's id.

#![warn(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

mod clean;
mod proc;
mod setup;

use clean::remove_namespace;
pub use clean::{cleanup_on_signal, permitted, sweep_stale};
pub use proc::{Finished, Proc};

/// Prefix of every namespace this harness creates; the creating process's id follows.
pub const PREFIX: &str = "p2pn";
/// The domain of host names: host `tracker` is `tracker.lab`.
pub const DOMAIN: &str = "lab";
/// Above this many hosts, neighbours are entered as permanent entries: all namespaces share one
/// kernel neighbour table (1024 entries by default), and a full table drops new neighbours.
const STATIC_NEIGHBOURS_ABOVE: usize = 30;
/// The interface of each host (names are per namespace, so every host has the same one).
const IFACE: &str = "eth0";

/// Which addresses the hosts get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only: host i is 10.77.x.y/16 with x.y = i + 1 (host 0 is 10.77.0.1).
    V4,
    /// IPv6 only: host i is fd00:77::(i+1)/64 (hex), no IPv4 address (loopback aside).
    V6,
    /// Both.
    Dual,
}

impl Family {
    fn v4(self) -> bool {
        self != Family::V6
    }

    fn v6(self) -> bool {
        self != Family::V4
    }
}

impl std::str::FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v4" | "ipv4" => Ok(Family::V4),
            "v6" | "ipv6" => Ok(Family::V6),
            "dual" => Ok(Family::Dual),
            _ => Err(format!("{s:?}: give v4, v6 or dual")),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6 only",
            Family::Dual => "dual-stack",
        })
    }
}

/// One host to build: its name (without the domain) and its egress rate cap, bytes/s.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Short name: letters, digits and hyphens.
    pub name: String,
    /// Egress shaped to this many bytes/s with `tc tbf`; `None`: not shaped.
    pub rate: Option<u64>,
}

impl HostSpec {
    /// A host named `name`, shaped to `rate` bytes/s if given.
    pub fn new(name: impl Into<String>, rate: Option<u64>) -> Self {
        Self { name: name.into(), rate }
    }
}

/// A host that was built.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its full name, `NAME.lab`, listed in every host's hosts file.
    pub name: String,
    /// Its IPv4 address, if the family has one.
    pub v4: Option<Ipv4Addr>,
    /// Its IPv6 address, if the family has one.
    pub v6: Option<Ipv6Addr>,
}

impl Host {
    /// Its IPv4 address if it has one, else its IPv6 address.
    pub fn addr(&self) -> IpAddr {
        match (self.v4, self.v6) {
            (Some(v4), _) => IpAddr::V4(v4),
            (None, Some(v6)) => IpAddr::V6(v6),
            // Every family gives at least one; loopback keeps the signature total.
            (None, None) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// Removes a network's namespaces (killing whatever still runs in them) and hosts files.
/// Idempotent; cheap to clone; may run from an interrupt handler.
#[derive(Debug, Clone)]
pub struct Teardown {
    namespaces: Arc<Vec<String>>,
    done: Arc<AtomicBool>,
}

impl Teardown {
    /// Kills every process left in the namespaces, deletes them and their `/etc/netns` folders.
    /// Only the first call does anything.
    pub fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        for ns in self.namespaces.iter() {
            remove_namespace(ns);
        }
    }
}

/// The hosts of one run, removed when dropped.
#[derive(Debug)]
pub struct Net {
    hosts: Vec<Host>,
    family: Family,
    teardown: Teardown,
    id: u64,
}

/// Networks alive in this process, for the signal handler.
static LIVE: Mutex<Vec<(u64, Teardown)>> = Mutex::new(Vec::new());
static NEXT_NET: AtomicU64 = AtomicU64::new(0);

impl Net {
    /// Builds `hosts` (at least one) on one bridge with `family` addresses. Host i's address is
    /// derived from i (see [`Family`]). Sweeps stale namespaces of dead processes first.
    pub fn build(family: Family, hosts: &[HostSpec]) -> anyhow::Result<Net> {
        anyhow::ensure!(!hosts.is_empty() && hosts.len() < 0xfffe, "between 1 and 65533 hosts");
        for (i, h) in hosts.iter().enumerate() {
            let ok = !h.name.is_empty()
                && h.name.len() <= 63
                && h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !h.name.starts_with('-');
            anyhow::ensure!(ok, "host name {:?} is not a host name label", h.name);
            anyhow::ensure!(!hosts[..i].iter().any(|o| o.name == h.name), "host {:?} twice", h.name);
        }
        sweep_stale();
        let id = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        // Several networks may live at once in one process (tests run in parallel).
        let tag = format!("{PREFIX}{}x{id}", std::process::id());
        let switch = format!("{tag}sw");
        let built: Vec<Host> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Host {
                ns: format!("{tag}h{i}"),
                name: format!("{}.{DOMAIN}", h.name),
                v4: family.v4().then(|| v4_addr(i)),
                v6: family.v6().then(|| v6_addr(i)),
            })
            .collect();
        let mut all = vec![switch.clone()];
        all.extend(built.iter().map(|h| h.ns.clone()));
        let teardown = Teardown { namespaces: Arc::new(all), done: Arc::new(AtomicBool::new(false)) };
        // Registered before anything exists, so a failure half-way still cleans up.
        let net = Net { hosts: built, family, teardown: teardown.clone(), id };
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).push((id, teardown));
        setup::build(&net, &switch, hosts)?;
        Ok(net)
    }

    /// The hosts, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`. Panics if there is no such host (a bug in the caller).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The address family of this network.
    pub fn family(&self) -> Family {
        self.family
    }

    /// What removes this network; run it from an interrupt handler that exits without dropping.
    pub fn teardown(&self) -> Teardown {
        self.teardown.clone()
    }

    /// A command that runs `program` on host `i` (through `ip netns exec`, which execs it: the
    /// child's id is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// Makes `NAME.lab` (and `NAME`) resolve to host `i`'s addresses on every host, replacing
    /// what it resolved to before: a DNS change, for processes already running as well as new
    /// ones. `name` is a label like a host's (see [`HostSpec`]) but not one of the hosts' own.
    ///
    /// The files are rewritten in place (same inode), not replaced by a rename: `ip netns exec`
    /// bind-mounts `/etc/netns/NS/hosts` itself over `/etc/hosts` in the mount namespace it makes
    /// for each process, and a bind mount pins the inode it was made from, so a process already
    /// running would keep reading the old file for ever after a rename (checked: `getent hosts`
    /// in a running `ip netns exec` shell still answered the old address after a rename, and the
    /// new one after an in-place rewrite; glibc reads `/etc/hosts` afresh at every lookup, with
    /// no nscd here). The price: the rewrite is not atomic. The new text is written over the old
    /// from offset 0, then the file cut to its length, so it is never empty, but a lookup at
    /// that very moment may read a mix of both (a name then resolves to the old address or to
    /// none: callers that matter retry).
    pub fn set_host_alias(&self, name: &str, i: usize) -> anyhow::Result<()> {
        use std::fmt::Write as _;
        use std::io::{Seek, Write as _};
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-');
        anyhow::ensure!(ok, "alias {name:?} is not a host name label");
        let full = format!("{name}.{DOMAIN}");
        anyhow::ensure!(!self.hosts.iter().any(|h| h.name == full), "{full} is a host's own name");
        let target = self.hosts.get(i).with_context(|| format!("no host {i}"))?;
        let mut lines = String::new();
        for a in [target.v4.map(IpAddr::V4), target.v6.map(IpAddr::V6)].into_iter().flatten() {
            let _ = writeln!(lines, "{a}\t{full} {name}");
        }
        for h in &self.hosts {
            let path = etc_path(&h.ns).join("hosts");
            let old = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            // Every line but those naming the alias, then the alias's new lines.
            let mut text: String = old
                .lines()
                .filter(|l| !l.split_whitespace().skip(1).any(|n| n == full || n == name))
                .map(|l| format!("{l}\n"))
                .collect();
            text.push_str(&lines);
            let mut f =
                fs::OpenOptions::new().write(true).open(&path).with_context(|| format!("open {}", path.display()))?;
            f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))?;
            let len = f.stream_position().with_context(|| format!("write {}", path.display()))?;
            f.set_len(len).with_context(|| format!("truncate {}", path.display()))?;
        }
        Ok(())
    }

    /// Runs `fut` to completion on a new thread inside host `i`'s network namespace, on a
    /// current-thread runtime, so the sockets it opens are that host's (to talk to the other
    /// hosts from the test itself). A panic in `fut` is resumed on the caller's thread.
    pub fn block_on<F>(&self, i: usize, fut: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let path = ns_path(&self.hosts[i].ns);
        std::thread::scope(|s| {
            let t = s.spawn(move || -> anyhow::Result<F::Output> {
                enter(&path)?;
                // Blocking-pool threads (file I/O, name lookups) join the namespace too.
                let again = path.clone();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_start(move || {
                        let _ = enter(&again);
                    })
                    .build()
                    .context("start a runtime")?;
                Ok(rt.block_on(fut))
            });
            t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).retain(|(id, _)| *id != self.id);
        self.teardown.run();
    }
}

fn v4_addr(i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(10, 77, (n >> 8) as u8, n as u8)
}

fn v6_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, (i + 1) as u16)
}

fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn etc_path(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    rustix::thread::move_into_link_name_space(f.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
        .with_context(|| format!("enter {}", path.display()))
}

/// The order in which peers given `trackers` try them for file `name`: rendezvous hashing as the
/// peer computes it (`crates/peer/src/trackers.rs`, `weight`): BLAKE3 of the tracker as the peer
/// prints it (`host:port`, host in lower case), a zero byte and the name; the first 8 bytes as a
/// little-endian u64; highest first. Kept in step by hand: the peer does not export it, and a
/// test that finds the wrong tracker responsible fails loudly.
pub fn tracker_order(trackers: &[String], name: &str) -> Vec<usize> {
    let weight = |t: &str| {
        let mut h = blake3::Hasher::new();
        h.update(t.as_bytes());
        h.update(&[0]);
        h.update(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    };
    let mut w: Vec<(u64, usize)> = trackers.iter().enumerate().map(|(i, t)| (weight(t), i)).collect();
    w.sort_unstable_by(|a, b| b.cmp(a));
    w.into_iter().map(|(_, i)| i).collect()
}

/// Polls `cond` every 20 ms until it holds, failing after `timeout`; for waits outside a runtime.
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
