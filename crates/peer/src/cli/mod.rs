//! Command-line parsing, progress display and output formatting for the `peer` binary.

mod output;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::HumanBytes;
use peer::{
    BatchOptions, BatchProgress, DownloadOptions, HostPort, Node, NodeConfig, Progress, RootPrefix, Selector, Trackers,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Peer of the p2p file distribution system: share a folder, list and locate files, download
/// them from many peers at once (rarest chunk first, every chunk BLAKE3-verified).
///
/// Rates take human units: 500k (500,000 bytes/s), 20MiB (20×1024² bytes/s), 1G.
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=peer=debug) for more.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The tracker, HOST[:PORT] (default port 6969): a name or an IP ([IPv6] in brackets with a
    /// port), resolved again at every reconnect. Several, comma-separated, share the files
    /// between them (every peer must be given the same list).
    #[arg(
        long,
        global = true,
        env = "P2P_TRACKER",
        default_value = "127.0.0.1",
        value_parser = parse_tracker_list,
        value_name = "HOST[:PORT],..."
    )]
    tracker: TrackerList,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Share a folder and keep serving it until Ctrl-C.
    Serve(NodeArgs),
    /// List the files the trackers know.
    List {
        /// Only names starting with this (e.g. a folder: data/imagenet/).
        prefix: Option<String>,
    },
    /// Show which peers hold which chunks of a file.
    Locate {
        /// The file's name.
        name: String,
    },
    /// Print a manifest of the files the trackers list under a prefix: `ROOT  NAME` lines, as
    /// b3sum prints them, to pin a data set's version (`peer download --manifest FILE`) or check
    /// a copy (`b3sum --check FILE` in the share folder).
    Manifest {
        /// Only names starting with this (every file when omitted).
        prefix: Option<String>,
    },
    /// Download files into the share folder, serving their chunks to others meanwhile.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["names", "roots", "manifest"])))]
    Download {
        /// What to download: NAME as `peer list` shows it; NAME@ROOT (only if its content has
        /// that root: 64 hex digits, or a prefix of at least 16); a folder prefix ending in `/`
        /// (every file under it); or a glob in quotes ('models/*.safetensors'; `*` stays within
        /// a folder, `**` crosses folders).
        #[arg(value_name = "NAME|NAME@ROOT|PREFIX/|GLOB")]
        names: Vec<String>,
        /// A file by its root hash (64 hex digits, or a unique prefix of at least 16), whatever
        /// its name. May be given several times.
        #[arg(long = "root", value_name = "HEX")]
        roots: Vec<String>,
        /// Download exactly the contents a manifest lists (`ROOT  NAME` lines, from `peer
        /// manifest` or b3sum).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        /// Keep serving (seeding) after the download completes, until Ctrl-C.
        #[arg(long)]
        seed: bool,
        /// Give up if chunks are still missing after this many seconds (default: wait for sources).
        #[arg(long, value_name = "SECS")]
        deadline: Option<u64>,
        /// Files downloading at once.
        #[arg(long, default_value_t = 4, value_name = "N")]
        parallel: usize,
        /// Replace a different local file of the same name, atomically, once the new content is
        /// verified (otherwise such a file is an error).
        #[arg(long)]
        replace: bool,
    },
    /// List partial downloads of the share folder (name, root, progress, age, size), or remove
    /// them.
    Partials {
        #[command(flatten)]
        folders: FolderArgs,
        /// Remove the partial downloads listed (with --older-than, only those untouched for that
        /// long).
        #[arg(long)]
        clean: bool,
        /// Only partial downloads untouched for this long, e.g. 90s, 12h, 7d.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        older_than: Option<Duration>,
    },
}

/// The share folder and where its state lives.
#[derive(Debug, Args)]
struct FolderArgs {
    /// The share folder: its files are served and downloads land in it. Created if missing.
    #[arg(long, short, env = "P2P_SHARE", default_value = "share")]
    share: PathBuf,
    /// Where the share's serving state (the hash cache) lives, so serving writes nothing in the
    /// share. Default: $XDG_STATE_HOME/p2p/ (or ~/.local/state/p2p/), in a folder named after
    /// the share and a hash of its absolute path.
    #[arg(long, env = "P2P_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

impl FolderArgs {
    /// The share folder (created if missing, so its path can be made absolute) and its state
    /// folder.
    fn resolve(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        if std::fs::metadata(&self.share).is_ok_and(|m| !m.is_dir()) {
            anyhow::bail!("the share folder {} is a file", self.share.display());
        }
        std::fs::create_dir_all(&self.share)
            .with_context(|| format!("cannot create the share folder {}", self.share.display()))?;
        let share = std::fs::canonicalize(&self.share)
            .with_context(|| format!("cannot resolve the share folder {}", self.share.display()))?;
        let state = match &self.state_dir {
            Some(s) => s.clone(),
            None => peer::default_state_dir(&share).context("no state directory: set --state-dir or HOME")?,
        };
        Ok((share, state))
    }
}

#[derive(Debug, Args)]
struct NodeArgs {
    #[command(flatten)]
    folders: FolderArgs,
    /// Where to accept other peers: PORT (every interface, IPv4 and IPv6), IP:PORT or
    /// [IPv6]:PORT; port 0 picks a free one.
    #[arg(long, default_value = "0", value_parser = peer::parse_listen, value_name = "[IP:]PORT")]
    listen: SocketAddr,
    /// The endpoint other peers should use, HOST[:PORT] (port forwarding, several interfaces;
    /// the port defaults to the listener's). The tracker accepts it only on the IP this peer
    /// connects from, unless it runs with --allow-foreign-endpoints.
    #[arg(long, value_parser = parse_announce, value_name = "HOST[:PORT]")]
    announce: Option<HostPort>,
    /// Cap on upload rate for the whole process, bytes/s with units (e.g. 20MiB).
    #[arg(long, value_parser = peer::parse_bytes, value_name = "RATE")]
    upload_rate: Option<u64>,
    /// Cap on download rate for the whole process, bytes/s with units (e.g. 500k).
    #[arg(long, value_parser = peer::parse_bytes, value_name = "RATE")]
    download_rate: Option<u64>,
    /// Most requests kept in flight per source (the window adapts to each source's rate, from 2
    /// up to this).
    #[arg(long, default_value_t = 8)]
    pipeline: usize,
    /// Most sources downloaded from at once.
    #[arg(long, default_value_t = 32)]
    max_sources: usize,
    /// Most downloaders served at once.
    #[arg(long, default_value_t = 256)]
    max_uploads: usize,
    /// Most downloaders served at once from one IP address, so one host cannot take every slot.
    #[arg(long, default_value_t = 4)]
    max_uploads_per_ip: usize,
}

/// Exit code for an interrupted run.
const INTERRUPTED: i32 = 130;

pub(crate) async fn main() -> i32 {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            cancel.cancel();
        }
    });
    match run(cli, cancel.clone()).await {
        Ok(()) => 0,
        Err(e) if cancel.is_cancelled() || matches!(e.downcast_ref::<peer::Error>(), Some(peer::Error::Cancelled)) => {
            eprintln!("peer: interrupted ({e}); partial downloads are kept and resume on the next run");
            INTERRUPTED
        }
        Err(e) => {
            eprintln!("peer: {e:#}");
            1
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn parse_announce(s: &str) -> Result<HostPort, peer::AddrError> {
    HostPort::parse(s, 0)
}

/// The `--tracker` list.
#[derive(Debug, Clone)]
struct TrackerList(Vec<HostPort>);

fn parse_tracker_list(s: &str) -> Result<TrackerList, peer::AddrError> {
    peer::parse_trackers(s).map(TrackerList)
}

fn node_config(trackers: TrackerList, a: NodeArgs) -> anyhow::Result<NodeConfig> {
    let (share, state) = a.folders.resolve()?;
    let mut c = NodeConfig::new(trackers.0[0].clone(), share);
    c.state_dir = Some(state);
    c.trackers = trackers.0;
    c.listen = a.listen;
    c.announce = a.announce;
    c.upload_rate = a.upload_rate;
    c.download_rate = a.download_rate;
    c.download.pipeline = a.pipeline.max(1);
    c.download.max_sources = a.max_sources.max(1);
    c.serve.max_uploads = a.max_uploads.max(1);
    c.serve.max_uploads_per_ip = a.max_uploads_per_ip.max(1);
    Ok(c)
}

async fn start_node(config: NodeConfig, cancel: &CancellationToken) -> anyhow::Result<Node> {
    let node = Node::start(config).await?;
    // Ctrl-C cancels the node: downloads stop, the tracker is told Leave.
    let token = node.shutdown_token();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        token.cancel();
    });
    Ok(node)
}

async fn run(cli: Cli, cancel: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::List { prefix } => {
            let session = trackers(cli.tracker, &cancel).await?;
            let mut files = session.list_all().await?;
            files.retain(|f| prefix.as_deref().is_none_or(|p| f.name.starts_with(p)));
            output::print_list(&files, cli.json)?;
        }
        Command::Manifest { prefix } => {
            let session = trackers(cli.tracker, &cancel).await?;
            let mut files = session.list_all().await?;
            files.retain(|f| prefix.as_deref().is_none_or(|p| f.name.starts_with(p)));
            if files.is_empty() {
                anyhow::bail!("no file on the tracker starts with {:?}", prefix.unwrap_or_default());
            }
            print!("{}", peer::format_manifest(files.iter().map(|f| (&f.root, f.name.as_str()))));
        }
        Command::Locate { name } => {
            let session = trackers(cli.tracker, &cancel).await?;
            let loc = session.locations(&name).await?;
            output::print_locations(&name, &loc, cli.json)?;
        }
        Command::Serve(args) => {
            let node = start_node(node_config(cli.tracker, args)?, &cancel).await?;
            output::print_serving(&node);
            cancel.cancelled().await;
            node.shutdown().await;
            eprintln!("stopped; left the tracker");
        }
        Command::Partials { folders, clean, older_than } => {
            let (share, state) = folders.resolve()?;
            let partials = peer::partials(&share, &state, older_than, clean)?;
            output::print_partials(&partials, clean, cli.json)?;
        }
        Command::Download { names, roots, manifest, node, seed, deadline, parallel, replace } => {
            // Everything asked for is understood before anything starts.
            let selectors = selectors(&names, &roots, manifest.as_deref())?;
            let node = start_node(node_config(cli.tracker, node)?, &cancel).await?;
            let deadline = deadline.map(Duration::from_secs);
            let result = match single(&selectors) {
                Some((name, root)) => download_one(&node, name, root, deadline, replace, cli.json).await,
                None => download_many(&node, &selectors, deadline, parallel, replace, cli.json).await,
            };
            if let Err(e) = result {
                node.shutdown().await;
                return Err(e);
            }
            if seed && !cancel.is_cancelled() {
                eprintln!("seeding on {}; Ctrl-C to stop", node.listen_addr());
                cancel.cancelled().await;
            }
            node.shutdown().await;
        }
    }
    Ok(())
}

/// What the download arguments ask for; an error for anything that does not parse.
fn selectors(names: &[String], roots: &[String], manifest: Option<&Path>) -> anyhow::Result<Vec<Selector>> {
    let mut out = Vec::new();
    for n in names {
        out.push(Selector::parse(n)?);
    }
    for r in roots {
        out.push(Selector::Root(peer::parse_root(r)?));
    }
    if let Some(path) = manifest {
        let text = read_manifest(path)?;
        let entries = peer::parse_manifest(&text).with_context(|| format!("in {}", path.display()))?;
        out.extend(
            entries.into_iter().map(|(root, name)| Selector::Name { name, root: Some(RootPrefix::exact(&root)) }),
        );
    }
    Ok(out)
}

/// Manifests are small text files; one past this is refused rather than read into memory.
const MAX_MANIFEST: u64 = 256 << 20;

fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the manifest {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the manifest {} (it must be UTF-8 text)", path.display()))?;
    if text.len() as u64 > MAX_MANIFEST {
        anyhow::bail!("the manifest {} is over {}", path.display(), HumanBytes(MAX_MANIFEST));
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

async fn download_one(
    node: &Node,
    name: &str,
    root: Option<RootPrefix>,
    deadline: Option<Duration>,
    replace: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(Progress::default());
    let display = tokio::spawn(output::show_progress(rx, name.to_owned(), json));
    let opts = DownloadOptions { deadline, progress: Some(tx), root, replace };
    let result = node.download(name, opts).await;
    let _ = display.await;
    output::print_report(&result?, json)
}

async fn download_many(
    node: &Node,
    selectors: &[Selector],
    deadline: Option<Duration>,
    parallel: usize,
    replace: bool,
    json: bool,
) -> anyhow::Result<()> {
    let targets = peer::resolve(node.trackers(), selectors).await?;
    let (tx, rx) = watch::channel(BatchProgress::default());
    let display = tokio::spawn(output::show_batch_progress(rx, json));
    let opts = BatchOptions { parallel, deadline, replace, progress: Some(tx) };
    let result = node.download_all(targets, opts).await;
    let _ = display.await;
    let report = result?;
    output::print_batch(&report, json)?;
    if report.failed > 0 {
        anyhow::bail!("{} of {} files failed", report.failed, report.files.len());
    }
    Ok(())
}

async fn trackers(list: TrackerList, cancel: &CancellationToken) -> anyhow::Result<Trackers> {
    Ok(Trackers::connect(&list.0, Duration::from_secs(10), cancel.child_token()).await?)
}
