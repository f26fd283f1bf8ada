//! The `tracker` binary: parses options, wires Ctrl-C and SIGTERM to a graceful shutdown, serves.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use proto::limits;
use tracing_subscriber::EnvFilter;

/// Tracker of the p2p file distribution system: keeps the registry of files, peers and the chunks
/// each peer holds. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=tracker=debug) for more.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where to listen: a port alone (every interface, IPv4 and IPv6: `[::]` dual-stack, or
    /// `0.0.0.0` where the host has no IPv6), or ADDR:PORT, or [V6]:PORT (exactly that address).
    #[arg(long, default_value = "6969", env = "P2P_TRACKER_LISTEN", value_name = "PORT|ADDR:PORT")]
    listen: tracker::ListenAddr,
    /// Keep-alive interval asked of peers, in milliseconds.
    #[arg(long, default_value_t = limits::DEFAULT_KEEPALIVE_MS)]
    keepalive_ms: u64,
    /// A session silent for this long is removed (and its files and chunks with it), in ms.
    /// Also the deadline for any single frame to arrive, and for each write of replies to make
    /// progress (a large reply to a slow client may take longer in all, as long as bytes leave).
    #[arg(long, default_value_t = limits::DEFAULT_SESSION_TIMEOUT_MS)]
    session_timeout_ms: u64,
    /// Deadline for a new connection's handshake, in milliseconds.
    #[arg(long, default_value_t = limits::DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    handshake_timeout_ms: u64,
    /// Maximum concurrent connections; extra ones are told so and closed.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest frame accepted after the handshake, in bytes.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Maximum files in one Register request.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_FILES_PER_REGISTER)]
    max_files_per_register: usize,
    /// Maximum files one session may register.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_FILES_PER_SESSION)]
    max_files_per_session: usize,
    /// Maximum distinct files in the tracker.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_FILES_TOTAL)]
    max_files_total: usize,
    /// Maximum endpoints in one File Locations reply.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_LOCATIONS)]
    max_locations: usize,
    /// Entries per File List page.
    #[arg(long, default_value_t = limits::DEFAULT_LIST_PAGE)]
    list_page: usize,
    /// Budget of metadata bytes one session may hold registered, with units (k, M, G, Ki, Mi,
    /// Gi). Each file held counts its chunk hashes, its encoded File Meta reply and per-chunk
    /// counters (68 bytes a chunk), a bitmap row (1 bit a chunk), its name three times and 320
    /// bytes; past the budget a file is refused with SessionMetaQuota. The default holds about
    /// 3.9 million chunks (14 files of the largest size, 2^18 chunks).
    #[arg(long, default_value = "256MiB", value_parser = proto::units::parse_bytes, value_name = "BYTES")]
    max_meta_bytes_per_session: u64,
    /// Budget of metadata bytes the tracker holds in total (each file's metadata once, plus each
    /// holder's bitmap row), with units; past it a file is refused with GlobalMetaQuota.
    #[arg(long, default_value = "2GiB", value_parser = proto::units::parse_bytes, value_name = "BYTES")]
    max_meta_bytes_total: u64,
    /// Budget of reply bytes queued to clients (encoded, not yet written to their sockets) over
    /// all connections, with units. A reply that would exceed it drops the connections furthest
    /// behind (most bytes unsent); if that cannot make room, the request gets Overloaded.
    #[arg(long, default_value = "256MiB", value_parser = proto::units::parse_bytes, value_name = "BYTES")]
    max_queued_bytes: u64,
    /// Worker threads serving connections (0: one per core; 1: a single-threaded runtime, which
    /// avoids cross-thread wake-ups when the tracker shares a small machine).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Let peers register endpoints on other IPs than the one they connect from (e.g. behind a
    /// proxy). Off: a peer can only announce its own address, never point a swarm at another host.
    #[arg(long)]
    allow_foreign_endpoints: bool,
    /// Serve HTTP at ADDR:PORT: Prometheus metrics (/metrics), health checks (/health, /ready)
    /// and a live page of the swarm (/) with its JSON API (/api/v1/). Off by default; it shows
    /// what any peer may ask (files, peers' endpoints): bind it to loopback or a private address
    /// where that matters.
    #[arg(long, env = "P2P_TRACKER_HTTP", value_name = "ADDR:PORT")]
    http: Option<SocketAddr>,
    /// Log line format on stderr: text for people, json (one object a line) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Read options from this TOML file (keys: the flags' names with `_`, e.g. `max_connections =
    /// 20000`); flags and environment variables override it. Default: the first of
    /// $XDG_CONFIG_HOME/p2p/tracker.toml and /etc/p2p/tracker.toml.
    #[arg(long, env = "P2P_TRACKER_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Print a config file with every option, commented, at its default, and exit.
    #[arg(long)]
    default_config: bool,
    /// Print shell completions for this shell and exit (`cargo xtask dist` uses it).
    #[arg(long, value_name = "SHELL", hide = true)]
    completions: Option<clap_complete::Shell>,
    /// Write the man page tracker.1 into this folder and exit (`cargo xtask dist` uses it).
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<std::path::PathBuf>,
}

/// The config file's keys: every flag but those that are about the file or print and exit.
fn config_file() -> proto::config_file::ConfigFile {
    use clap::CommandFactory;
    let keys = proto::config_file::Key::every_flag(&Args::command(), &["config", "default_config"]);
    proto::config_file::ConfigFile { program: "tracker", env: "P2P_TRACKER_CONFIG", keys }
}

/// The command line, with the config file's values as defaults. Bad arguments end the process
/// as clap does (exit 2).
fn parse() -> Result<Args, proto::config_file::ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = config_file();
    let cmd = match file.find(&args)? {
        Some(path) => file.apply(Args::command(), &path)?,
        None => Args::command(),
    };
    let matches = cmd.get_matches_from(args);
    Ok(Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// `--default-config`, `--completions` and `--man`: printed or written from the flags
/// themselves, then exit.
fn generate(args: &Args) -> Option<anyhow::Result<()>> {
    use clap::CommandFactory;
    if args.default_config {
        print!("{}", config_file().default_config(&Args::command()));
        return Some(Ok(()));
    }
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "tracker", &mut std::io::stdout());
        return Some(Ok(()));
    }
    let dir = args.man.as_ref()?;
    Some((|| {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut page = Vec::new();
        clap_mangen::Man::new(Args::command().name("tracker")).render(&mut page)?;
        let path = dir.join("tracker.1");
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    })())
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tracker: {e}");
            std::process::exit(2);
        }
    };
    if let Some(result) = generate(&args) {
        if let Err(e) = result {
            eprintln!("tracker: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let result = runtime.context("cannot start the runtime").and_then(|rt| rt.block_on(run(args)));
    if let Err(e) = result {
        eprintln!("tracker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = tracker::Config {
        limits: tracker::Limits {
            max_files_per_register: args.max_files_per_register,
            max_files_per_session: args.max_files_per_session,
            max_files_total: args.max_files_total,
            max_locations: args.max_locations,
            list_page: args.list_page,
            // Capped at half the frame limit by `Tracker::start`.
            list_page_bytes: tracker::Limits::default().list_page_bytes,
            allow_foreign_endpoints: args.allow_foreign_endpoints,
            max_meta_bytes_per_session: args.max_meta_bytes_per_session,
            max_meta_bytes_total: args.max_meta_bytes_total,
        },
        max_frame: args.max_frame,
        max_connections: args.max_connections,
        keepalive: Duration::from_millis(args.keepalive_ms),
        session_timeout: Duration::from_millis(args.session_timeout_ms),
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        max_queued_bytes: usize::try_from(args.max_queued_bytes).unwrap_or(usize::MAX),
        summary_interval: tracker::Config::default().summary_interval,
    };
    let listener = args.listen.bind().with_context(|| format!("cannot listen on {}", args.listen))?;
    // Bound before the tracker starts, so a busy port fails the start with nothing served.
    let http = match args.http {
        Some(addr) => Some(tracker::http::bind(addr).await?),
        None => None,
    };
    let mut tracker = tracker::Tracker::start(listener, config);
    eprintln!("tracker listening on {}", tracker.addr());
    if let Some(listener) = http {
        let addr = tracker.serve_http(listener).context("cannot serve HTTP")?;
        eprintln!("tracker HTTP on http://{addr}/ (metrics: /metrics)");
    }
    let token = tracker.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracker.wait().await.context("server failed")
}

/// Resolves at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_library() {
        let args = Args::parse_from(["tracker"]);
        let limits = tracker::Limits::default();
        assert_eq!(args.max_meta_bytes_per_session, limits.max_meta_bytes_per_session);
        assert_eq!(args.max_meta_bytes_total, limits.max_meta_bytes_total);
        assert_eq!(args.max_queued_bytes, tracker::Config::default().max_queued_bytes as u64);
        // Every interface, IPv4 and IPv6, on the protocol's port.
        assert_eq!(args.listen, tracker::ListenAddr::AllInterfaces(6969));
        assert_eq!((args.http, args.log_format), (None, LogFormat::Text), "no HTTP, text logs");
    }

    #[test]
    fn http_takes_an_address_and_log_format_a_choice() {
        let args = Args::try_parse_from(["tracker", "--http", "127.0.0.1:9090", "--log-format", "json"]).unwrap();
        assert_eq!(args.http, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["tracker", "--http", "9090"]).is_err(), "an address, not a port alone");
        assert!(Args::try_parse_from(["tracker", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn a_config_file_sets_any_option_and_bad_ones_name_the_line() {
        use clap::{CommandFactory, FromArgMatches};
        let file = config_file();
        let path = std::path::Path::new("tracker.toml");
        let text = "max_connections = 20000\nhttp = \"127.0.0.1:9090\"\nallow_foreign_endpoints = true\n";
        let cmd = file.apply_text(Args::command(), path, text).unwrap();
        let args = Args::from_arg_matches(&cmd.try_get_matches_from(["tracker", "--max-connections", "7"]).unwrap());
        let args = args.unwrap();
        assert_eq!(args.max_connections, 7, "the flag wins");
        assert_eq!(args.http, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(args.allow_foreign_endpoints);
        let err = file.apply_text(Args::command(), path, "\nmax_meta_bytes_total = \"lots\"\n").unwrap_err();
        assert!(err.to_string().starts_with("tracker.toml:2: max_meta_bytes_total: invalid value 'lots'"), "{err}");
        let err = file.apply_text(Args::command(), path, "keepalive = 5\n").unwrap_err();
        assert!(err.to_string().starts_with("tracker.toml:1: unknown key `keepalive`"), "{err}");
        // The printed default config, uncommented, changes nothing.
        let default = file.default_config(&Args::command());
        let uncommented: String = default
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(" = ") && !l.contains('<'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        assert!(uncommented.contains("max_connections = "), "{default}");
        file.apply_text(Args::command(), path, &uncommented).unwrap();
    }

    #[test]
    fn listen_takes_a_port_or_an_address() {
        let listen = |v: &str| Args::try_parse_from(["tracker", "--listen", v]).map(|a| a.listen);
        assert_eq!(listen("7000").unwrap(), tracker::ListenAddr::AllInterfaces(7000));
        let v6 = "[::1]:7000".parse().unwrap();
        assert_eq!(listen("[::1]:7000").unwrap(), tracker::ListenAddr::Addr(v6));
        let err = listen("localhost").unwrap_err().to_string();
        assert!(err.contains("'localhost' is not a port"), "{err}");
    }
}
