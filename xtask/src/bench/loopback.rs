//! `bench swarm-loopback`: one seed and N downloaders (default 8), every one a separate process
//! on this machine's loopback, no rate caps, a 256 MiB file: how fast the swarm moves data when
//! nothing but the two cores limits it, and what it costs in CPU. The data phase runs from the
//! first byte on any downloader's disk to the last verified file. Beside it, in the same run,
//! aria2c with opentracker on the same file when both are installed (target: our data phase no
//! longer than theirs). The runs are in `lab/`.

use std::path::Path;

use super::bittorrent::{self, Torrent};
use super::lab::{self, Client, Env, Lab, Member, Outcome, Scenario, NAME};
use super::netns::{aria2_version, Extras, Family};
use super::util::{file_root, mib_s, write_random_file, Bins, Report, Scratch, MIB};

/// Our data phase may take at most this factor of aria2's.
const VERSUS_TARGET: f64 = 1.0;

/// The data phase: first byte on a downloader's disk to the last verified file, seconds.
fn data_phase(o: &Outcome) -> f64 {
    o.last() - o.first_byte.unwrap_or(0.0)
}

pub(crate) fn run(bins: &Bins, n: usize, size: u64, extras: Extras, dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(n >= 1, "-n must be at least 1");
    let mut r = Report::new(
        "swarm-loopback",
        format!(
            "1 seed + {n} downloaders, {:.0} MiB file, separate processes on loopback, no rate caps",
            size as f64 / MIB
        ),
    );
    let scratch = Scratch::new(dir, "loopback")?;
    let seed_dir = scratch.path().join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    write_random_file(&seed_dir.join(NAME), size, 43)?;
    let root = file_root(&seed_dir.join(NAME))?;
    let bt = if !extras.bittorrent {
        Err("BitTorrent comparison off (--no-bittorrent)".to_owned())
    } else {
        bittorrent::available().map_err(|why| format!("BitTorrent comparison skipped: {why}"))
    };
    let torrent = match bt {
        Ok(()) => Some(Torrent::of_file(&seed_dir.join(NAME), NAME)?),
        Err(_) => None,
    };
    let perf = extras.perf && {
        match lab::perf_works() {
            Ok(()) => true,
            Err(why) => {
                r.note(format!("system calls not counted: {why}"));
                false
            }
        }
    };
    let sc = Scenario {
        size,
        seed_rate: None,
        members: vec![Member { rate: None, late: false, leave_at: None }; n],
        family: Family::V4,
        trackers: 1,
    };
    let lab = Lab {
        bins,
        env: Env::Loopback,
        sc: &sc,
        seed_dir,
        scratch: scratch.path(),
        root,
        perf,
        torrent,
        // Far beyond any working run: 1 MiB/s of aggregate delivery.
        limit: 120.0 + (size * n as u64) as f64 / MIB,
    };
    let ours = lab.run(Client::Ours, "ours", None)?;
    let total = size * n as u64;
    r.row("data phase: first byte to last verified file", data_phase(&ours), "s");
    r.row("aggregate rate over the data phase", mib_s(total, data_phase(&ours)), "MiB/s");
    lab::outcome_rows(&mut r, &ours, None, None);
    match bt {
        Err(why) => r.note(why),
        Ok(()) => match lab.run(Client::Aria2, "bt", None) {
            Ok(bt) => {
                r.row("aria2: data phase", data_phase(&bt), "s");
                r.row("aria2: aggregate rate over the data phase", mib_s(total, data_phase(&bt)), "MiB/s");
                lab::outcome_rows(&mut r, &bt, None, None);
                r.at_most(
                    "ours / aria2: data phase",
                    data_phase(&ours) / data_phase(&bt).max(1e-9),
                    "ratio",
                    VERSUS_TARGET,
                );
                lab::versus_rows(&mut r, &ours, &bt, None, None);
                r.note(format!(
                    "aria2: aria2c {} with opentracker on loopback, {} KiB pieces, one listen port each; done = its \
                     completion hook ran (every piece SHA-1 checked, no fsync)",
                    aria2_version(),
                    bittorrent::PIECE_LEN / 1024
                ));
            }
            Err(e) => r.note(format!("BitTorrent run failed: {e:#}")),
        },
    }
    r.note(
        "first byte (polled every 5 ms): ours, the first chunk stored by any downloader; aria2, the first block in \
         any downloader's file",
    );
    r.note("CPU: user + system seconds of every process over its whole life, read from /proc/PID/stat at exit");
    r.note("our peers: --max-uploads-per-ip lifted, every peer shares 127.0.0.1");
    Ok(r)
}
