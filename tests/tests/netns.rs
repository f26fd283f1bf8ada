//! The real `peer` and `tracker` binaries on separate hosts (network namespaces, `tests::netns`):
//! an IPv6-only swarm found by host name; IPv4-only and IPv6-only tracker addresses with
//! dual-stack peers; a seed on the tracker's own host that registers through loopback (the
//! tracker hands downloaders its own address for it); three trackers with the responsible one
//! killed mid-transfer (the file moves to the next within two keep-alive intervals and every
//! download completes); a DNS change (every host's hosts file rewritten, the old tracker killed)
//! moving a running seed to the tracker the name now gives. Each test is skipped, saying why,
//! where namespaces are not available (not root, no iproute2). They run one at a time: the
//! failover test times a shaped transfer, and the machine has two cores.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::tracker::{Locations, TrackerRequest, TrackerResponse};
use tests::netns::{self, Family, HostSpec, Net, Proc};
use tests::{binary, test_data, RawClient, MIB};
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::new(());

/// A network for one test, held with the lock that keeps these tests one at a time; the network
/// goes first when dropped.
struct Lab {
    net: Net,
    _serial: MutexGuard<'static, ()>,
}

/// Builds the hosts, or `None` (after printing why) where namespaces are not available.
fn lab(family: Family, hosts: &[(&str, Option<u64>)]) -> Option<Lab> {
    if let Err(why) = netns::permitted() {
        println!("skipped: network namespaces are not available here: {why}");
        return None;
    }
    netns::cleanup_on_signal();
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // Built before any clock starts.
    binary("peer");
    binary("tracker");
    let specs: Vec<HostSpec> = hosts.iter().map(|(n, r)| HostSpec::new(*n, *r)).collect();
    Some(Lab { net: Net::build(family, &specs).unwrap(), _serial: serial })
}

/// Starts the tracker on `host` with `args` and waits until it listens.
async fn tracker(net: &Net, host: usize, args: &[&str]) -> Proc {
    let mut c = net.command(host, binary("tracker"));
    c.args(args).env("RUST_LOG", "info");
    let mut p = Proc::spawn(c, &format!("tracker on {}", net.host(host).name)).unwrap();
    p.wait_line("tracker listening", Duration::from_secs(10)).await.unwrap();
    p
}

/// A `peer` on `host` with `--tracker tracker`, then `args`, then `--share share`.
fn peer(net: &Net, host: usize, tracker: &str, args: &[&str], share: &Path) -> std::process::Command {
    let mut c = net.command(host, binary("peer"));
    c.args(["--tracker", tracker]).args(args).arg("--share").arg(share).env("RUST_LOG", "info");
    c
}

/// Starts a seed of `share` on `host` and waits until it serves.
async fn seed(net: &Net, host: usize, tracker: &str, share: &Path) -> Proc {
    let what = format!("seed on {}", net.host(host).name);
    let mut p = Proc::spawn(peer(net, host, tracker, &["serve"], share), &what).unwrap();
    p.wait_line("serving", Duration::from_secs(20)).await.unwrap();
    p
}

/// Starts a download of `name` into `share` on `host`, giving up after `deadline` seconds.
fn download(net: &Net, host: usize, tracker: &str, name: &str, share: &Path, deadline: u32) -> Proc {
    let d = deadline.to_string();
    let args = ["--json", "download", name, "--timeout", &d, "--linger", "0"];
    Proc::spawn(peer(net, host, tracker, &args, share), &format!("downloader on {}", net.host(host).name)).unwrap()
}

/// Waits for a download to succeed, checks the file's bytes, returns the addresses it fetched
/// from. A failure shows the downloader's log and those of `others`.
async fn finished(d: Proc, share: &Path, name: &str, data: &[u8], others: &[&Proc]) -> Vec<SocketAddr> {
    let context: String = others.iter().map(|p| p.log()).collect();
    let end = d.finish(Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e:#}\n{context}"));
    assert!(end.status.success(), "{}: {:?}\n{context}", end.status, end.stderr);
    assert!(std::fs::read(share.join(name)).unwrap() == data, "{name} differs from the seed's");
    let report: serde_json::Value = serde_json::from_str(&end.stdout).unwrap();
    let sources = report["sources"].as_array().unwrap().iter();
    sources.filter(|s| s["bytes"].as_u64() > Some(0)).map(|s| s["addr"].as_str().unwrap().parse().unwrap()).collect()
}

/// A swarm on `net`: the tracker on host 0 started with `tracker_args`, a seed of a fresh
/// `size`-byte file `name` on `seed_host` told `--tracker seed_tracker`, and downloaders on
/// `hosts`, each told `--tracker dl_tracker`; returns every address fetched from.
async fn swarm(
    net: &Net,
    tracker_args: &[&str],
    (seed_host, seed_tracker): (usize, &str),
    (hosts, dl_tracker): (&[usize], &str),
    (name, size): (&str, usize),
) -> Vec<SocketAddr> {
    let root = tempfile::tempdir().unwrap();
    let s = root.path().join("seed");
    let data = test_data(size, name.len() as u64);
    std::fs::create_dir_all(&s).unwrap();
    std::fs::write(s.join(name), &data).unwrap();
    let t = tracker(net, 0, tracker_args).await;
    let seed = seed(net, seed_host, seed_tracker, &s).await;
    let dls: Vec<_> = hosts
        .iter()
        .map(|&h| {
            let d = root.path().join(format!("d{h}"));
            (download(net, h, dl_tracker, name, &d, 30), d)
        })
        .collect();
    let mut from = Vec::new();
    for (p, d) in dls {
        from.extend(finished(p, &d, name, &data, &[&t, &seed]).await);
    }
    from
}

fn in_lab_v6(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V6(ip) if ip.segments()[..4] == [0xfd00, 0x77, 0, 0])
}

/// IPv6 only, no IPv4 address on any host: the peers find the tracker by name
/// (`--tracker tracker.lab`), register their IPv6 endpoints, and the files arrive intact.
#[test]
fn ipv6_only_swarm_by_host_name() {
    let Some(lab) = lab(Family::V6, &[("tracker", None), ("seed", None), ("a", None), ("b", None), ("c", None)]) else {
        return;
    };
    let net = &lab.net;
    let from = net
        .block_on(
            0,
            swarm(net, &["--listen", "6969"], (1, "tracker.lab"), (&[2, 3, 4], "tracker.lab"), ("v6.bin", 4 * MIB)),
        )
        .unwrap();
    assert!(!from.is_empty() && from.iter().all(in_lab_v6), "fetched from {from:?}");
}

/// Dual-stack peers listening on the default `[::]`: with the tracker on its IPv4 address alone
/// (`--tracker 10.77.0.1`) they are listed and fetch over IPv4; with it on its IPv6 address alone
/// (`--tracker fd00:77::1`), over IPv6.
#[test]
fn dual_stack_peers_with_a_single_family_tracker() {
    let Some(lab) = lab(Family::Dual, &[("tracker", None), ("seed", None), ("a", None), ("b", None)]) else { return };
    let net = &lab.net;
    let v4 = net.host(0).v4.unwrap().to_string();
    let from = net
        .block_on(0, swarm(net, &["--listen", &format!("{v4}:6969")], (1, &v4), (&[2, 3], &v4), ("d4.bin", 2 * MIB)))
        .unwrap();
    assert!(!from.is_empty() && from.iter().all(SocketAddr::is_ipv4), "over IPv4: fetched from {from:?}");

    let v6 = net.host(0).v6.unwrap().to_string();
    let listen = format!("[{v6}]:6969");
    let from =
        net.block_on(0, swarm(net, &["--listen", &listen], (1, &v6), (&[2, 3], &v6), ("d6.bin", 2 * MIB))).unwrap();
    assert!(!from.is_empty() && from.iter().all(in_lab_v6), "over IPv6: fetched from {from:?}");
}

/// A seed on the tracker's own host that connects through loopback (`--tracker 127.0.0.1`, then
/// `--tracker ::1`) and listens on `[::]`: the tracker lists it under its own address on each
/// downloader's connection, so downloaders on other hosts reach it (before, they were told
/// 127.0.0.1 and waited for ever: `--deadline` turns that into a failure).
#[test]
fn seed_on_the_trackers_host_through_loopback() {
    let Some(lab) = lab(Family::Dual, &[("tracker", None), ("a", None), ("b", None)]) else { return };
    let net = &lab.net;
    let (v4, v6) = (net.host(0).v4.unwrap(), net.host(0).v6.unwrap());
    // The downloaders may also fetch from each other, at their own lab addresses.
    let downloaders: Vec<IpAddr> = [1, 2]
        .iter()
        .flat_map(|&h| [net.host(h).v4.map(IpAddr::from), net.host(h).v6.map(IpAddr::from)])
        .flatten()
        .collect();
    let seed_at = |from: &[SocketAddr], seed: IpAddr| {
        from.iter().any(|a| a.ip() == seed) && from.iter().all(|a| a.ip() == seed || downloaders.contains(&a.ip()))
    };
    let all = ["--listen", "6969"];
    let from = net.block_on(0, swarm(net, &all, (0, "127.0.0.1"), (&[1, 2], "tracker.lab"), ("own4.bin", 2 * MIB)));
    let from = from.unwrap();
    assert!(seed_at(&from, v4.into()), "the seed is listed at the tracker's IPv4 address: fetched from {from:?}");
    let dl = v6.to_string();
    let from = net.block_on(0, swarm(net, &all, (0, "::1"), (&[1, 2], &dl), ("own6.bin", 2 * MIB)));
    let from = from.unwrap();
    assert!(seed_at(&from, v6.into()), "the seed is listed at the tracker's IPv6 address: fetched from {from:?}");
}

/// The file's locations at a tracker, `None` when it does not know the file.
async fn locate(c: &mut RawClient, name: &str) -> Option<Locations> {
    match c.call(TrackerRequest::FileLocations { name: name.into() }).await {
        TrackerResponse::FileLocations(l) => Some(l),
        _ => None,
    }
}

/// Three trackers, every peer given the same list by name. The tracker responsible for the file
/// (first in its rendezvous order, computed as the peers do) is killed with SIGKILL at about 30%
/// of a shaped transfer: the file is listed at the next tracker in its order within two
/// keep-alive intervals, and every download completes with the right bytes.
#[test]
fn responsible_tracker_killed_mid_transfer() {
    const RATE: u64 = 1280 * 1024;
    const SIZE: usize = 6 * MIB;
    const NAME: &str = "failover.bin";
    let keepalive = Duration::from_millis(500);
    let shaped = Some(RATE);
    let hosts = [
        ("lab", None),
        ("tracker1", None),
        ("tracker2", None),
        ("tracker3", None),
        ("seed", shaped),
        ("a", shaped),
        ("b", shaped),
        ("c", shaped),
        ("d", shaped),
    ];
    let Some(lab) = lab(Family::V4, &hosts) else { return };
    let net = &lab.net;
    let keys: Vec<String> = (1..=3).map(|i| format!("tracker{i}.lab:6969")).collect();
    let order = netns::tracker_order(&keys, NAME);
    let (first, next) = (order[0] + 1, order[1] + 1);
    let list = "tracker1.lab,tracker2.lab,tracker3.lab";
    net.block_on(0, async {
        let timing = ["--listen", "6969", "--keepalive-ms", "500", "--session-timeout-ms", "1500"];
        let mut trackers = Vec::new();
        for h in 1..=3 {
            trackers.push(Some(tracker(net, h, &timing).await));
        }
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("seed");
        let data = test_data(SIZE, 31);
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join(NAME), &data).unwrap();
        let seed = seed(net, 4, list, &s).await;
        let addr = |h: usize| SocketAddr::new(net.host(h).addr(), 6969);
        let (mut at_first, mut at_next) = (RawClient::connect(addr(first)).await, RawClient::connect(addr(next)).await);
        assert!(locate(&mut at_first, NAME).await.is_some(), "the seed registered {NAME} elsewhere than computed");

        let started = Instant::now();
        let dls: Vec<_> = (5..9)
            .map(|h| {
                let d = root.path().join(format!("d{h}"));
                (download(net, h, list, NAME, &d, 40), d)
            })
            .collect();
        // 30% of the downloaders' chunks held, as the responsible tracker counts them.
        loop {
            let l = locate(&mut at_first, NAME).await.unwrap();
            let copies: u64 = l.availability.iter().map(|&a| u64::from(a)).sum::<u64>() - u64::from(l.num_chunks);
            if copies * 10 >= u64::from(l.num_chunks) * 4 * 3 {
                break;
            }
            assert!(locate(&mut at_next, NAME).await.is_none(), "listed at the next tracker before the kill");
            assert!(started.elapsed() < Duration::from_secs(20), "the transfer never reached 30%");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut killed = trackers[first - 1].take().unwrap();
        killed.kill().await;
        let at_kill = started.elapsed();

        let since = Instant::now();
        let mut moved = None;
        let mut all_five = None;
        while all_five.is_none() && since.elapsed() < Duration::from_secs(10) {
            let n = locate(&mut at_next, NAME).await.map_or(0, |l| l.total_sources);
            if n >= 1 && moved.is_none() {
                moved = Some(since.elapsed());
            }
            if n >= 5 {
                all_five = Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let moved = moved.unwrap_or_else(|| {
            panic!("never listed at the next tracker\n{}", trackers[next - 1].as_ref().unwrap().log())
        });
        let all_five = all_five.map_or("not within 10 s".into(), |d| format!("{d:.0?} later"));
        println!(
            "killed tracker{first} at {at_kill:.1?} (30% held); listed at tracker{next} {moved:.0?} later, \
             all 5 holders {all_five}"
        );
        assert!(moved <= keepalive * 2, "listed at the next tracker {moved:?} after the kill");

        let others: Vec<&Proc> = trackers.iter().flatten().chain([&seed, &killed]).collect();
        for (p, d) in dls {
            finished(p, &d, NAME, &data, &others).await;
        }
        println!("every download verified {:.1?} after the start", started.elapsed());
    })
    .unwrap();
}

/// The one source a tracker lists for `name`, if it lists exactly one.
async fn only_source(c: &mut RawClient, name: &str) -> Option<SocketAddr> {
    let l = locate(c, name).await?;
    (l.total_sources == 1 && l.sources.len() == 1).then(|| l.sources[0].addr)
}

/// A DNS change moves peers: `--tracker tracker.lab` is resolved again at every (re)connect.
/// `tracker.lab` first names tracker1's host in every host's hosts file, and the seed registers
/// its file there. Then every hosts file is rewritten so that it names tracker2's host, and
/// tracker1 is killed (SIGKILL): the seed, still running, loses it at its next keep-alive,
/// resolves the name again, and registers at tracker2 within a bounded time (its reconnect
/// backoff is capped at the keep-alive, 500 ms here); a downloader told `--tracker tracker.lab`
/// then fetches the file from the seed, byte for byte.
#[test]
fn a_dns_change_moves_peers() {
    const NAME: &str = "moved.bin";
    let hosts = [("tracker1", None), ("tracker2", None), ("seed", None), ("a", None)];
    let Some(lab) = lab(Family::V4, &hosts) else { return };
    let net = &lab.net;
    let started = Instant::now();
    net.set_host_alias("tracker", 0).unwrap();
    net.block_on(2, async {
        let timing = ["--listen", "6969", "--keepalive-ms", "500", "--session-timeout-ms", "1500"];
        let mut t1 = tracker(net, 0, &timing).await;
        let t2 = tracker(net, 1, &timing).await;
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("seed");
        let data = test_data(2 * MIB, 47);
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join(NAME), &data).unwrap();
        let seed = seed(net, 2, "tracker.lab", &s).await;
        let seed_ip = net.host(2).addr();
        let addr = |h: usize| SocketAddr::new(net.host(h).addr(), 6969);
        let (mut at1, mut at2) = (RawClient::connect(addr(0)).await, RawClient::connect(addr(1)).await);
        let listed = only_source(&mut at1, NAME).await;
        assert!(listed.is_some_and(|a| a.ip() == seed_ip), "tracker1 lists {listed:?}\n{}", seed.log());
        assert!(locate(&mut at2, NAME).await.is_none(), "listed at tracker2 before the DNS change");

        net.set_host_alias("tracker", 1).unwrap();
        t1.kill().await;
        let since = Instant::now();
        let deadline = Duration::from_secs(4);
        let moved = loop {
            if let Some(a) = only_source(&mut at2, NAME).await {
                break (since.elapsed(), a);
            }
            assert!(
                since.elapsed() < deadline,
                "not listed at tracker2 within {deadline:?} of the DNS change\n{}{}",
                seed.log(),
                t2.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(moved.1.ip(), seed_ip, "tracker2 lists the seed at another address");
        println!("listed at tracker2 {:.0?} after the DNS change and tracker1's kill", moved.0);

        let d = root.path().join("a");
        let dl = download(net, 3, "tracker.lab", NAME, &d, 20);
        let from = finished(dl, &d, NAME, &data, &[&t2, &seed, &t1]).await;
        assert!(!from.is_empty() && from.iter().all(|a| a.ip() == seed_ip), "fetched from {from:?}");
    })
    .unwrap();
    println!("downloaded through tracker2 and verified {:.1?} after the start", started.elapsed());
}
