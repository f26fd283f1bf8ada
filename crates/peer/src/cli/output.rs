//! What the `peer` binary shows: progress while downloading, and reports. Everything for stdout
//! goes through [`out!`], which returns the write's error instead of panicking, so a reader that
//! went away (`peer list | head`) ends the command quietly.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use peer::{BatchProgress, BatchReport, DownloadReport, Node, PartialInfo, Progress, UploadSnapshot};
use proto::tracker::{FileSummary, Locations};
use tokio::sync::watch;
use tokio::time::Instant;

/// `println!` that returns the write's `io::Result` (a closed pipe is `BrokenPipe`, not a panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Writes `text` to stdout as is.
pub(super) fn write_out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A progress bar on a terminal; plain lines every few seconds otherwise (logs, pipes, CI), with
/// the rate and ETA either way. Rates count only this run's bytes (not those resumed), and with
/// no source connected the display says it is waiting instead of showing a growing ETA.
pub(super) async fn show_progress(mut rx: watch::Receiver<Progress>, name: String, json: bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    let start = Instant::now();
    let mut last_line = Instant::now();
    let mut waiting = None;
    let mut first = true;
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let now_waiting = p.active_sources == 0;
        if tty {
            if waiting != Some(now_waiting) {
                waiting = Some(now_waiting);
                bar.set_style(bar_style(now_waiting));
            }
            bar.set_length(p.total);
            bar.set_position(p.bytes_done);
            if first {
                // Resumed bytes are not this run's: the rate starts from here.
                bar.reset_eta();
                first = false;
            }
            bar.set_message(sources(&p));
        } else if !json && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let fetched = p.bytes_done - p.bytes_resumed.min(p.bytes_done);
            let rate = if now_waiting {
                "waiting for sources".to_owned()
            } else {
                rate_eta(fetched, p.total.saturating_sub(p.bytes_done), start.elapsed())
            };
            eprintln!("{name}: {}/{}, {rate} ({})", HumanBytes(p.bytes_done), HumanBytes(p.total), sources(&p));
        }
    }
    bar.finish_and_clear();
}

/// The single-file bar: with rate and ETA, or without them while no source is connected.
fn bar_style(waiting: bool) -> ProgressStyle {
    let template = if waiting {
        "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}"
    } else {
        "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

pub(super) fn print_report(r: &DownloadReport, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    if r.already_complete {
        out!("{} is already complete at {}", r.name, r.path.display())?;
        return Ok(());
    }
    // This run's bytes over this run's time: resumed chunks were not transferred now.
    let fetched = r.fetched_bytes();
    let rate = fetched as f64 / r.elapsed_secs.max(1e-9);
    out!(
        "downloaded {} ({}) in {:.2}s, {}/s, verified root {}",
        r.name,
        HumanBytes(r.length),
        r.elapsed_secs,
        HumanBytes(rate as u64),
        &r.root[..16]
    )?;
    if r.resumed_chunks > 0 {
        out!(
            "  resumed {} chunks ({}) from an earlier run; fetched {} now",
            r.resumed_chunks,
            HumanBytes(r.length.saturating_sub(fetched)),
            HumanBytes(fetched)
        )?;
    }
    for s in &r.sources {
        let dropped = s.dropped.as_deref().map(|d| format!("  DROPPED: {d}")).unwrap_or_default();
        out!(
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
        )?;
    }
    if r.refetched_chunks > 0 {
        out!("  re-fetched {} chunks; {} wasted on bad data", r.refetched_chunks, HumanBytes(r.wasted_bytes))?;
    }
    out!("  saved to {}", r.path.display())?;
    Ok(())
}

/// Totals and the files in flight: a bar for the batch and one per file on a terminal, a line
/// every few seconds otherwise.
pub(super) async fn show_batch_progress(mut rx: watch::Receiver<BatchProgress>, json: bool) {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let total = multi.add(ProgressBar::new(0));
    total.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if tty {
        total.enable_steady_tick(Duration::from_millis(120));
    }
    let file_style = ProgressStyle::with_template("  {prefix:.dim} {bytes}/{total_bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: std::collections::BTreeMap<String, ProgressBar> = Default::default();
    let start = Instant::now();
    let mut last_line = Instant::now();
    let mut first = true;
    while rx.changed().await.is_ok() {
        let b = rx.borrow_and_update().clone();
        let finished = b.files_done + b.files_failed;
        let failed = if b.files_failed > 0 { format!(", {} failed", b.files_failed) } else { String::new() };
        let files = format!("{finished}/{} files{failed}", b.files);
        if tty {
            total.set_length(b.bytes_total);
            total.set_position(b.bytes_done);
            if first && b.bytes_done > 0 {
                // Files already here are not this run's: the rate starts from here.
                total.reset_eta();
                first = false;
            }
            total.set_message(files);
            bars.retain(|name, bar| {
                let keep = b.active.contains_key(name);
                if !keep {
                    bar.finish_and_clear();
                    multi.remove(bar);
                }
                keep
            });
            for (name, p) in &b.active {
                let bar = bars.entry(name.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(p.total));
                    bar.set_style(file_style.clone());
                    bar.set_prefix(name.clone());
                    bar
                });
                bar.set_length(p.total);
                bar.set_position(p.bytes_done);
                bar.set_message(sources(p));
            }
        } else if !json && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let names: Vec<&str> = b.active.keys().map(String::as_str).take(3).collect();
            let more = b.active.len().saturating_sub(names.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            eprintln!(
                "{files}, {}/{}, {}; downloading {}{more}",
                HumanBytes(b.bytes_done),
                HumanBytes(b.bytes_total),
                rate_eta(b.bytes_fetched, b.bytes_total.saturating_sub(b.bytes_done), start.elapsed()),
                names.join(", ")
            );
        }
    }
    for bar in bars.values() {
        bar.finish_and_clear();
    }
    total.finish_and_clear();
}

/// "12 MiB/s, ETA 20s" from `fetched` bytes in `elapsed`, with `remaining` bytes to go.
fn rate_eta(fetched: u64, remaining: u64, elapsed: Duration) -> String {
    let rate = fetched as f64 / elapsed.as_secs_f64().max(1e-3);
    if rate < 1.0 {
        return "waiting for sources".to_owned();
    }
    let eta = Duration::from_secs_f64(remaining as f64 / rate);
    format!("{}/s, ETA {}", HumanBytes(rate as u64), indicatif::HumanDuration(eta))
}

fn sources(p: &Progress) -> String {
    let n = p.active_sources;
    let s = if n == 1 { "source" } else { "sources" };
    if n == 0 {
        "waiting for sources".to_owned()
    } else if p.waiting_chunks > 0 {
        format!("{n} {s}, waiting for sources of {} chunks", p.waiting_chunks)
    } else {
        format!("{n} {s}")
    }
}

pub(super) fn print_batch(r: &BatchReport, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    let width = r.files.iter().map(|f| f.name.len()).max().unwrap_or(0).min(60);
    for f in &r.files {
        match (&f.report, &f.error) {
            (Some(rep), _) if rep.already_complete => out!("  {:<width$}  already here", f.name)?,
            (Some(rep), _) => out!(
                "  {:<width$}  {:>10}  {:.2}s  {}",
                f.name,
                HumanBytes(rep.length).to_string(),
                rep.elapsed_secs,
                &rep.root[..16]
            )?,
            (None, Some(e)) => out!("  {:<width$}  FAILED: {e}", f.name)?,
            (None, None) => {}
        }
    }
    let rate = r.fetched_bytes as f64 / r.elapsed_secs.max(1e-9);
    out!(
        "{} of {} files ({}), {} fetched in {:.2}s, {}/s{}",
        r.succeeded,
        r.files.len(),
        HumanBytes(r.bytes),
        HumanBytes(r.fetched_bytes),
        r.elapsed_secs,
        HumanBytes(rate as u64),
        if r.failed > 0 { format!("; {} failed", r.failed) } else { String::new() }
    )?;
    Ok(())
}

pub(super) fn print_list(files: &[FileSummary], json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(files)?)?;
        return Ok(());
    }
    if files.is_empty() {
        out!("no files")?;
        return Ok(());
    }
    // As wide as the longest name, so long names do not push the columns out of line.
    let w = files.iter().map(|f| f.name.chars().count()).max().unwrap_or(0).max(4);
    out!("{:<w$} {:>12} {:>8} {:>9}  root", "name", "size", "sources", "complete")?;
    for f in files {
        out!(
            "{:<w$} {:>12} {:>8} {:>9}  {}",
            f.name,
            HumanBytes(f.length).to_string(),
            f.sources,
            f.complete_sources,
            &f.root.to_string()[..16]
        )?;
    }
    Ok(())
}

pub(super) fn print_locations(name: &str, loc: &Locations, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(loc)?)?;
        return Ok(());
    }
    out!("{name}: {} chunks, {} sources ({} listed)", loc.num_chunks, loc.total_sources, loc.sources.len())?;
    for s in &loc.sources {
        let held = s.have.to_bitmap(loc.num_chunks).count();
        out!("  {:<22} {held}/{} chunks", s.addr.to_string(), loc.num_chunks)?;
    }
    let rarest = loc.availability.iter().min().copied().unwrap_or(0);
    out!("rarest chunk held by {rarest} peer(s)")?;
    Ok(())
}

/// What `serve` serves, and what the trackers refused (so a refused file is not taken for served).
pub(super) fn print_serving(node: &Node, json: bool) -> anyhow::Result<()> {
    let refused = node.shares().refused();
    let files = node.shares().len().saturating_sub(refused.len());
    if json {
        let refused: Vec<_> =
            refused.iter().map(|r| serde_json::json!({"name": r.name, "reason": r.reason.to_string()})).collect();
        let line = serde_json::json!({
            "event": "serving",
            "listen": node.listen_addr(),
            "share": node.store().root(),
            "files": files,
            "refused": refused,
        });
        out!("{line}")?;
        return Ok(());
    }
    eprintln!(
        "serving {files} file(s) from {} on {}; Ctrl-C to stop",
        node.store().root().display(),
        node.listen_addr()
    );
    for r in refused {
        eprintln!("  refused by the tracker: {} ({})", r.name, r.reason);
    }
    Ok(())
}

/// `serve`'s periodic line: what was uploaded since the last one, and to how many connections.
pub(super) fn print_serve_stats(
    node: &Node,
    last: &UploadSnapshot,
    now: &UploadSnapshot,
    every: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let bytes = now.uploaded_bytes - last.uploaded_bytes.min(now.uploaded_bytes);
    let opened = now.connections_opened - last.connections_opened.min(now.connections_opened);
    let files = node.shares().len().saturating_sub(node.shares().refused().len());
    if json {
        let line = serde_json::json!({
            "event": "stats",
            "interval_secs": every.as_secs_f64(),
            "files": files,
            "uploaded_bytes": bytes,
            "connections_opened": opened,
            "connections_open": now.connections_open,
            "total_uploaded_bytes": now.uploaded_bytes,
        });
        out!("{line}")?;
        return Ok(());
    }
    let rate = bytes as f64 / every.as_secs_f64().max(1e-3);
    eprintln!(
        "serving {files} file(s): uploaded {} ({}/s) in the last {}, {opened} connection(s) opened, {} open now; {} in total",
        HumanBytes(bytes),
        HumanBytes(rate as u64),
        humantime::format_duration(every),
        now.connections_open,
        HumanBytes(now.uploaded_bytes)
    );
    Ok(())
}

/// `serve`'s totals when it stops.
pub(super) fn print_serve_totals(totals: &UploadSnapshot, ran: Duration, json: bool) -> anyhow::Result<()> {
    let ran = Duration::from_secs(ran.as_secs());
    if json {
        let line = serde_json::json!({
            "event": "stopped",
            "ran_secs": ran.as_secs(),
            "total_uploaded_bytes": totals.uploaded_bytes,
            "connections_opened": totals.connections_opened,
        });
        out!("{line}")?;
        return Ok(());
    }
    eprintln!(
        "stopped after {}: uploaded {} over {} connection(s); left the tracker",
        humantime::format_duration(ran),
        HumanBytes(totals.uploaded_bytes),
        totals.connections_opened
    );
    Ok(())
}

pub(super) fn print_partials(partials: &[PartialInfo], cleaned: bool, json: bool) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    if json {
        let rows: Vec<_> = partials
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.meta.name,
                    "root": p.meta.root,
                    "length": p.meta.length,
                    "bytes_done": p.bytes_done,
                    "chunks_done": p.chunks_done,
                    "num_chunks": p.num_chunks,
                    "disk_bytes": p.disk_bytes,
                    "untouched_secs": now.duration_since(p.modified).unwrap_or_default().as_secs(),
                    "removed": cleaned,
                })
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if partials.is_empty() {
        out!("no partial downloads")?;
        return Ok(());
    }
    let w = partials.iter().map(|p| p.meta.name.chars().count()).max().unwrap_or(0).max(4);
    out!("{:<w$} {:>17}  {:>8} {:>10}  {:>10}  root", "name", "progress", "", "on disk", "untouched")?;
    for p in partials {
        let age = now.duration_since(p.modified).unwrap_or_default();
        let age = humantime::format_duration(Duration::from_secs(age.as_secs())).to_string();
        let pct = if p.meta.length == 0 { 100.0 } else { p.bytes_done as f64 * 100.0 / p.meta.length as f64 };
        out!(
            "{:<w$} {:>17}  {:>7.1}% {:>10}  {:>10}  {}",
            p.meta.name,
            format!("{}/{}", HumanBytes(p.bytes_done), HumanBytes(p.meta.length)),
            pct,
            HumanBytes(p.disk_bytes).to_string(),
            age,
            &p.meta.root.to_string()[..16]
        )?;
    }
    if cleaned {
        out!("removed {} partial download(s)", partials.len())?;
    }
    Ok(())
}
