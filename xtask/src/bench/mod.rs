//! `cargo xtask bench [NAME]`: each benchmark measures the system beside the machine's own limits
//! in the same run and prints a table (or JSON with `--json`). See docs/BENCHMARKS.md.

mod chunkstore;

use clap::{Args, Subcommand};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Chunk store: hashing and assembly throughput beside raw BLAKE3 and disk writes, peak RSS.
    Chunkstore {
        /// File size in bytes.
        #[arg(long, default_value_t = 1 << 30)]
        size: u64,
    },
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let which = args.which.unwrap_or(Which::Chunkstore { size: 1 << 30 });
    match which {
        Which::Chunkstore { size } => {
            let report = chunkstore::run(size, &std::env::temp_dir())?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
        }
    }
    Ok(())
}
