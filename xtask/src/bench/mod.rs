//! `cargo xtask bench [NAME]`: each benchmark measures the system beside the machine's own limits
//! (or the theoretical optimum) in the same run and prints a table, or JSON with `--json`. With no
//! name, every benchmark runs with its defaults. See docs/BENCHMARKS.md.

mod bittorrent;
mod chunkstore;
mod folder;
mod lab;
mod loopback;
mod netns;
mod procs;
mod scale;
mod single;
mod swarm;
mod tracker_load;
mod util;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use util::{Bins, Report};

const GIB: u64 = 1 << 30;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Folder for the benchmarks' scratch files (default: the system's temporary folder).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Debug, Subcommand)]
enum Which {
    /// Chunk store: hashing and assembly throughput beside raw BLAKE3 and disk writes, peak RSS.
    Chunkstore {
        /// File size in bytes.
        #[arg(long, default_value_t = GIB)]
        size: u64,
    },
    /// One seed, one downloader (separate processes) over loopback, beside the machine's limits.
    Single {
        /// File size in bytes.
        #[arg(long, default_value_t = GIB)]
        size: u64,
    },
    /// One seed and N downloaders in this process, every upload capped, against the optimum.
    Swarm(SwarmArgs),
    /// The swarm as separate processes on network-namespace hosts, egress shaped with tc (root).
    ///
    /// Each tracker, the seed and each downloader is a process on a host of its own (a network
    /// namespace on a bridge); peers find the trackers by host name (`tracker.lab`, or
    /// `tracker1.lab,tracker2.lab,...`). With `--kill-tracker-at`, the swarm runs twice, without
    /// and with the kill, and the ratio of the two times is reported (target <= 1.10).
    SwarmNetns(SwarmNetnsArgs),
    /// Uneven uploads on netns hosts: half the downloaders at a quarter of the others' rate.
    ///
    /// The seed and the even-numbered downloaders upload at --rate, the odd-numbered ones at
    /// --rate / --slow-factor. Against T_min with unequal rates (target <= 1.15); beside aria2c
    /// and opentracker on the same hosts when both are installed.
    Hetero(HeteroArgs),
    /// Churn on netns hosts: a third of the downloaders join late, a quarter leave half-way.
    ///
    /// The last third start when the first downloader has its file; the first quarter are killed
    /// (SIGKILL) once they hold --leave-at of it. Against the fluid bound of the run's own
    /// arrivals and departures (target <= 1.20); beside aria2c when installed.
    Churn(ChurnArgs),
    /// Scale on netns hosts: 32 downloaders at 4 MiB/s each, a 64 MiB file.
    ///
    /// Against T_min (target <= 1.12); beside aria2c when installed.
    N32(N32Args),
    /// 1 seed + N downloaders as separate processes on loopback, uncapped, a 256 MiB file.
    ///
    /// Reports the data phase (first byte on a downloader's disk to the last verified file) and
    /// CPU per GiB, beside aria2c with opentracker in the same run when both are installed
    /// (target: our data phase no longer than theirs).
    SwarmLoopback(LoopbackArgs),
    /// A tracker process under many sessions: requests/s, latency percentiles, memory per peer.
    Tracker(TrackerArgs),
    /// Many downloaders in one process against a few seeds: completion, time, memory.
    Scale(ScaleArgs),
    /// A folder of many files from 2 capped seeds to N downloaders, one batch each, against one
    /// file of the same size in the same run.
    Folder(FolderArgs),
}

/// Options of the folder benchmark.
#[derive(Debug, Clone, Copy, Args)]
struct FolderArgs {
    /// Files in the folder.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Downloaders.
    #[arg(long, short, default_value_t = 4)]
    n: usize,
    /// Upload cap of each of the 2 seeds, bytes per second.
    #[arg(long, default_value_t = 3 << 19)]
    seed_rate: u64,
}

const FOLDER_DEFAULT: FolderArgs = FolderArgs { files: 1000, n: 4, seed_rate: 3 << 19 };

/// Options of the scale benchmark.
#[derive(Debug, Clone, Copy, Args)]
struct ScaleArgs {
    /// Downloaders, all in this process.
    #[arg(long, default_value_t = 200)]
    downloaders: usize,
    /// Seeds.
    #[arg(long, default_value_t = 4)]
    seeds: usize,
    /// File size in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    size: u64,
}

const SCALE_DEFAULT: ScaleArgs = ScaleArgs { downloaders: 200, seeds: 4, size: 8 << 20 };

/// Options of the tracker benchmark.
#[derive(Debug, Clone, Copy, Args)]
struct TrackerArgs {
    /// Peers (sessions) registered.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Files each peer registers.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Chunks per file.
    #[arg(long, default_value_t = 64)]
    chunks: u32,
    /// Sessions issuing requests (the rest only keep alive).
    #[arg(long, short = 'c', default_value_t = 1000)]
    sessions: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

const TRACKER_DEFAULT: TrackerArgs = TrackerArgs { peers: 10_000, files: 100, chunks: 64, sessions: 1000, secs: 10 };

/// Options of the swarm benchmarks.
#[derive(Debug, Clone, Copy, Args)]
struct SwarmArgs {
    /// Downloaders.
    #[arg(long, short, default_value_t = 8)]
    n: usize,
    /// File size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    size: u64,
    /// Upload cap of every peer, bytes per second.
    #[arg(long, default_value_t = 8 << 20)]
    rate: u64,
}

impl SwarmArgs {
    fn setup(self) -> swarm::Setup {
        swarm::Setup { n: self.n, size: self.size, rate: self.rate }
    }
}

const SWARM_DEFAULT: SwarmArgs = SwarmArgs { n: 8, size: 64 << 20, rate: 8 << 20 };

/// What the process-per-peer swarm benchmarks measure besides our swarm.
#[derive(Debug, Clone, Copy, Args)]
struct ExtrasArgs {
    /// Skip the BitTorrent comparison (the same swarm with aria2c and opentracker, run when both
    /// are on PATH: Debian packages aria2 and opentracker).
    #[arg(long)]
    no_bittorrent: bool,
    /// Do not count system calls (perf stat -e raw_syscalls:sys_enter, used when perf works).
    #[arg(long)]
    no_perf: bool,
}

impl ExtrasArgs {
    fn extras(self) -> netns::Extras {
        netns::Extras { bittorrent: !self.no_bittorrent, perf: !self.no_perf }
    }
}

const EXTRAS_DEFAULT: ExtrasArgs = ExtrasArgs { no_bittorrent: false, no_perf: false };

/// Options of `bench hetero`.
#[derive(Debug, Clone, Copy, Args)]
struct HeteroArgs {
    /// Downloaders (the odd-numbered ones slow), file size, and the fast upload rate (the seed's).
    #[command(flatten)]
    swarm: SwarmArgs,
    /// The slow downloaders upload at rate / this.
    #[arg(long, default_value_t = 4)]
    slow_factor: u64,
    /// Addresses of the hosts: v4, v6 or dual.
    #[arg(long, default_value = "v4", value_parser = parse_family, value_name = "v4|v6|dual")]
    family: netns::Family,
    #[command(flatten)]
    extras: ExtrasArgs,
}

const HETERO_DEFAULT: HeteroArgs =
    HeteroArgs { swarm: SWARM_DEFAULT, slow_factor: 4, family: netns::Family::V4, extras: EXTRAS_DEFAULT };

/// Options of `bench churn`.
#[derive(Debug, Clone, Copy, Args)]
struct ChurnArgs {
    /// Downloaders: the last third start late, the first quarter leave.
    #[arg(long, short, default_value_t = 12)]
    n: usize,
    /// File size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    size: u64,
    /// Upload cap of every peer, bytes per second.
    #[arg(long, default_value_t = 8 << 20)]
    rate: u64,
    /// The leavers are killed once they hold this fraction of the file.
    #[arg(long, default_value_t = 0.5)]
    leave_at: f64,
    /// Addresses of the hosts: v4, v6 or dual.
    #[arg(long, default_value = "v4", value_parser = parse_family, value_name = "v4|v6|dual")]
    family: netns::Family,
    #[command(flatten)]
    extras: ExtrasArgs,
}

const CHURN_DEFAULT: ChurnArgs = ChurnArgs {
    n: 12,
    size: 64 << 20,
    rate: 8 << 20,
    leave_at: 0.5,
    family: netns::Family::V4,
    extras: EXTRAS_DEFAULT,
};

/// Options of `bench n32`.
#[derive(Debug, Clone, Copy, Args)]
struct N32Args {
    /// Downloaders.
    #[arg(long, short, default_value_t = 32)]
    n: usize,
    /// File size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    size: u64,
    /// Upload cap of every peer, bytes per second.
    #[arg(long, default_value_t = 4 << 20)]
    rate: u64,
    /// Addresses of the hosts: v4, v6 or dual.
    #[arg(long, default_value = "v4", value_parser = parse_family, value_name = "v4|v6|dual")]
    family: netns::Family,
    #[command(flatten)]
    extras: ExtrasArgs,
}

const N32_DEFAULT: N32Args =
    N32Args { n: 32, size: 64 << 20, rate: 4 << 20, family: netns::Family::V4, extras: EXTRAS_DEFAULT };

/// Options of `bench swarm-loopback`.
#[derive(Debug, Clone, Copy, Args)]
struct LoopbackArgs {
    /// Downloaders.
    #[arg(long, short, default_value_t = 8)]
    n: usize,
    /// File size in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    size: u64,
    #[command(flatten)]
    extras: ExtrasArgs,
}

const LOOPBACK_DEFAULT: LoopbackArgs = LoopbackArgs { n: 8, size: 256 << 20, extras: EXTRAS_DEFAULT };

/// Options of the swarm-netns benchmark: the swarm's, and the network's.
#[derive(Debug, Clone, Copy, Args)]
struct SwarmNetnsArgs {
    #[command(flatten)]
    swarm: SwarmArgs,
    #[command(flatten)]
    extras: ExtrasArgs,
    /// Addresses of the hosts: v4 (10.77.0.0/16), v6 (fd00:77::/64 only, no IPv4 address) or
    /// dual (both).
    #[arg(long, default_value = "v4", value_parser = parse_family, value_name = "v4|v6|dual")]
    family: netns::Family,
    /// Trackers, each on its own host; every peer is given all of them, and each file has its
    /// own tracker (rendezvous hashing over the list).
    #[arg(long, default_value_t = 1)]
    trackers: usize,
    /// Kill (SIGKILL) the tracker responsible for the file at this fraction of T_min after the
    /// downloads start (needs --trackers 2 or more). The swarm then runs twice, without and
    /// with the kill, and the report compares the times (target: at most 1.10 times longer).
    #[arg(long, value_name = "F")]
    kill_tracker_at: Option<f64>,
}

fn parse_family(s: &str) -> Result<netns::Family, String> {
    s.parse()
}

impl SwarmNetnsArgs {
    fn setup(self) -> netns::NetnsSetup {
        netns::NetnsSetup {
            swarm: self.swarm.setup(),
            family: self.family,
            trackers: self.trackers,
            kill_at: self.kill_tracker_at,
        }
    }
}

const SWARM_NETNS_DEFAULT: SwarmNetnsArgs = SwarmNetnsArgs {
    swarm: SWARM_DEFAULT,
    extras: EXTRAS_DEFAULT,
    family: netns::Family::V4,
    trackers: 1,
    kill_tracker_at: None,
};

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    util::install_interrupt_handler();
    let dir = args.dir.unwrap_or_else(std::env::temp_dir);
    let which: Vec<Which> = match args.which {
        Some(w) => vec![w],
        None => vec![
            Which::Chunkstore { size: GIB },
            Which::Single { size: GIB },
            Which::Swarm(SWARM_DEFAULT),
            Which::SwarmNetns(SWARM_NETNS_DEFAULT),
            Which::Hetero(HETERO_DEFAULT),
            Which::Churn(CHURN_DEFAULT),
            Which::N32(N32_DEFAULT),
            Which::SwarmLoopback(LOOPBACK_DEFAULT),
            Which::Tracker(TRACKER_DEFAULT),
            Which::Scale(SCALE_DEFAULT),
            Which::Folder(FOLDER_DEFAULT),
        ],
    };
    let mut bins = None;
    let mut bins = || -> anyhow::Result<Bins> {
        if bins.is_none() {
            bins = Some(Bins::build()?);
        }
        bins.clone().ok_or_else(|| anyhow::anyhow!("binaries not built"))
    };
    let mut reports: Vec<Report> = Vec::new();
    for w in which {
        let report = match w {
            Which::Chunkstore { size } => chunkstore::run(size, &dir)?,
            Which::Single { size } => single::run(&bins()?, size, &dir)?,
            Which::Swarm(a) => swarm::run(a.setup(), &dir)?,
            Which::SwarmNetns(a) => netns::run(&bins()?, a.setup(), a.extras.extras(), &dir)?,
            Which::Hetero(a) => {
                netns::hetero(&bins()?, a.swarm.setup(), a.slow_factor, a.family, a.extras.extras(), &dir)?
            }
            Which::Churn(a) => netns::churn(
                &bins()?,
                swarm::Setup { n: a.n, size: a.size, rate: a.rate },
                a.leave_at,
                a.family,
                a.extras.extras(),
                &dir,
            )?,
            Which::N32(a) => netns::n32(
                &bins()?,
                swarm::Setup { n: a.n, size: a.size, rate: a.rate },
                a.family,
                a.extras.extras(),
                &dir,
            )?,
            Which::SwarmLoopback(a) => loopback::run(&bins()?, a.n, a.size, a.extras.extras(), &dir)?,
            Which::Scale(a) => scale::run(
                &bins()?,
                scale::Setup { downloaders: a.downloaders, seeds: a.seeds.max(1), size: a.size },
                &dir,
            )?,
            Which::Folder(a) => folder::run(
                folder::Setup { files: a.files.max(1), n: a.n.max(1), seed_rate: a.seed_rate.max(1) },
                &dir,
            )?,
            Which::Tracker(a) => tracker_load::run(
                &bins()?,
                tracker_load::Setup {
                    peers: a.peers,
                    files: a.files,
                    chunks: a.chunks,
                    active: a.sessions.min(a.peers),
                    secs: a.secs,
                },
            )?,
        };
        if !args.json {
            println!("{report}");
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    let missed: Vec<&str> = reports.iter().filter(|r| !r.targets_met()).map(|r| r.bench.as_str()).collect();
    if !missed.is_empty() {
        eprintln!("targets missed in: {}", missed.join(", "));
    }
    Ok(())
}
