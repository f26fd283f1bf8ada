//! Whether hosts can be built here, and removing them: a network's own namespaces, those a
//! killed run left behind, and every live network on Ctrl-C / SIGTERM.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use super::setup::ip;
use super::{etc_path, ns_path, LIVE, NEXT_NET, PREFIX};

/// Whether this machine lets us build hosts: root, and `ip netns` that can add a namespace and
/// run a program in it. `Err` says why not (callers skip with that reason).
pub fn permitted() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root (network namespaces need root)".into());
    }
    // Unique per call: tests probe from several threads at once.
    let probe = format!("{PREFIX}{}probe{}", std::process::id(), NEXT_NET.fetch_add(1, Ordering::Relaxed));
    ip(&["netns", "add", &probe]).map_err(|e| format!("ip netns add failed: {e:#}"))?;
    let ran = Command::new("ip")
        .args(["netns", "exec", &probe, "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip netns exec: {e}"))
        .and_then(|o| {
            o.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("ip netns exec failed: {}", String::from_utf8_lossy(&o.stderr).trim()))
        });
    let _ = ip(&["netns", "del", &probe]);
    ran
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

/// Removes namespaces and hosts files left by a run that was killed before it could clean up
/// (its process is gone), and ends what still runs in them (processes a run of ours started).
pub fn sweep_stale() {
    let etc: Vec<String> = fs::read_dir("/etc/netns")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    for ns in namespaces().into_iter().chain(etc) {
        let Some(rest) = ns.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            remove_namespace(&ns);
        }
    }
}

/// Kills the processes in `ns`, deletes it and its hosts-file folder; ignores what is gone.
pub(super) fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    if ns_path(ns).exists() {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
    }
    let _ = fs::remove_dir_all(etc_path(ns));
    // Only when no one else's hosts files are left in it.
    let _ = fs::remove_dir("/etc/netns");
}

/// Installs (once per process) a Ctrl-C / SIGTERM handler that removes every live [`Net`] and
/// exits with 130: a test interrupted mid-run leaves no namespace behind. Not for programs with
/// an interrupt handler of their own (they run [`Net::teardown`] from it).
pub fn cleanup_on_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut term) = signal(SignalKind::terminate()) else { return };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
                for (_, t) in live {
                    t.run();
                }
                std::process::exit(130);
            });
        });
    });
}
