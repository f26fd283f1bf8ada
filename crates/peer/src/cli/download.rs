//! `peer download`: what to fetch (selectors), waiting for files not listed yet, the fetch itself
//! (one file, or a batch), and what the process does once it is done (the seeding policy).

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::HumanBytes;
use peer::api::DownloadRequest;
use peer::{BatchOptions, BatchProgress, DownloadOptions, ErrorKind, Node, Progress, RootPrefix, Selector, Target};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::output;
use super::{parse_duration, Failure};

/// Options of `peer download` besides what to fetch and the node's.
#[derive(Debug, Args)]
pub(super) struct FetchArgs {
    /// Give up when the run (waiting included, seeding not) takes longer than this: 90s, 5m, 1h
    /// (a plain number is seconds).
    #[arg(long, visible_alias = "deadline", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,
    /// Fail a file when no verified data has arrived for it for this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    stall_timeout: Option<Duration>,
    /// Wait for files the trackers do not list yet (a name, prefix, glob or root), asking again
    /// with backoff (up to every 5 s), instead of failing at once. Bounded by --timeout.
    #[arg(long)]
    wait: bool,
    /// Files downloading at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Replace a different local file of the same name, atomically, once the new content is
    /// verified (otherwise such a file is an error).
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    seeding: SeedArgs,
}

/// What the process does after the download: seed (until stopped, for a time, or to a ratio),
/// or linger while others fetch from it.
#[derive(Debug, Args)]
#[group(multiple = false)]
struct SeedArgs {
    /// Keep serving after the download, until Ctrl-C.
    #[arg(long)]
    seed: bool,
    /// Keep serving after the download for this long (e.g. 10m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    seed_time: Option<Duration>,
    /// Keep serving after the download until this process has uploaded R times the bytes it
    /// downloaded (e.g. 1.0), or Ctrl-C.
    #[arg(long, value_parser = parse_ratio, value_name = "R")]
    seed_ratio: Option<f64>,
    /// Without a --seed option: after the download, stay while others are fetching from this
    /// peer, and leave once nothing was uploaded for this long (0 leaves at once). So staggered
    /// downloaders fetch from each other instead of each costing the origin a copy.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    linger: Duration,
}

impl FetchArgs {
    /// The same download asked of a node through its API.
    pub(super) fn request(&self, names: Vec<String>, roots: Vec<String>, manifest: Option<String>) -> DownloadRequest {
        let s = &self.seeding;
        DownloadRequest {
            names,
            roots,
            manifest,
            parallel: Some(self.parallel),
            replace: self.replace,
            deadline_secs: self.timeout.map(|t| t.as_secs().max(1)),
            seed: Some(super::remote::seed_policy(s.seed, s.seed_time, s.seed_ratio, s.linger)),
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number (e.g. 1.0)")),
    }
}

/// Everything `peer download` was given, once the node is running.
pub(super) struct Fetch<'a> {
    pub(super) node: &'a Node,
    pub(super) selectors: Vec<Selector>,
    pub(super) args: FetchArgs,
    pub(super) json: bool,
    pub(super) cancel: &'a CancellationToken,
}

impl Fetch<'_> {
    /// Waits for what was asked for (with --wait), fetches it, then seeds or lingers as asked.
    pub(super) async fn run(self) -> anyhow::Result<()> {
        let started = Instant::now();
        let until = self.args.timeout.map(|t| started + t);
        let remaining = || until.map(|u| u.saturating_duration_since(Instant::now()));
        let bytes = match single(&self.selectors) {
            Some((name, root)) => {
                self.wait_for(until, || async { self.node.trackers().file_meta(name).await.map(|_| ()) }).await?;
                let (tx, rx) = watch::channel(Progress::default());
                let display = tokio::spawn(output::show_progress(rx, name.to_owned(), self.json));
                let opts = DownloadOptions {
                    deadline: remaining(),
                    progress: Some(tx),
                    root,
                    replace: self.args.replace,
                    stall_timeout: self.args.stall_timeout,
                };
                let result = self.node.download(name, opts).await;
                let _ = display.await;
                let report = result?;
                output::print_report(&report, self.json)?;
                report.fetched_bytes()
            }
            None => {
                let targets: Vec<Target> =
                    self.wait_for(until, || peer::resolve(self.node.trackers(), &self.selectors)).await?;
                let (tx, rx) = watch::channel(BatchProgress::default());
                let display = tokio::spawn(output::show_batch_progress(rx, self.json));
                let opts = BatchOptions {
                    parallel: self.args.parallel,
                    deadline: remaining(),
                    replace: self.args.replace,
                    stall_timeout: self.args.stall_timeout,
                    progress: Some(tx),
                };
                let result = self.node.download_all(targets, opts).await;
                let _ = display.await;
                let report = result?;
                output::print_batch(&report, self.json)?;
                if report.failed > 0 {
                    // The exit code says the worst kind of failure among the files.
                    let kinds = report.files.iter().filter_map(|f| f.error_kind);
                    let kind = kinds.max_by_key(|k| severity(*k)).unwrap_or(ErrorKind::Other);
                    return Err(Failure::new(
                        kind,
                        format!("{} of {} files failed", report.failed, report.files.len()),
                    )
                    .into());
                }
                report.fetched_bytes
            }
        };
        self.after(bytes).await;
        Ok(())
    }

    /// Runs `attempt` until it succeeds; with --wait, a "not found" is asked again with backoff
    /// (250 ms doubling to 5 s) until `until`. Other errors end it at once.
    async fn wait_for<T, F, Fut>(&self, until: Option<Instant>, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, peer::Error>>,
    {
        let mut backoff = Duration::from_millis(250);
        let mut told = false;
        loop {
            match attempt().await {
                Err(e) if self.args.wait && e.kind() == ErrorKind::NotFound => {
                    if !told {
                        eprintln!("waiting: {e}");
                        told = true;
                    }
                    let next = Instant::now() + backoff;
                    if until.is_some_and(|u| next > u) {
                        let waited = self.args.timeout.unwrap_or_default();
                        let why =
                            format!("still not on the trackers after {}: {e}", humantime::format_duration(waited));
                        return Err(Failure::new(ErrorKind::Timeout, why).into());
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        () = self.cancel.cancelled() => return Err(peer::Error::Cancelled.into()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                other => return Ok(other?),
            }
        }
    }

    /// The seeding policy, after a download that fetched `fetched` bytes.
    async fn after(&self, fetched: u64) {
        let s = &self.args.seeding;
        let addr = self.node.listen_addr();
        if s.seed {
            eprintln!("seeding on {addr}; Ctrl-C to stop");
            self.cancel.cancelled().await;
        } else if let Some(t) = s.seed_time {
            eprintln!("seeding on {addr} for {}; Ctrl-C to stop", humantime::format_duration(t));
            let _ = tokio::time::timeout(t, self.cancel.cancelled()).await;
        } else if let Some(r) = s.seed_ratio {
            // Counted from now: what was uploaded while downloading counts too.
            let target = (fetched as f64 * r) as u64;
            eprintln!("seeding on {addr} until {} uploaded (ratio {r}); Ctrl-C to stop", HumanBytes(target));
            self.until_quiet_or(|uploaded| uploaded >= target, None).await;
        } else if !s.linger.is_zero() && !self.cancel.is_cancelled() {
            eprintln!(
                "staying while others fetch from this peer; leaving after {} without uploads (--linger 0 leaves at once)",
                humantime::format_duration(s.linger)
            );
            self.until_quiet_or(|_| false, Some(s.linger)).await;
        }
    }

    /// Polls the upload counter until `done` says so, nothing was uploaded for `quiet` (when
    /// given), or Ctrl-C.
    async fn until_quiet_or(&self, done: impl Fn(u64) -> bool, quiet: Option<Duration>) {
        let mut last = (self.node.uploaded_bytes(), Instant::now());
        loop {
            let uploaded = self.node.uploaded_bytes();
            if done(uploaded) {
                return;
            }
            if uploaded != last.0 {
                last = (uploaded, Instant::now());
            }
            if quiet.is_some_and(|q| last.1.elapsed() >= q) {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }
}

/// How often seeding and lingering look at the upload counter.
const POLL: Duration = Duration::from_millis(200);

/// Which kind of failure decides a batch's exit code: the one a script most needs to know of.
fn severity(k: ErrorKind) -> u8 {
    match k {
        ErrorKind::Integrity => 5,
        ErrorKind::Timeout => 4,
        ErrorKind::NotFound => 3,
        ErrorKind::Usage => 2,
        ErrorKind::Other => 1,
        ErrorKind::Interrupted => 0,
    }
}

/// What the download arguments ask for; an error for anything that does not parse.
pub(super) fn selectors(names: &[String], roots: &[String], manifest: Option<&Path>) -> anyhow::Result<Vec<Selector>> {
    let mut out = Vec::new();
    for n in names {
        out.push(Selector::parse(n).map_err(usage)?);
    }
    for r in roots {
        out.push(Selector::Root(peer::parse_root(r).map_err(usage)?));
    }
    if let Some(path) = manifest {
        let text = read_manifest(path)?;
        let entries = peer::parse_manifest(&text).map_err(|e| usage(format!("in {}: {e}", path.display())))?;
        out.extend(
            entries.into_iter().map(|(root, name)| Selector::Name { name, root: Some(RootPrefix::exact(&root)) }),
        );
    }
    Ok(out)
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    Failure::new(ErrorKind::Usage, e.to_string()).into()
}

/// Manifests are small text files; one past this is refused rather than read into memory.
const MAX_MANIFEST: u64 = 256 << 20;

pub(super) fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).map_err(|e| usage(format!("cannot open the manifest {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the manifest {} (it must be UTF-8 text)", path.display()))
        .map_err(usage)?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(usage(format!("the manifest {} is over {}", path.display(), HumanBytes(MAX_MANIFEST))));
    }
    Ok(text)
}

/// The one plain name asked for, when that is all: shown and reported as a single file.
fn single(selectors: &[Selector]) -> Option<(&str, Option<RootPrefix>)> {
    match selectors {
        [Selector::Name { name, root }] => Some((name, *root)),
        _ => None,
    }
}
