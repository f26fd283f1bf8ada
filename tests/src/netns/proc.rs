//! A child process of a test (on a [`Net`](super::Net) host or not), killed when dropped: its
//! stderr lines are kept (to wait for what it prints, and to show its log when a test fails) and
//! its stdout is collected for the end. Call within a Tokio runtime.

use std::fmt::Write as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A running child; see the module documentation.
pub struct Proc {
    child: tokio::process::Child,
    what: String,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<()>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Every line it wrote to stderr.
    pub stderr: Vec<String>,
}

impl Proc {
    /// Starts `cmd` (stdin closed, stdout and stderr captured); `what` names it in messages.
    pub fn spawn(cmd: std::process::Command, what: &str) -> anyhow::Result<Proc> {
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("start {what}"))?;
        let (stderr, stdout) = (child.stderr.take().context("no stderr")?, child.stdout.take().context("no stdout")?);
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        // Drained to the end, so the child never blocks on a full pipe.
        let stderr = tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                kept.lock().unwrap_or_else(PoisonError::into_inner).push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stdout = tokio::spawn(async move {
            let mut s = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut s).await;
            s
        });
        Ok(Proc { child, what: what.to_owned(), lines, log, stdout, stderr })
    }

    /// Its process id (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for a stderr line starting with `prefix`; fails after `timeout` or when stderr ends.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => Ok(line),
            Ok(None) => bail!("{} ended without printing {prefix:?}\n{}", self.what, self.log()),
            Err(_) => bail!("{} did not print {prefix:?} within {timeout:?}\n{}", self.what, self.log()),
        }
    }

    /// Its stderr so far, headed by its name: for failure messages.
    pub fn log(&self) -> String {
        let mut s = format!("--- {} ---\n", self.what);
        for l in self.log.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills it with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits up to `timeout` for it to exit (killing it after that) and returns how it ended.
    pub async fn finish(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("wait for {}", self.what))?,
            Err(_) => {
                self.kill().await;
                bail!("{} still running after {timeout:?}\n{}", self.what, self.log());
            }
        };
        // The pipes close with the process (unless it left a child holding them: bounded).
        let stdout = tokio::time::timeout(Duration::from_secs(5), &mut self.stdout).await;
        let stdout = stdout.ok().and_then(Result::ok).unwrap_or_default();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.stderr).await;
        let stderr = self.log.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Finished { status, stdout, stderr })
    }
}
