//! Command-line parsing, progress display and output formatting for the `peer` binary.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use peer::{DownloadOptions, DownloadReport, HostPort, Node, NodeConfig, Progress, Trackers};
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
    /// List the files the tracker knows.
    List,
    /// Show which peers hold which chunks of a file.
    Locate {
        /// The file's name.
        name: String,
    },
    /// Download a file into the share folder, serving its chunks to others meanwhile.
    Download {
        /// The file's name, as `peer list` shows it.
        name: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Keep serving (seeding) after the download completes, until Ctrl-C.
        #[arg(long)]
        seed: bool,
        /// Give up if chunks are still missing after this many seconds (default: wait for sources).
        #[arg(long, value_name = "SECS")]
        deadline: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// The share folder: its files are served and downloads land in it. Created if missing.
    #[arg(long, short, env = "P2P_SHARE", default_value = "share")]
    share: PathBuf,
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

fn node_config(trackers: TrackerList, a: NodeArgs) -> NodeConfig {
    let mut c = NodeConfig::new(trackers.0[0].clone(), a.share);
    c.trackers = trackers.0;
    c.listen = a.listen;
    c.announce = a.announce;
    c.upload_rate = a.upload_rate;
    c.download_rate = a.download_rate;
    c.download.pipeline = a.pipeline.max(1);
    c.download.max_sources = a.max_sources.max(1);
    c.serve.max_uploads = a.max_uploads.max(1);
    c.serve.max_uploads_per_ip = a.max_uploads_per_ip.max(1);
    c
}

async fn start_node(config: NodeConfig, cancel: &CancellationToken) -> anyhow::Result<Node> {
    std::fs::create_dir_all(&config.share)
        .with_context(|| format!("cannot create share folder {}", config.share.display()))?;
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
        Command::List => {
            let session = trackers(cli.tracker, &cancel).await?;
            let files = session.list_all().await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&files)?);
            } else if files.is_empty() {
                println!("no files");
            } else {
                println!("{:<40} {:>12} {:>8} {:>9}  root", "name", "size", "sources", "complete");
                for f in files {
                    println!(
                        "{:<40} {:>12} {:>8} {:>9}  {}",
                        f.name,
                        HumanBytes(f.length).to_string(),
                        f.sources,
                        f.complete_sources,
                        &f.root.to_string()[..16]
                    );
                }
            }
        }
        Command::Locate { name } => {
            let session = trackers(cli.tracker, &cancel).await?;
            let loc = session.locations(&name).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&loc)?);
            } else {
                println!(
                    "{name}: {} chunks, {} sources ({} listed)",
                    loc.num_chunks,
                    loc.total_sources,
                    loc.sources.len()
                );
                for s in &loc.sources {
                    let held = s.have.to_bitmap(loc.num_chunks).count();
                    println!("  {:<22} {held}/{} chunks", s.addr.to_string(), loc.num_chunks);
                }
                let rarest = loc.availability.iter().min().copied().unwrap_or(0);
                println!("rarest chunk held by {rarest} peer(s)");
            }
        }
        Command::Serve(args) => {
            let node = start_node(node_config(cli.tracker, args), &cancel).await?;
            let files = node.shares().len();
            eprintln!(
                "serving {files} file(s) from {} on {}; Ctrl-C to stop",
                node.store().root().display(),
                node.listen_addr()
            );
            cancel.cancelled().await;
            node.shutdown().await;
            eprintln!("stopped; left the tracker");
        }
        Command::Download { name, node, seed, deadline } => {
            let node = start_node(node_config(cli.tracker, node), &cancel).await?;
            let (tx, rx) = watch::channel(Progress::default());
            let display = tokio::spawn(show_progress(rx, name.clone(), cli.json));
            let opts = DownloadOptions { deadline: deadline.map(Duration::from_secs), progress: Some(tx) };
            let result = node.download(&name, opts).await;
            let _ = display.await;
            match result {
                Ok(report) => print_report(&report, cli.json)?,
                Err(e) => {
                    node.shutdown().await;
                    return Err(e.into());
                }
            }
            if seed && !cancel.is_cancelled() {
                eprintln!("seeding {name} on {}; Ctrl-C to stop", node.listen_addr());
                cancel.cancelled().await;
            }
            node.shutdown().await;
        }
    }
    Ok(())
}

async fn trackers(list: TrackerList, cancel: &CancellationToken) -> anyhow::Result<Trackers> {
    Ok(Trackers::connect(&list.0, Duration::from_secs(10), cancel.child_token()).await?)
}

/// A progress bar on a terminal; plain lines every few seconds otherwise (logs, pipes, CI).
async fn show_progress(mut rx: watch::Receiver<Progress>, name: String, json: bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    let mut last_line = tokio::time::Instant::now();
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let msg = if p.waiting_chunks > 0 {
            format!("{} sources, waiting for sources of {} chunks", p.active_sources, p.waiting_chunks)
        } else {
            format!("{} sources", p.active_sources)
        };
        if tty {
            bar.set_length(p.total);
            bar.set_position(p.bytes_done);
            bar.set_message(msg);
        } else if !json && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = tokio::time::Instant::now();
            eprintln!("{name}: {}/{} ({msg})", HumanBytes(p.bytes_done), HumanBytes(p.total));
        }
    }
    bar.finish_and_clear();
}

fn print_report(r: &DownloadReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    if r.already_complete {
        println!("{} is already complete at {}", r.name, r.path.display());
        return Ok(());
    }
    let rate = r.length as f64 / r.elapsed_secs.max(1e-9);
    println!(
        "downloaded {} ({}) in {:.2}s, {}/s, verified root {}",
        r.name,
        HumanBytes(r.length),
        r.elapsed_secs,
        HumanBytes(rate as u64),
        &r.root[..16]
    );
    if r.resumed_chunks > 0 {
        println!("  resumed {} chunks from an earlier run", r.resumed_chunks);
    }
    for s in &r.sources {
        let dropped = s.dropped.as_deref().map(|d| format!("  DROPPED: {d}")).unwrap_or_default();
        println!(
            "  from {:<22} {:>10} ({} chunks){}{}",
            s.addr.to_string(),
            HumanBytes(s.bytes).to_string(),
            s.chunks,
            if s.bad_chunks > 0 {
                format!(", {} bad chunks ({})", s.bad_chunks, HumanBytes(s.wasted_bytes))
            } else {
                String::new()
            },
            dropped
        );
    }
    if r.refetched_chunks > 0 {
        println!("  re-fetched {} chunks; {} wasted on bad data", r.refetched_chunks, HumanBytes(r.wasted_bytes));
    }
    println!("  saved to {}", r.path.display());
    Ok(())
}
