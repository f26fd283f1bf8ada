//! Many files in one download: what was asked for (names, prefixes, globs, roots, a manifest) is
//! resolved against the trackers into files, then fetched a bounded number at a time under the
//! process's budgets (its rate caps, and connections per source shared across files, see
//! `download/budget.rs`), each file rarest-first as a single download is. The node serves every
//! file it has while the others download.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use proto::tracker::FileSummary;
use rand::seq::SliceRandom;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::download::{self, Context, DownloadOptions, DownloadReport, Progress};
use crate::error::{Error, ErrorKind};
use crate::select::{RootPrefix, Selector};
use crate::shares::Shared;
use crate::task::TaskGroup;
use crate::trackers::Trackers;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// The root its content must have, when pinned (`NAME@ROOT`, a manifest, or the root seen in
    /// the tracker's list, so a file replaced meanwhile is noticed).
    pub root: Option<RootPrefix>,
    /// Its length, when the tracker's list said.
    pub length: Option<u64>,
}

/// Options of a batch.
#[derive(Debug)]
pub struct BatchOptions {
    /// Files downloading at once (at least 1).
    pub parallel: usize,
    /// Give up on files still missing chunks after this long from the start of the batch.
    pub deadline: Option<Duration>,
    /// Replace different local files of the same names.
    pub replace: bool,
    /// A file that receives no verified chunk for this long fails ([`Error::Stalled`]).
    pub stall_timeout: Option<Duration>,
    /// Receives progress updates.
    pub progress: Option<watch::Sender<BatchProgress>>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { parallel: 4, deadline: None, replace: false, stall_timeout: None, progress: None }
    }
}

/// A batch's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchProgress {
    /// Files in the batch.
    pub files: usize,
    /// Files finished (downloaded or already here).
    pub files_done: usize,
    /// Files that failed.
    pub files_failed: usize,
    /// Verified bytes stored, over every file.
    pub bytes_done: u64,
    /// Bytes of every file whose length is known so far.
    pub bytes_total: u64,
    /// Of `bytes_done`, those fetched in this run (not resumed, not already here): what a rate
    /// is computed from.
    pub bytes_fetched: u64,
    /// The files downloading now, by name.
    pub active: BTreeMap<String, Progress>,
    /// Bytes of the files finished.
    #[serde(skip)]
    finished_bytes: u64,
    /// Bytes of the files finished that were fetched in this run.
    #[serde(skip)]
    finished_fetched: u64,
    /// Each file's length, where known.
    #[serde(skip)]
    lengths: HashMap<String, u64>,
}

/// How one file of a batch ended.
#[derive(Debug, Clone, Serialize)]
pub struct FileOutcome {
    /// The file.
    pub name: String,
    /// Its report, when it was downloaded (or already here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<DownloadReport>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

/// The outcome of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// Per file, in the order resolved (by name within a prefix or pattern).
    pub files: Vec<FileOutcome>,
    /// Files downloaded or already here.
    pub succeeded: usize,
    /// Files that failed.
    pub failed: usize,
    /// Bytes of the files that succeeded.
    pub bytes: u64,
    /// Bytes fetched in this run (not resumed, not already here).
    pub fetched_bytes: u64,
    /// Wall time.
    pub elapsed_secs: f64,
}

/// Resolves what was asked for into files, in order, each once. A prefix or pattern that matches
/// nothing, a root that matches nothing or several files, and one name pinned to two roots are
/// errors: nothing is fetched unless everything asked for is understood.
pub async fn resolve(trackers: &Trackers, selectors: &[Selector]) -> Result<Vec<Target>, Error> {
    let needs_list = selectors.iter().any(|s| matches!(s, Selector::Prefix(_) | Selector::Glob(_)));
    let list: Vec<FileSummary> = if needs_list { trackers.list_all().await? } else { Vec::new() };
    let mut out: Vec<Target> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |t: Target| -> Result<(), Error> {
        match index.get(&t.name) {
            Some(&i) => match (&out[i].root, &t.root) {
                (Some(a), Some(b)) if !a.overlaps(b) => {
                    Err(Error::ConflictingRoots { name: t.name, first: a.to_string(), second: b.to_string() })
                }
                _ => Ok(()),
            },
            None => {
                index.insert(t.name.clone(), out.len());
                out.push(t);
                Ok(())
            }
        }
    };
    for s in selectors {
        match s {
            Selector::Name { name, root } => add(Target { name: name.clone(), root: *root, length: None })?,
            Selector::Prefix(_) | Selector::Glob(_) => {
                let mut any = false;
                for f in list.iter().filter(|f| s.matches_name(&f.name)) {
                    any = true;
                    add(listed(f))?;
                }
                if !any {
                    return Err(Error::NoMatch(s.to_string()));
                }
            }
            Selector::Root(prefix) => add(find_root(trackers, prefix).await?)?,
        }
    }
    Ok(out)
}

fn listed(f: &FileSummary) -> Target {
    Target { name: f.name.clone(), root: Some(RootPrefix::exact(&f.root)), length: Some(f.length) }
}

/// The one file whose root has this prefix.
async fn find_root(trackers: &Trackers, prefix: &RootPrefix) -> Result<Target, Error> {
    let mut found = trackers.find_root(&prefix.to_string()).await?;
    // The tracker's answer is checked, not trusted: only files whose root has the prefix count.
    found.retain(|f| prefix.matches(&f.root));
    match found.as_slice() {
        [] => Err(Error::RootNotFound(prefix.to_string())),
        [one] => Ok(listed(one)),
        many => Err(Error::AmbiguousRoot {
            root: prefix.to_string(),
            matches: many.iter().map(|f| format!("{}@{}", f.name, &f.root.to_string()[..16])).collect(),
        }),
    }
}

/// Fetches `targets`, `opts.parallel` at a time. A file that fails does not stop the others; the
/// batch stops early only when cancelled. Before anything is fetched, the space the files of
/// known length still need is checked against the share's free space.
pub(crate) async fn run(
    ctx: &Context,
    targets: Vec<Target>,
    opts: BatchOptions,
    tasks: &TaskGroup,
) -> Result<BatchReport, Error> {
    let start = Instant::now();
    check_space(ctx, &targets).await?;
    let progress = opts.progress.unwrap_or_else(|| watch::channel(BatchProgress::default()).0);
    progress.send_replace(BatchProgress::new(&targets));
    let mut outcomes: Vec<Option<FileOutcome>> = vec![None; targets.len()];
    // Each downloader takes the files in its own random order: downloaders starting together
    // then fetch different files first and trade them afterwards, rather than all asking the
    // seeds for the same small files at once (the folder-level form of rarest-first).
    let mut queue: Vec<(usize, Target)> = targets.into_iter().enumerate().collect();
    queue.shuffle(&mut rand::rng());
    let mut queue = queue.into_iter();
    let mut running = FuturesUnordered::new();
    let parallel = opts.parallel.max(1);
    loop {
        while running.len() < parallel {
            let Some((i, t)) = queue.next() else { break };
            let per_file = DownloadOptions {
                deadline: opts.deadline.map(|d| d.saturating_sub(start.elapsed())),
                progress: None,
                root: t.root,
                replace: opts.replace,
                stall_timeout: opts.stall_timeout,
            };
            running.push(one(ctx, i, t, per_file, tasks.child(), progress.clone()));
        }
        let Some((i, name, result)) = running.next().await else { break };
        if matches!(result, Err(Error::Cancelled)) {
            return Err(Error::Cancelled);
        }
        progress.send_modify(|b| b.file_finished(&name, &result));
        outcomes[i] = Some(match result {
            Ok(report) => FileOutcome { name, report: Some(report), error: None, error_kind: None },
            Err(e) => FileOutcome { name, report: None, error_kind: Some(e.kind()), error: Some(e.to_string()) },
        });
    }
    let files: Vec<FileOutcome> = outcomes.into_iter().flatten().collect();
    let ok = files.iter().filter_map(|f| f.report.as_ref());
    Ok(BatchReport {
        succeeded: ok.clone().count(),
        failed: files.iter().filter(|f| f.error.is_some()).count(),
        bytes: ok.clone().map(|r| r.length).sum(),
        fetched_bytes: ok.map(DownloadReport::fetched_bytes).sum(),
        elapsed_secs: start.elapsed().as_secs_f64(),
        files,
    })
}

/// Fails with [`Error::NoSpace`] when the files of known length need more than the share's
/// file system has free: at once, rather than after minutes of downloading. (Each download also
/// reserves its own space as it starts, which covers the files of unknown length.)
async fn check_space(ctx: &Context, targets: &[Target]) -> Result<(), Error> {
    let still_needed = |t: &Target| -> u64 {
        let Some(len) = t.length else { return 0 };
        let same = |root: &proto::Hash| t.root.as_ref().is_some_and(|r| r.matches(root));
        match ctx.shares.get(&t.name) {
            Some(Shared::Complete(m)) if same(&m.root) => 0,
            // A partial's space may be reserved already, and counts as used: its own reservation
            // (of its holes only) decides.
            Some(Shared::Partial { partial, .. }) if same(&partial.meta().root) => 0,
            _ => len,
        }
    };
    let needed: u64 = targets.iter().map(still_needed).sum();
    if needed == 0 {
        return Ok(());
    }
    let store = ctx.store.clone();
    let free = tokio::task::spawn_blocking(move || store.free_space())
        .await
        .map_err(|e| Error::Io { action: "check free disk space", source: std::io::Error::other(e) })??;
    if needed > free {
        return Err(Error::NoSpace { path: ctx.store.root().to_owned(), needed, free });
    }
    Ok(())
}

/// One file of the batch, its progress forwarded to the batch's.
async fn one(
    ctx: &Context,
    i: usize,
    t: Target,
    mut opts: DownloadOptions,
    tasks: TaskGroup,
    batch: watch::Sender<BatchProgress>,
) -> (usize, String, Result<DownloadReport, Error>) {
    let (tx, mut rx) = watch::channel(Progress::default());
    opts.progress = Some(tx);
    let result = {
        let dl = download::download(ctx, &t.name, opts, tasks);
        tokio::pin!(dl);
        loop {
            tokio::select! {
                r = &mut dl => break r,
                Ok(()) = rx.changed() => {
                    let p = rx.borrow_and_update().clone();
                    batch.send_modify(|b| b.file_progress(&t.name, p));
                }
            }
        }
    };
    (i, t.name, result)
}

impl BatchProgress {
    fn new(targets: &[Target]) -> BatchProgress {
        let lengths: HashMap<String, u64> = targets.iter().filter_map(|t| Some((t.name.clone(), t.length?))).collect();
        let mut b = BatchProgress { files: targets.len(), lengths, ..BatchProgress::default() };
        b.recount();
        b
    }

    fn file_progress(&mut self, name: &str, p: Progress) {
        // A file whose length was not listed counts once its download knows it.
        if p.total > 0 || p.num_chunks > 0 {
            self.lengths.insert(name.to_owned(), p.total);
        }
        self.active.insert(name.to_owned(), p);
        self.recount();
    }

    fn file_finished(&mut self, name: &str, result: &Result<DownloadReport, Error>) {
        self.active.remove(name);
        match result {
            Ok(r) => {
                self.files_done += 1;
                self.finished_bytes += r.length;
                self.finished_fetched += r.fetched_bytes();
                self.lengths.insert(name.to_owned(), r.length);
            }
            Err(_) => self.files_failed += 1,
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.bytes_done = self.finished_bytes + self.active.values().map(|p| p.bytes_done).sum::<u64>();
        self.bytes_fetched = self.finished_fetched
            + self.active.values().map(|p| p.bytes_done - p.bytes_resumed.min(p.bytes_done)).sum::<u64>();
        self.bytes_total = self.lengths.values().sum();
    }
}
