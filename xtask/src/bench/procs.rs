//! Child processes of the benchmarks that never outlive them (even when a benchmark is
//! interrupted), the release binaries they run, and scratch folders removed on exit.

use std::collections::HashMap;
use std::fs::{self};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `peer` and `tracker` binaries, built in release mode beside this xtask.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub(crate) peer: PathBuf,
    pub(crate) tracker: PathBuf,
}

impl Bins {
    /// Builds both binaries (a no-op when they are fresh) and returns their paths; or, when
    /// `P2P_BENCH_BINS` names a folder, takes them from there unbuilt (to measure another build,
    /// e.g. an earlier commit's, against the same benchmark).
    pub(crate) fn build() -> anyhow::Result<Bins> {
        if let Some(dir) = std::env::var_os("P2P_BENCH_BINS") {
            let dir = PathBuf::from(dir);
            let bins = Bins { peer: dir.join("peer"), tracker: dir.join("tracker") };
            anyhow::ensure!(bins.peer.exists() && bins.tracker.exists(), "no peer and tracker in {}", dir.display());
            eprintln!("bench: binaries from {} (P2P_BENCH_BINS)", dir.display());
            return Ok(bins);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--release", "-p", "peer", "-p", "tracker"])
            .status()
            .context("run cargo build")?;
        anyhow::ensure!(status.success(), "cargo build of peer and tracker failed");
        let dir = target_dir().join("release");
        let bins = Bins { peer: dir.join("peer"), tracker: dir.join("tracker") };
        anyhow::ensure!(bins.peer.exists() && bins.tracker.exists(), "binaries not found in {}", dir.display());
        Ok(bins)
    }
}

fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join("target")
}

/// Children and clean-ups that must not outlive the benchmark: run on drop, and by the interrupt
/// handler if Ctrl-C or SIGTERM arrives first.
struct Cleanup {
    children: HashMap<u32, Child>,
    actions: Vec<(u64, Box<dyn FnOnce() + Send>)>,
    next_action: u64,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

fn with_cleanup<T>(f: impl FnOnce(&mut Cleanup) -> T) -> T {
    let mut guard = CLEANUP.lock().unwrap_or_else(PoisonError::into_inner);
    let c = guard.get_or_insert_with(|| Cleanup { children: HashMap::new(), actions: Vec::new(), next_action: 0 });
    f(c)
}

/// Installs the Ctrl-C / SIGTERM handler that kills every child and runs every clean-up action,
/// then exits with 130.
pub(crate) fn install_interrupt_handler() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("bench: interrupted; stopping children and cleaning up");
            let (children, actions) =
                with_cleanup(|c| (std::mem::take(&mut c.children), std::mem::take(&mut c.actions)));
            for (_, mut child) in children {
                let _ = child.kill();
                let _ = child.wait();
            }
            for (_, action) in actions.into_iter().rev() {
                action();
            }
            std::process::exit(130);
        });
    });
}

/// A clean-up action that runs when this guard drops, or on interrupt, whichever comes first.
pub(crate) struct OnExit(u64);

impl OnExit {
    pub(crate) fn new(action: impl FnOnce() + Send + 'static) -> OnExit {
        with_cleanup(|c| {
            c.next_action += 1;
            c.actions.push((c.next_action, Box::new(action)));
            OnExit(c.next_action)
        })
    }
}

impl Drop for OnExit {
    fn drop(&mut self) {
        let action = with_cleanup(|c| {
            let pos = c.actions.iter().position(|(id, _)| *id == self.0)?;
            Some(c.actions.remove(pos).1)
        });
        if let Some(action) = action {
            action();
        }
    }
}

/// A scratch folder removed when dropped or on interrupt.
pub(crate) struct Scratch {
    path: PathBuf,
    _cleanup: OnExit,
}

impl Scratch {
    pub(crate) fn new(parent: &Path, name: &str) -> anyhow::Result<Scratch> {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        let path = tempfile::Builder::new()
            .prefix(&format!("p2p-bench-{name}-"))
            .tempdir_in(parent)
            .context("create scratch folder")?
            .keep();
        let p = path.clone();
        Ok(Scratch {
            path,
            _cleanup: OnExit::new(move || {
                let _ = fs::remove_dir_all(&p);
            }),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// A child process, killed when dropped or on interrupt. Its stderr lines are forwarded to a
/// channel so the benchmark can wait for what it prints; its stdout is kept for the end.
pub(crate) struct Proc {
    pid: u32,
    what: String,
    lines: mpsc::Receiver<String>,
    /// The last stderr lines, for error messages.
    tail: Arc<Mutex<Vec<String>>>,
    stdout: Option<std::process::ChildStdout>,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, what: &str) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("start {what}: {cmd:?}"))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr")?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        let tail = Arc::new(Mutex::new(Vec::new()));
        let t = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
                    t.push(line.clone());
                    if t.len() > 20 {
                        t.remove(0);
                    }
                }
                let _ = tx.send(line);
            }
        });
        with_cleanup(|c| c.children.insert(pid, child));
        Ok(Proc { pid, what: what.to_owned(), lines: rx, tail, stdout })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (`TERM`, `KILL`, `INT`, ...) with kill(1); ignores a process already gone.
    pub(crate) fn signal(&self, signal: &str) {
        let _ =
            Command::new("kill").args([&format!("-{signal}"), &self.pid.to_string()]).stderr(Stdio::null()).status();
    }

    /// Waits (up to `timeout`) until the process has exited, without reaping it, and returns its
    /// CPU seconds (user + system, all its threads) read from `/proc/PID/stat` of the zombie: the
    /// whole life of the process, shutdown included. Killed with SIGKILL after the timeout (then
    /// read the same way). `None` if it could not be read (already reaped).
    pub(crate) fn exit_cpu(&self, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut killed = false;
        loop {
            let (state, cpu) = proc_stat(self.pid)?;
            if state == 'Z' || state == 'X' {
                return Some(cpu);
            }
            if !killed && Instant::now() >= deadline {
                self.signal("KILL");
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (up to `timeout`) for the process to exit and reaps it, whatever its exit status.
    pub(crate) fn reap(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = with_cleanup(|c| c.children.get_mut(&self.pid).map(|ch| ch.try_wait()));
            match st {
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(5)),
                _ => break,
            }
        }
        // Drop kills what is left and reaps it.
    }

    /// Waits for a stderr line that `parse` accepts.
    pub(crate) fn wait_line<T>(
        &self,
        timeout: Duration,
        mut parse: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = parse(&line) {
                        return Ok(v);
                    }
                }
                Err(_) => bail!(
                    "{} did not print what was expected within {timeout:?}; last lines: {:?}",
                    self.what,
                    self.tail()
                ),
            }
        }
    }

    fn tail(&self) -> Vec<String> {
        self.tail.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits for the process to exit; returns its stdout. Fails on a non-zero exit.
    pub(crate) fn finish(self, timeout: Duration) -> anyhow::Result<String> {
        let what = self.what.clone();
        let tail = self.tail.clone();
        let (status, out) = self.output(timeout)?;
        if !status.success() {
            let tail = tail.lock().unwrap_or_else(PoisonError::into_inner).clone();
            bail!("{what} failed ({status}); last lines: {tail:?}");
        }
        Ok(out)
    }

    /// Waits for the process to exit; returns how it ended and its stdout, whatever the status
    /// (a peer stopped by SIGTERM while seeding exits 130 after printing its report).
    pub(crate) fn output(mut self, timeout: Duration) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let mut out = String::new();
        let stdout = self.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut o) = stdout {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            let st = with_cleanup(|c| c.children.get_mut(&self.pid).map(|ch| ch.try_wait()));
            match st {
                Some(Ok(Some(status))) => break status,
                Some(Ok(None)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Some(Ok(None)) => bail!("{} still running after {timeout:?}", self.what),
                Some(Err(e)) => return Err(e).context(format!("wait for {}", self.what)),
                None => bail!("{} was already reaped", self.what),
            }
        };
        out.push_str(&reader.join().unwrap_or_default());
        Ok((status, out))
    }
}

/// A process's state letter and CPU seconds (utime + stime of all its threads), from
/// `/proc/PID/stat`; `None` once it is gone.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, f64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ: 100 on every Linux architecture
/// this runs on; the kernel converts to it whatever its internal HZ).
const USER_HZ: f64 = 100.0;

/// Parses `/proc/PID/stat`: the state (field 3) and utime + stime (fields 14 and 15) in seconds.
/// The command name (field 2) is in parentheses and may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(char, f64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so fields[0]; utime (14) is fields[11], stime fields[12].
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, (utime + stime) as f64 / USER_HZ))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = with_cleanup(|c| c.children.remove(&self.pid)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let line = "4242 (peer (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 1234 0 0";
        assert_eq!(parse_stat(line), Some(('S', 3.25)));
        assert_eq!(parse_stat("12 (z) Z 1 12 12 0 -1 0 0 0 0 0 7 3 0 0"), Some(('Z', 0.1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_own_stat() {
        let (state, cpu) = proc_stat(std::process::id()).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(cpu >= 0.0);
    }
}
