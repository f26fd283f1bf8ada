//! The CLI's side of the node's HTTP API: `peer serve --http ADDR` serves it, and `peer download
//! --node ADDR ...` asks a running node to do a download and shows its progress instead of
//! starting a process of its own (so one process per host serves everything it ever fetched).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use peer::api::{self, ApiClient, ClientError, DownloadRequest, DownloadState, SeedPolicy, Status};
use peer::{ErrorKind, Node};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Failure;

/// Starts the API on `addr` for `node`; it stops when `stop` is cancelled.
pub(super) async fn serve(
    node: Arc<Node>,
    addr: SocketAddr,
    token: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse { " (another process uses that port)" } else { "" };
        anyhow::anyhow!("cannot listen on {addr} for the HTTP API: {e}{hint}")
    })?;
    let bound = listener.local_addr()?;
    let config = api::ApiConfig { token, ..api::ApiConfig::default() };
    // A bad token is refused before anything is served.
    if let Some(t) = &config.token {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Failure::new(ErrorKind::Usage, api::ServeError::BadToken.to_string()).into());
        }
    }
    eprintln!("HTTP API on http://{bound}/v1/");
    Ok(tokio::spawn(async move {
        if let Err(e) = api::serve_api(node, listener, config, stop).await {
            eprintln!("peer: the HTTP API stopped: {e}");
        }
    }))
}

/// What `peer download --node` asks for.
pub(super) struct Remote {
    pub(super) addr: SocketAddr,
    pub(super) token: Option<String>,
    pub(super) request: DownloadRequest,
    pub(super) json: bool,
}

impl Remote {
    /// Starts the download on the node, follows it to its end, and reports; Ctrl-C cancels it
    /// on the node (its partial downloads are kept there).
    pub(super) async fn run(self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let client = ApiClient::new(self.addr, self.token.clone()).map_err(client_error)?;
        let started = client.start(&self.request).await.map_err(client_error)?;
        eprintln!("node {} downloads {} file(s) as {}", self.addr, started.files, started.id);
        let display = Display::new(self.json);
        let waited = tokio::select! {
            r = client.wait(&started.id, |s| display.show(s)) => Some(r),
            () = cancel.cancelled() => None,
        };
        display.done();
        let status = match waited {
            Some(r) => r.map_err(client_error)?,
            None => {
                let _ = client.cancel(&started.id).await;
                return Err(peer::Error::Cancelled.into());
            }
        };
        report(&status, self.json)?;
        let s = &status.summary;
        match s.state {
            DownloadState::Done => Ok(()),
            DownloadState::Cancelled => Err(peer::Error::Cancelled.into()),
            DownloadState::Failed | DownloadState::Running => {
                let why = s.error.clone().unwrap_or_else(|| "the download failed".into());
                Err(Failure::new(ErrorKind::Other, why).into())
            }
        }
    }
}

/// The seeding policy to send: the CLI's options, as the API names them.
pub(super) fn seed_policy(seed: bool, time: Option<Duration>, ratio: Option<f64>, linger: Duration) -> SeedPolicy {
    match (seed, time, ratio) {
        (true, _, _) => SeedPolicy::Forever,
        (_, Some(t), _) => SeedPolicy::Time { secs: t.as_secs() },
        (_, _, Some(ratio)) => SeedPolicy::Ratio { ratio },
        _ if linger.is_zero() => SeedPolicy::Time { secs: 0 },
        _ => SeedPolicy::Linger,
    }
}

/// An API failure as the CLI reports it: what the node said, with the exit code its status
/// calls for.
fn client_error(e: ClientError) -> anyhow::Error {
    let kind = match &e {
        ClientError::Api { status: 404, .. } => ErrorKind::NotFound,
        ClientError::Api { status: 400 | 409 | 413 | 415, .. } | ClientError::BadToken => ErrorKind::Usage,
        ClientError::Timeout { .. } => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    };
    Failure::new(kind, e.to_string()).into()
}

/// Progress of a download on the node: a bar on a terminal, a line every few seconds otherwise.
struct Display {
    bar: ProgressBar,
    tty: bool,
    json: bool,
    last_line: std::sync::Mutex<Instant>,
}

impl Display {
    fn new(json: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = ProgressBar::hidden();
        if tty {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Display { bar, tty, json, last_line: std::sync::Mutex::new(Instant::now()) }
    }

    fn show(&self, status: &Status) {
        let s = &status.summary;
        let rate = if s.sources == 0 && s.bytes_done < s.bytes_total {
            "waiting for sources".to_owned()
        } else {
            format!("{}/s", HumanBytes(s.rate_bytes_per_sec))
        };
        let files = format!("{}/{} files, {rate}", s.files_done + s.files_failed, s.files);
        if self.tty {
            self.bar.set_length(s.bytes_total);
            self.bar.set_position(s.bytes_done);
            self.bar.set_message(files);
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.json && last.elapsed() >= Duration::from_secs(2) {
            *last = Instant::now();
            eprintln!("{}: {}/{}, {files}", s.id, HumanBytes(s.bytes_done), HumanBytes(s.bytes_total));
        }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// The final report of a download the node did.
fn report(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        super::output::write_out(&format!("{}\n", serde_json::to_string_pretty(status)?))?;
        return Ok(());
    }
    let s = &status.summary;
    let mut text = String::new();
    for f in status.results.iter().flatten() {
        match (&f.error, f.already_complete) {
            (Some(e), _) => text.push_str(&format!("  {}  FAILED: {e}\n", f.name)),
            (None, true) => text.push_str(&format!("  {}  already here\n", f.name)),
            (None, false) => text.push_str(&format!(
                "  {}  {}  {:.2}s\n",
                f.name,
                HumanBytes(f.bytes.unwrap_or_default()),
                f.elapsed_secs
            )),
        }
    }
    text.push_str(&format!(
        "{} of {} files ({}) on the node, {:.2}s; {}\n",
        s.files_done,
        s.files,
        HumanBytes(s.bytes_done),
        s.elapsed_secs,
        match s.state {
            DownloadState::Done => "done".to_owned(),
            DownloadState::Failed => format!("failed: {}", s.error.as_deref().unwrap_or("see above")),
            DownloadState::Cancelled => "cancelled".to_owned(),
            DownloadState::Running => "still running".to_owned(),
        }
    ));
    super::output::write_out(&text)?;
    Ok(())
}
