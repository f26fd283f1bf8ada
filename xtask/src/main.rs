//! Developer tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`):
//! `demo` shows a real swarm transfer; `bench` measures the system beside the machine's limits;
//! `dist` gathers what an operator installs.

mod bench;
mod demo;
mod dist;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Developer tasks for the p2p file distribution system")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The seed's demo: a tracker and peers 1, 2, 3; peers 2 and 3 fetch peer 1's file at once,
    /// then peer 1 fetches peer 2's. Every step and every hash is printed.
    Demo {
        /// Folder for the peers' share folders 1, 2, 3 (default: a temporary folder, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Benchmarks; see docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Release binaries, shell completions, man pages and systemd units in target/dist/.
    Dist,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.task {
        Task::Demo { dir } => demo::run(dir),
        Task::Bench(args) => bench::run(args),
        Task::Dist => dist::run(),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
