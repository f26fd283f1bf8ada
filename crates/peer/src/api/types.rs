//! The HTTP API's JSON bodies, shared by the server and [`super::ApiClient`]. They are the API's
//! own types, not the downloader's internal ones, so the wire format stays put when those change.
//! Requests refuse unknown fields (a typo is an error, not a silently ignored option); responses
//! accept them, so an older client can read a newer server's answers.

use serde::{Deserialize, Serialize};

/// `POST /v1/downloads`: what to fetch, as `peer download` takes it. At least one of `names`,
/// `roots` and `manifest` must ask for something.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// `NAME`, `NAME@ROOT`, `PREFIX/` or a glob, each as `peer download` takes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Roots (or prefixes of at least 16 hex digits) of files to fetch whatever their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<String>,
    /// A manifest's text: `ROOT  NAME` lines, as `peer manifest` or `b3sum` write them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Files downloading at once (default 4, at most [`super::MAX_PARALLEL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<usize>,
    /// Replace different local files of the same names once the new content is verified.
    #[serde(default)]
    pub replace: bool,
    /// Fail the files still missing chunks this many seconds after the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// What the caller wants served afterwards. Recorded with the download; the node serves
    /// everything it holds for as long as it runs whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedPolicy>,
}

/// How long the caller wants a download served once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum SeedPolicy {
    /// As long as the node runs.
    Forever,
    /// For this many seconds.
    Time {
        /// Seconds.
        secs: u64,
    },
    /// Until this many times its size was uploaded.
    Ratio {
        /// Uploaded bytes over the download's bytes.
        ratio: f64,
    },
    /// Until no peer is downloading from it.
    Linger,
}

/// The answer to `POST /v1/downloads` (202 Accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The download's id, for `GET` and `DELETE /v1/downloads/{id}`.
    pub id: String,
    /// Files resolved (each name once).
    pub files: usize,
}

/// Where a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadState {
    /// Fetching.
    Running,
    /// Every file is here, verified.
    Done,
    /// The batch failed (e.g. not enough disk space), or some files did (see the results).
    Failed,
    /// Cancelled (`DELETE`, or the node or the API stopping); partial downloads are kept.
    Cancelled,
}

impl DownloadState {
    /// Whether the download has ended.
    pub fn is_finished(self) -> bool {
        self != DownloadState::Running
    }
}

/// One download as `GET /v1/downloads` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// Where it is.
    pub state: DownloadState,
    /// Files in the batch.
    pub files: usize,
    /// Files downloaded (or already here).
    pub files_done: usize,
    /// Files that failed.
    pub files_failed: usize,
    /// Bytes of every file whose length is known so far.
    pub bytes_total: u64,
    /// Verified bytes stored.
    pub bytes_done: u64,
    /// Verified bytes stored per second over the last few seconds (0 once finished).
    pub rate_bytes_per_sec: u64,
    /// Sources being downloaded from now, over every file.
    pub sources: usize,
    /// When it started, Unix seconds.
    pub started_at: u64,
    /// When it ended, Unix seconds.
    pub finished_at: Option<u64>,
    /// Seconds since it started (until it ended).
    pub elapsed_secs: f64,
    /// The seeding policy it was started with.
    pub seed: Option<SeedPolicy>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One download in detail: `GET /v1/downloads/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Its totals.
    #[serde(flatten)]
    pub summary: Summary,
    /// The files downloading now, by name.
    #[serde(default)]
    pub active: Vec<ActiveFile>,
    /// Once the batch has ended (and did not fail as a whole): every file's outcome, in the
    /// order resolved.
    #[serde(default)]
    pub results: Option<Vec<FileResult>>,
}

/// A file downloading now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFile {
    /// Its name.
    pub name: String,
    /// Verified bytes stored.
    pub bytes_done: u64,
    /// Its length (0 until known).
    pub bytes_total: u64,
    /// Verified chunks stored.
    pub chunks_done: u32,
    /// Its chunks (0 until known).
    pub chunks_total: u32,
    /// Sources it is downloading from.
    pub sources: usize,
    /// Missing chunks no connected source holds.
    pub waiting_chunks: u32,
}

/// How one file of a finished download ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileResult {
    /// Its name.
    pub name: String,
    /// Whether it is here, verified.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// Its root, hex (when it succeeded).
    pub root: Option<String>,
    /// Its length (when it succeeded).
    pub bytes: Option<u64>,
    /// Bytes fetched in this run.
    pub fetched_bytes: u64,
    /// It was already here.
    pub already_complete: bool,
    /// Seconds it took.
    pub elapsed_secs: f64,
    /// Where its bytes came from, most first.
    #[serde(default)]
    pub sources: Vec<SourceBytes>,
}

/// Bytes from one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBytes {
    /// The source's endpoint.
    pub addr: String,
    /// Verified bytes stored from it.
    pub bytes: u64,
}

/// `GET /v1/downloads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadList {
    /// Running downloads and the most recent finished ones, oldest first.
    pub downloads: Vec<Summary>,
}

/// One file the node serves: `GET /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its root, hex.
    pub root: String,
    /// Whether every chunk is here (otherwise a partial download).
    pub complete: bool,
    /// Chunks held.
    pub chunks_held: u32,
    /// Chunks in the file.
    pub chunks_total: u32,
}

/// `GET /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// By name.
    pub files: Vec<FileEntry>,
}

/// Every error's body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, for programs: `not_found`, `bad_request`, `unauthorized`, ...
    pub code: String,
    /// For people.
    pub message: String,
}
