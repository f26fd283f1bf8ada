//! The downloader's settings, options and reports: what users of the library see of a download.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proto::FileMeta;

use crate::select::RootPrefix;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Downloader settings.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// Most requests in flight per source. The window adapts to each source's rate between 2 and
    /// this, so a fast source saturates the link and a slow one is not handed chunks that faster
    /// peers could deliver sooner.
    pub pipeline: usize,
    /// Sources downloaded from at once.
    pub max_sources: usize,
    /// Connections to one source at once, across every download of the process (several files
    /// downloading from one seed share them).
    pub connections_per_source: usize,
    /// A source with requests outstanding that sends nothing for this long loses its chunks.
    pub stall_timeout: Duration,
    /// Deadline for connecting to a source and its handshake.
    pub connect_timeout: Duration,
    /// How often the tracker is asked for locations during a download.
    pub poll_interval: Duration,
    /// Hash failures of one chunk (across sources) after which the download fails.
    pub max_chunk_failures: u32,
    /// Hash failures after which a source is dropped for this download.
    pub bad_data_strikes: u32,
    /// Read a finished file back and hash it whole before placing it (see
    /// [`chunkstore::Partial::finish_with`]): every chunk was verified before it was written,
    /// so this only catches bytes changed on disk since, for a pass over the file.
    pub read_back: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            pipeline: 8,
            max_sources: 32,
            connections_per_source: 2,
            stall_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            max_chunk_failures: 6,
            bad_data_strikes: 2,
            read_back: false,
        }
    }
}

/// Per-download options.
#[derive(Debug, Default)]
pub struct DownloadOptions {
    /// Give up if chunks are still missing after this long (otherwise wait for sources).
    pub deadline: Option<Duration>,
    /// Receives progress updates.
    pub progress: Option<watch::Sender<Progress>>,
    /// Download only if the tracker's file has this root (or a root with this prefix).
    pub root: Option<RootPrefix>,
    /// Replace a different file of the same name in the share folder (atomically, once the new
    /// one is verified) instead of refusing.
    pub replace: bool,
    /// Give up when no verified chunk has arrived for this long ([`crate::Error::Stalled`]).
    pub stall_timeout: Option<Duration>,
}

/// A progress snapshot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Verified bytes stored.
    pub bytes_done: u64,
    /// Of those, bytes already stored when this run started (a resumed download): not part of
    /// this run's rate.
    pub bytes_resumed: u64,
    /// File length.
    pub total: u64,
    /// Verified chunks stored.
    pub chunks_done: u32,
    /// Chunks in the file.
    pub num_chunks: u32,
    /// Sources being downloaded from.
    pub active_sources: usize,
    /// Missing chunks that no connected source holds (the download waits for them).
    pub waiting_chunks: u32,
}

/// Where a download's data came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// The source's endpoint.
    pub addr: SocketAddr,
    /// Verified bytes stored from it.
    pub bytes: u64,
    /// Verified chunks stored from it.
    pub chunks: u32,
    /// Chunks from it that failed verification.
    pub bad_chunks: u32,
    /// Bytes from it that were not used: chunks that failed verification, and chunks that
    /// arrived after it was dropped for bad data (discarded unverified).
    pub wasted_bytes: u64,
    /// Bytes of valid chunks that arrived after another source's copy (endgame).
    pub duplicate_bytes: u64,
    /// Why it was dropped for this download, if it was.
    pub dropped: Option<String>,
}

/// The outcome of a download.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    /// File name.
    pub name: String,
    /// Root hash, hex.
    pub root: String,
    /// Length in bytes.
    pub length: u64,
    /// Where the file now is.
    pub path: PathBuf,
    /// Wall time.
    pub elapsed_secs: f64,
    /// True when the file was already complete here.
    pub already_complete: bool,
    /// Chunks found on disk from an earlier run.
    pub resumed_chunks: u32,
    /// Chunks fetched in this run.
    pub fetched_chunks: u32,
    /// Chunks fetched more than once because a copy failed verification.
    pub refetched_chunks: u32,
    /// Bytes received that were not used (see [`SourceReport::wasted_bytes`]).
    pub wasted_bytes: u64,
    /// Bytes of valid duplicate copies (endgame).
    pub duplicate_bytes: u64,
    /// Per source, most bytes first.
    pub sources: Vec<SourceReport>,
}

impl DownloadReport {
    /// Verified bytes fetched in this run (not resumed, not already here).
    pub fn fetched_bytes(&self) -> u64 {
        if self.already_complete {
            0
        } else {
            self.sources.iter().map(|s| s.bytes).sum()
        }
    }
}

/// The report of a download of `meta` now at `path`, started at `start`, from what the
/// coordinator recorded: the sources worth showing and the chunks fetched.
pub(crate) fn report(
    meta: &FileMeta,
    path: PathBuf,
    start: Instant,
    already: bool,
    resumed: u32,
    (sources, fetched): (Vec<SourceReport>, u32),
) -> DownloadReport {
    DownloadReport {
        name: meta.name.clone(),
        root: meta.root.to_string(),
        length: meta.length,
        path,
        elapsed_secs: start.elapsed().as_secs_f64(),
        already_complete: already,
        resumed_chunks: resumed,
        fetched_chunks: fetched,
        refetched_chunks: sources.iter().map(|s| s.bad_chunks).sum(),
        wasted_bytes: sources.iter().map(|s| s.wasted_bytes).sum(),
        duplicate_bytes: sources.iter().map(|s| s.duplicate_bytes).sum(),
        sources,
    }
}
