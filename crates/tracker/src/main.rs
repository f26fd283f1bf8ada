//! The `tracker` binary: parses options, wires Ctrl-C and SIGTERM to a graceful shutdown, serves.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
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
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
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
    let tracker = tracker::Tracker::start(listener, config);
    eprintln!("tracker listening on {}", tracker.addr());
    let token = tracker.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracker.wait().await.context("server failed")
}

/// A byte count with an optional unit: `1500`, `500k` (500,000), `256MiB` (256 x 1024^2), `2G`.
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
