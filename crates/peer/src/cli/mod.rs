//! Command-line parsing, progress display and output formatting for the `peer` binary.

mod config;
mod download;
mod output;
mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use peer::{ErrorKind, HostPort, Node, NodeConfig, Trackers};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Peer of the p2p file distribution system: share a folder, list and locate files, download
/// them from many peers at once (rarest chunk first, every chunk BLAKE3-verified).
///
/// Rates take human units: 500k (500,000 bytes/s), 20MiB (20×1024² bytes/s), 1G. Durations
/// too: 90s, 5m, 1h30m (a plain number is seconds). Logs go to stderr; set RUST_LOG (e.g.
/// RUST_LOG=peer=debug) for more.
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES)]
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
    /// Log lines on stderr as text, or as JSON objects one a line (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
    /// Read options from this TOML file (see `peer default-config`); flags and environment
    /// variables override it. Default: $XDG_CONFIG_HOME/p2p/peer.toml, then /etc/p2p/peer.toml.
    #[arg(long, global = true, env = "P2P_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Threads running the network side (0: one per core). With 1, the default, every connection
    /// is served by one thread, which spares the cross-thread wake-ups that cost a swarm more CPU
    /// than its bytes do; hashing, disk writes and reads run on their own threads either way.
    #[arg(long, global = true, env = "P2P_THREADS", default_value_t = 1, value_name = "N")]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON objects, one a line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Share a folder and keep serving it until Ctrl-C. Prints a line of what it did every
    /// minute (--stats-every) and totals at the end; with --json, JSON lines on stdout.
    Serve {
        #[command(flatten)]
        node: NodeArgs,
        /// How often to print what was served (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration, default_value = "1m", value_name = "DURATION")]
        stats_every: Duration,
        /// Do not watch the share folder: serve what it holds at start only.
        #[arg(long)]
        no_watch: bool,
        /// How long a file must stay unchanged before it is shared (a file still being written
        /// is never shared half-written).
        #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
        settle: Duration,
        /// Serve the local HTTP API (JSON under /v1: start, follow and cancel downloads, list
        /// files) on this address, e.g. 127.0.0.1:7700. Only loopback clients are served unless
        /// --http-token is set.
        #[arg(long, value_name = "IP:PORT")]
        http: Option<SocketAddr>,
        /// The bearer token every API request must carry (then clients on other hosts are
        /// served too).
        #[arg(long, env = "P2P_HTTP_TOKEN", value_name = "TOKEN", hide_env_values = true)]
        http_token: Option<String>,
    },
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
        local: NodeArgs,
        #[command(flatten)]
        fetch: download::FetchArgs,
        /// Ask the node serving its HTTP API at this address (`peer serve --http`) to do the
        /// download, into its own share folder, and show its progress; Ctrl-C cancels it there.
        #[arg(long, value_name = "IP:PORT", conflicts_with_all = ["wait", "stall_timeout"])]
        node: Option<SocketAddr>,
        /// The node's API token, if it has one.
        #[arg(long, env = "P2P_HTTP_TOKEN", value_name = "TOKEN", hide_env_values = true, requires = "node")]
        http_token: Option<String>,
    },
    /// Print a config file with every option, commented, at its default.
    DefaultConfig,
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (peer.1 and one per command) into a folder.
    #[command(hide = true)]
    Man {
        /// The folder.
        dir: PathBuf,
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
    /// Read each finished download back from disk and hash it whole before putting it in place.
    /// Every chunk is verified before it is written either way; this also catches bytes changed
    /// between the write and the placement, for a pass over the file.
    #[arg(long)]
    read_back: bool,
}

/// The exit codes, for `--help` (and README).
const EXIT_CODES: &str = "\
Exit codes:
  0    success (also when the reader of stdout went away, as with `| head`)
  1    failure not listed below (tracker unreachable, disk, a different local file)
  2    usage: bad arguments, name, pattern, root or manifest
  3    not found: no such file, prefix, pattern match or root on the trackers
  4    integrity: every holder of some chunk sent bad data (the partial download is kept)
  5    timeout: --timeout passed, or --stall-timeout without verified data
  130  interrupted (Ctrl-C or SIGTERM; partial downloads are kept)";

/// A failure of a known kind with its own message, for errors that are not a [`peer::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }
}

/// The exit code for a failed run.
fn exit_code(e: &anyhow::Error) -> i32 {
    let kind = e
        .downcast_ref::<peer::Error>()
        .map(peer::Error::kind)
        .or_else(|| e.downcast_ref::<Failure>().map(|f| f.kind))
        .unwrap_or(ErrorKind::Other);
    match kind {
        ErrorKind::Other => 1,
        ErrorKind::Usage => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::Integrity => 4,
        ErrorKind::Timeout => 5,
        ErrorKind::Interrupted => INTERRUPTED,
    }
}

/// The error and its causes on one line, each said once: many errors already include their
/// cause in their own message.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// The command line, with the config file's values as defaults. A bad config file is an error;
/// bad arguments end the process as clap does (usage, exit 2).
fn parse() -> Result<Cli, proto::config_file::ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = config::file();
    let cmd = match file.find(&args)? {
        Some(path) => file.apply(Cli::command(), &path)?,
        None => Cli::command(),
    };
    let matches = cmd.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// Whether the error is stdout's reader having gone away (`peer list | head`).
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Exit code for an interrupted run.
const INTERRUPTED: i32 = 130;

/// Parses a duration: `90s`, `5m`, `1h30m`, `250ms`; a plain number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 90s, 5m or 1h ({e})"))
}

pub(crate) fn main() -> i32 {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("peer: {e}");
            return 2;
        }
    };
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(main_async(cli)),
        Err(e) => {
            eprintln!("peer: cannot start the runtime: {e}");
            1
        }
    }
}

async fn main_async(cli: Cli) -> i32 {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object a line, fields and span included, never colour codes.
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
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
        // Nobody reads what is left to print: end quietly, as `head` expects.
        Err(e) if stdout_closed(&e) => 0,
        Err(e) if cancel.is_cancelled() || matches!(e.downcast_ref::<peer::Error>(), Some(peer::Error::Cancelled)) => {
            eprintln!("peer: interrupted ({e}); partial downloads are kept and resume on the next run");
            INTERRUPTED
        }
        Err(e) => {
            eprintln!("peer: {}", describe(&e));
            exit_code(&e)
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
    c.download.read_back = a.read_back;
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
                return Err(peer::Error::NoMatch(prefix.unwrap_or_default()).into());
            }
            output::write_out(&peer::format_manifest(files.iter().map(|f| (&f.root, f.name.as_str()))))?;
        }
        Command::Locate { name } => {
            let session = trackers(cli.tracker, &cancel).await?;
            let loc = session.locations(&name).await?;
            output::print_locations(&name, &loc, cli.json)?;
        }
        Command::Serve { node, stats_every, no_watch, settle, http, http_token } => {
            let mut config = node_config(cli.tracker, node)?;
            config.watch = !no_watch;
            config.watch_settle = settle;
            let node = Arc::new(start_node(config, &cancel).await?);
            output::print_serving(&node, cli.json)?;
            let api_stop = cancel.child_token();
            let api = match http {
                Some(addr) => Some(remote::serve(node.clone(), addr, http_token, api_stop.clone()).await?),
                None => None,
            };
            let started = tokio::time::Instant::now();
            let mut last = node.upload_stats();
            let mut tick = tokio::time::interval_at(started + stats_every, stats_every.max(Duration::from_millis(100)));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {
                        let now = node.upload_stats();
                        output::print_serve_stats(&node, &last, &now, stats_every, cli.json)?;
                        last = now;
                    }
                }
            }
            let totals = node.upload_stats();
            // The API's downloads stop first (their partials kept); then the node.
            api_stop.cancel();
            if let Some(api) = api {
                let _ = api.await;
            }
            match Arc::try_unwrap(node) {
                Ok(node) => node.shutdown().await,
                // Something still holds it: dropping the last handle stops it all the same.
                Err(node) => drop(node),
            }
            output::print_serve_totals(&totals, started.elapsed(), cli.json)?;
        }
        Command::DefaultConfig => {
            use clap::CommandFactory;
            output::write_out(&config::file().default_config(&Cli::command()))?;
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "peer", &mut buf);
            output::write_out(&String::from_utf8_lossy(&buf))?;
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            write_man_pages(Cli::command(), &dir)?;
        }
        Command::Partials { folders, clean, older_than } => {
            let (share, state) = folders.resolve()?;
            let partials = peer::partials(&share, &state, older_than, clean)?;
            output::print_partials(&partials, clean, cli.json)?;
        }
        Command::Download { names, roots, manifest, local, fetch, node, http_token } => {
            // Everything asked for is understood before anything starts.
            let selectors = download::selectors(&names, &roots, manifest.as_deref())?;
            if let Some(addr) = node {
                let manifest = match &manifest {
                    Some(path) => Some(download::read_manifest(path)?),
                    None => None,
                };
                let request = fetch.request(names, roots, manifest);
                return remote::Remote { addr, token: http_token, request, json: cli.json }.run(&cancel).await;
            }
            let node = start_node(node_config(cli.tracker, local)?, &cancel).await?;
            let result =
                download::Fetch { node: &node, selectors, args: fetch, json: cli.json, cancel: &cancel }.run().await;
            node.shutdown().await;
            result?;
        }
    }
    Ok(())
}

/// `peer.1` and `peer-COMMAND.1` for every visible command.
fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = cmd.name("peer");
    let write = |name: String, page: clap::Command| -> anyhow::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("peer-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name))?;
    }
    write("peer".into(), cmd)
}

async fn trackers(list: TrackerList, cancel: &CancellationToken) -> anyhow::Result<Trackers> {
    Ok(Trackers::connect(&list.0, Duration::from_secs(10), cancel.child_token()).await?)
}
