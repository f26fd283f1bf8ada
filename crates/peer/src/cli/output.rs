//! What the `peer` binary shows: progress while downloading, and reports.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use peer::{BatchProgress, BatchReport, DownloadReport, Node, PartialInfo, Progress};
use proto::tracker::{FileSummary, Locations};
use tokio::sync::watch;
use tokio::time::Instant;

/// A progress bar on a terminal; plain lines every few seconds otherwise (logs, pipes, CI).
pub(super) async fn show_progress(mut rx: watch::Receiver<Progress>, name: String, json: bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    if tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    let mut last_line = tokio::time::Instant::now();
    while rx.changed().await.is_ok() {
        let p = rx.borrow_and_update().clone();
        let msg = if p.waiting_chunks > 0 {
            format!("{} sources, waiting for sources of {} chunks", p.active_sources, p.waiting_chunks)
        } else {
            format!("{} sources", p.active_sources)
        };
        if tty {
            bar.set_length(p.total);
            bar.set_position(p.bytes_done);
            bar.set_message(msg);
        } else if !json && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = tokio::time::Instant::now();
            eprintln!("{name}: {}/{} ({msg})", HumanBytes(p.bytes_done), HumanBytes(p.total));
        }
    }
    bar.finish_and_clear();
}

pub(super) fn print_report(r: &DownloadReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    if r.already_complete {
        println!("{} is already complete at {}", r.name, r.path.display());
        return Ok(());
    }
    let rate = r.length as f64 / r.elapsed_secs.max(1e-9);
    println!(
        "downloaded {} ({}) in {:.2}s, {}/s, verified root {}",
        r.name,
        HumanBytes(r.length),
        r.elapsed_secs,
        HumanBytes(rate as u64),
        &r.root[..16]
    );
    if r.resumed_chunks > 0 {
        println!("  resumed {} chunks from an earlier run", r.resumed_chunks);
    }
    for s in &r.sources {
        let dropped = s.dropped.as_deref().map(|d| format!("  DROPPED: {d}")).unwrap_or_default();
        println!(
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
        );
    }
    if r.refetched_chunks > 0 {
        println!("  re-fetched {} chunks; {} wasted on bad data", r.refetched_chunks, HumanBytes(r.wasted_bytes));
    }
    println!("  saved to {}", r.path.display());
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
    while rx.changed().await.is_ok() {
        let b = rx.borrow_and_update().clone();
        let finished = b.files_done + b.files_failed;
        let failed = if b.files_failed > 0 { format!(", {} failed", b.files_failed) } else { String::new() };
        let files = format!("{finished}/{} files{failed}", b.files);
        if tty {
            total.set_length(b.bytes_total);
            total.set_position(b.bytes_done);
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
                rate_eta(b.bytes_done, b.bytes_total, start.elapsed()),
                names.join(", ")
            );
        }
    }
    for bar in bars.values() {
        bar.finish_and_clear();
    }
    total.finish_and_clear();
}

/// "12 MiB/s, ETA 20s" from what was done in `elapsed`.
fn rate_eta(done: u64, total: u64, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    if rate < 1.0 {
        return "waiting for sources".to_owned();
    }
    let eta = Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate);
    format!("{}/s, ETA {}", HumanBytes(rate as u64), indicatif::HumanDuration(eta))
}

fn sources(p: &Progress) -> String {
    let n = p.active_sources;
    let s = if n == 1 { "source" } else { "sources" };
    if p.waiting_chunks > 0 {
        format!("{n} {s}, waiting for sources of {} chunks", p.waiting_chunks)
    } else {
        format!("{n} {s}")
    }
}

pub(super) fn print_batch(r: &BatchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let width = r.files.iter().map(|f| f.name.len()).max().unwrap_or(0).min(60);
    for f in &r.files {
        match (&f.report, &f.error) {
            (Some(rep), _) if rep.already_complete => println!("  {:<width$}  already here", f.name),
            (Some(rep), _) => println!(
                "  {:<width$}  {:>10}  {:.2}s  {}",
                f.name,
                HumanBytes(rep.length).to_string(),
                rep.elapsed_secs,
                &rep.root[..16]
            ),
            (None, Some(e)) => println!("  {:<width$}  FAILED: {e}", f.name),
            (None, None) => {}
        }
    }
    let rate = r.fetched_bytes as f64 / r.elapsed_secs.max(1e-9);
    println!(
        "{} of {} files ({}), {} fetched in {:.2}s, {}/s{}",
        r.succeeded,
        r.files.len(),
        HumanBytes(r.bytes),
        HumanBytes(r.fetched_bytes),
        r.elapsed_secs,
        HumanBytes(rate as u64),
        if r.failed > 0 { format!("; {} failed", r.failed) } else { String::new() }
    );
    Ok(())
}

pub(super) fn print_list(files: &[FileSummary], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(files)?);
        return Ok(());
    }
    if files.is_empty() {
        println!("no files");
        return Ok(());
    }
    // As wide as the longest name, so long names do not push the columns out of line.
    let w = files.iter().map(|f| f.name.chars().count()).max().unwrap_or(0).max(4);
    println!("{:<w$} {:>12} {:>8} {:>9}  root", "name", "size", "sources", "complete");
    for f in files {
        println!(
            "{:<w$} {:>12} {:>8} {:>9}  {}",
            f.name,
            HumanBytes(f.length).to_string(),
            f.sources,
            f.complete_sources,
            &f.root.to_string()[..16]
        );
    }
    Ok(())
}

pub(super) fn print_locations(name: &str, loc: &Locations, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(loc)?);
        return Ok(());
    }
    println!("{name}: {} chunks, {} sources ({} listed)", loc.num_chunks, loc.total_sources, loc.sources.len());
    for s in &loc.sources {
        let held = s.have.to_bitmap(loc.num_chunks).count();
        println!("  {:<22} {held}/{} chunks", s.addr.to_string(), loc.num_chunks);
    }
    let rarest = loc.availability.iter().min().copied().unwrap_or(0);
    println!("rarest chunk held by {rarest} peer(s)");
    Ok(())
}

/// What `serve` serves, and what the trackers refused (so a refused file is not taken for served).
pub(super) fn print_serving(node: &Node) {
    let refused = node.shares().refused();
    eprintln!(
        "serving {} file(s) from {} on {}; Ctrl-C to stop",
        node.shares().len() - refused.len().min(node.shares().len()),
        node.store().root().display(),
        node.listen_addr()
    );
    for r in refused {
        eprintln!("  refused by the tracker: {} ({})", r.name, r.reason);
    }
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
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if partials.is_empty() {
        println!("no partial downloads");
        return Ok(());
    }
    let w = partials.iter().map(|p| p.meta.name.chars().count()).max().unwrap_or(0).max(4);
    println!("{:<w$} {:>17}  {:>8} {:>10}  {:>10}  root", "name", "progress", "", "on disk", "untouched");
    for p in partials {
        let age = now.duration_since(p.modified).unwrap_or_default();
        let age = humantime::format_duration(Duration::from_secs(age.as_secs())).to_string();
        let pct = if p.meta.length == 0 { 100.0 } else { p.bytes_done as f64 * 100.0 / p.meta.length as f64 };
        println!(
            "{:<w$} {:>17}  {:>7.1}% {:>10}  {:>10}  {}",
            p.meta.name,
            format!("{}/{}", HumanBytes(p.bytes_done), HumanBytes(p.meta.length)),
            pct,
            HumanBytes(p.disk_bytes).to_string(),
            age,
            &p.meta.root.to_string()[..16]
        );
    }
    if cleaned {
        println!("removed {} partial download(s)", partials.len());
    }
    Ok(())
}
