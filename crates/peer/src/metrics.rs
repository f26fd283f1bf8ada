//! The node's metrics, in the Prometheus / OpenMetrics text format (`GET /metrics` on the HTTP
//! API; every metric is listed in docs/ARCHITECTURE.md, "Metrics and health").
//!
//! Recording is cheap: every counter, gauge and histogram is a set of atomics, and the parts of
//! the node that record hold their own handles (a download its progress gauges, a connection its
//! peer's byte counter), so no lock is taken per chunk. The only locks are taken once per
//! connection (to find its peer's counter), once per download (its progress series) and per scrape.
//!
//! Label cardinality is bounded. Bytes by remote peer keep their own series for at most
//! [`TOP_PEERS`] peers, the biggest, and fold every other peer into `peer="other"`: a node that
//! meets thousands of peers over months still exports `TOP_PEERS + 1` series per direction, and
//! remembers only the peers it is connected to now besides those. Per-download progress has a
//! series per file downloading now only (removed when its download ends). Drop reasons are a
//! fixed set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::error::SourceError;
use crate::serve::UploadStats;

/// Remote peers that keep a byte counter of their own, per direction; the rest are `other`.
pub(crate) const TOP_PEERS: usize = 16;

/// The label value every peer without a series of its own is counted under.
pub(crate) const OTHER: &str = "other";

/// How many times the smallest named peer's bytes another peer must have to take its series:
/// without a margin two peers of about equal traffic would swap places at every scrape.
const TAKEOVER: u64 = 2;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a source stopped being used by a download: the `reason` label of
/// `p2p_peer_sources_dropped_total`, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// Banned after `bad_data_strikes` copies failed verification.
    BadData,
    /// Disconnected at the source cap, having had nothing to give, to make room for another.
    Evicted,
    /// Could not be connected (refused, unreachable, no welcome in time).
    Connect,
    /// Requests outstanding and no answer within the stall timeout.
    Stalled,
    /// The connection failed or was closed with requests outstanding.
    Lost,
    /// It answered with an error (busy, unknown file...).
    Refused,
    /// It broke the protocol.
    Protocol,
    /// Its task failed.
    Failed,
}

impl DropReason {
    /// The reason a source's task ended with `e`.
    pub(crate) fn of(e: &SourceError) -> DropReason {
        match e {
            SourceError::Connect(_) | SourceError::ConnectTimeout(_) => DropReason::Connect,
            SourceError::Lost(_) | SourceError::Closed => DropReason::Lost,
            SourceError::Refused(_) => DropReason::Refused,
            SourceError::Stalled => DropReason::Stalled,
            SourceError::Protocol(_) => DropReason::Protocol,
            SourceError::BadData { .. } => DropReason::BadData,
            SourceError::TaskFailed => DropReason::Failed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            DropReason::BadData => "bad_data",
            DropReason::Evicted => "evicted",
            DropReason::Connect => "connect",
            DropReason::Stalled => "stalled",
            DropReason::Lost => "lost",
            DropReason::Refused => "refused",
            DropReason::Protocol => "protocol",
            DropReason::Failed => "failed",
        }
    }
}

impl EncodeLabelSet for DropReason {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [("reason", self.as_str())].encode(encoder)
    }
}

/// The `name` label of a download's progress series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileLabel(String);

impl EncodeLabelSet for FileLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [("name", self.0.as_str())].encode(encoder)
    }
}

/// Every metric of a node. One per node, shared (`Arc`) by the upload server, the downloads and
/// the HTTP API.
pub struct Metrics {
    registry: Registry,
    pub(crate) uploaded: Arc<PeerBytes>,
    pub(crate) downloaded: Arc<PeerBytes>,
    pub(crate) chunks_verified: Counter,
    pub(crate) chunks_failed: Counter,
    pub(crate) wasted_bytes: Counter,
    pub(crate) duplicate_bytes: Counter,
    pub(crate) sources_connected: Gauge,
    pub(crate) source_strikes: Counter,
    sources_dropped: Family<DropReason, Counter>,
    pub(crate) disk_write: Histogram,
    download_done: Family<FileLabel, Gauge>,
    download_size: Family<FileLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A node's metrics; the upload connection counts are read from `uploads` at each scrape.
    pub(crate) fn new(uploads: Arc<UploadStats>) -> Metrics {
        let uploaded = Arc::new(PeerBytes::new(
            "p2p_peer_uploaded_bytes",
            "Chunk bytes sent to downloaders, by remote peer IP (the biggest peers; the rest as peer=\"other\").",
        ));
        let downloaded = Arc::new(PeerBytes::new(
            "p2p_peer_downloaded_bytes",
            "Chunk bytes received from sources, by source endpoint (the biggest peers; the rest as peer=\"other\").",
        ));
        let m = Metrics {
            registry: Registry::default(),
            uploaded,
            downloaded,
            chunks_verified: Counter::default(),
            chunks_failed: Counter::default(),
            wasted_bytes: Counter::default(),
            duplicate_bytes: Counter::default(),
            sources_connected: Gauge::default(),
            source_strikes: Counter::default(),
            sources_dropped: Family::default(),
            // 50 us to about 13 s: a page-cache write to a stalled disk.
            disk_write: Histogram::new(exponential_buckets(0.00005, 2.0, 19)),
            download_done: Family::default(),
            download_size: Family::default(),
        };
        let mut r = m.registry_parts();
        r.register_collector(Box::new(m.uploaded.clone()));
        r.register_collector(Box::new(m.downloaded.clone()));
        r.register_collector(Box::new(UploadConnections(uploads)));
        Metrics { registry: r, ..m }
    }

    fn registry_parts(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "p2p_peer_chunks_verified",
            "Chunks that passed verification and were stored (first copies)",
            self.chunks_verified.clone(),
        );
        r.register("p2p_peer_chunks_failed", "Chunk copies that failed verification", self.chunks_failed.clone());
        r.register(
            "p2p_peer_wasted_bytes",
            "Bytes received and not used: copies that failed verification, or came from a source already dropped",
            self.wasted_bytes.clone(),
        );
        r.register(
            "p2p_peer_duplicate_bytes",
            "Bytes of valid copies of chunks already stored (endgame duplicates)",
            self.duplicate_bytes.clone(),
        );
        r.register(
            "p2p_peer_sources_connected",
            "Source connections open now, across every download",
            self.sources_connected.clone(),
        );
        r.register(
            "p2p_peer_source_strikes",
            "Strikes against sources: copies from them that failed verification",
            self.source_strikes.clone(),
        );
        r.register(
            "p2p_peer_sources_dropped",
            "Sources a download stopped using, by reason (bad_data, evicted, connect, stalled, lost, refused, \
             protocol, failed)",
            self.sources_dropped.clone(),
        );
        r.register(
            "p2p_peer_disk_write_seconds",
            "Time to verify and write one received chunk to its partial file (the writer's blocking call)",
            self.disk_write.clone(),
        );
        r.register(
            "p2p_peer_download_done_bytes",
            "Verified bytes stored of each file downloading now",
            self.download_done.clone(),
        );
        r.register("p2p_peer_download_size_bytes", "Length of each file downloading now", self.download_size.clone());
        r
    }

    /// The whole exposition, as served by `GET /metrics` ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave a partial answer,
        // which a scraper rejects as a whole.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one source no longer used, for `reason`.
    pub(crate) fn source_dropped(&self, reason: DropReason) {
        self.sources_dropped.get_or_create(&reason).inc();
    }

    /// Counts a source connection open until the guard is dropped.
    pub(crate) fn source_connected(self: &Arc<Self>) -> SourceConnected {
        self.sources_connected.inc();
        SourceConnected(self.clone())
    }

    /// Progress series for a file downloading now, removed when the guard is dropped.
    pub(crate) fn download_progress(self: &Arc<Self>, name: &str, size: u64) -> DownloadGauges {
        let label = FileLabel(name.to_owned());
        let done = self.download_done.get_or_create(&label).clone();
        let total = self.download_size.get_or_create(&label).clone();
        total.set(to_i64(size));
        DownloadGauges { metrics: self.clone(), label, done }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One open source connection, counted in `p2p_peer_sources_connected`.
pub(crate) struct SourceConnected(Arc<Metrics>);

impl Drop for SourceConnected {
    fn drop(&mut self) {
        self.0.sources_connected.dec();
    }
}

/// A download's progress series; removed when dropped, however the download ends.
pub(crate) struct DownloadGauges {
    metrics: Arc<Metrics>,
    label: FileLabel,
    done: Gauge,
}

impl DownloadGauges {
    /// Verified bytes stored so far.
    pub(crate) fn set_done(&self, bytes: u64) {
        self.done.set(to_i64(bytes));
    }
}

impl Drop for DownloadGauges {
    fn drop(&mut self) {
        self.metrics.download_done.remove(&self.label);
        self.metrics.download_size.remove(&self.label);
    }
}

/// Upload connections, read from the upload server's own counters at each scrape.
#[derive(Debug)]
struct UploadConnections(Arc<UploadStats>);

impl Collector for UploadConnections {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = ConstGauge::new(to_i64(self.0.open.load(Ordering::Relaxed)));
        let e = encoder.encode_descriptor(
            "p2p_peer_upload_connections_open",
            "Downloader connections open now.",
            None,
            open.metric_type(),
        )?;
        open.encode(e)?;
        let opened = ConstCounter::new(self.0.opened.load(Ordering::Relaxed));
        let e = encoder.encode_descriptor(
            "p2p_peer_upload_connections_opened",
            "Downloader connections accepted (not those refused at a cap).",
            None,
            opened.metric_type(),
        )?;
        opened.encode(e)
    }
}

/// Bytes by remote peer, with a bounded number of series: the [`TOP_PEERS`] biggest peers have
/// a counter each, every other peer is summed into `peer="other"`.
///
/// Each connection holds a [`PeerTally`] (found once, under the lock) and adds to it with one
/// atomic per chunk. Which peers are named is decided under the lock when a connection opens
/// and at each scrape: a peer is named while there is room; when there is none, a peer with
/// [`TAKEOVER`] times the bytes of the smallest named one takes its place. Counters stay
/// monotonic: a peer's bytes counted under `other` stay there when it is named (its own series
/// starts at 0), and a named peer's bytes move to `other` when it loses its series. A peer that
/// is neither named nor connected is forgotten (its bytes are in `other`), so the table holds
/// the named peers and those connected now: bounded by the node's connection caps.
#[derive(Debug)]
pub(crate) struct PeerBytes {
    name: &'static str,
    help: &'static str,
    top: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<String, Slot>,
    /// Bytes of peers counted under `other` that are no longer in `peers`, or were before being
    /// named.
    other: u64,
}

#[derive(Debug)]
struct Slot {
    /// Everything the peer's connections added since it entered the table.
    bytes: Arc<AtomicU64>,
    /// Of `bytes`, what is counted elsewhere (`other`, or an earlier series): the peer's count
    /// here is `bytes - base`.
    base: u64,
    named: bool,
}

impl Slot {
    fn count(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed).saturating_sub(self.base)
    }

    /// Moves what the slot counted so far to `other`: the slot starts again from 0.
    fn fold(&mut self, other: &mut u64) {
        let now = self.bytes.load(Ordering::Relaxed);
        *other += now.saturating_sub(self.base);
        self.base = now;
    }

    fn total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn in_use(&self) -> bool {
        Arc::strong_count(&self.bytes) > 1
    }
}

/// One connection's counter of its peer's bytes.
#[derive(Debug)]
pub(crate) struct PeerTally(Arc<AtomicU64>);

impl PeerTally {
    /// Counts `n` bytes for the peer.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

impl PeerBytes {
    fn new(name: &'static str, help: &'static str) -> PeerBytes {
        PeerBytes::with_top(name, help, TOP_PEERS)
    }

    fn with_top(name: &'static str, help: &'static str, top: usize) -> PeerBytes {
        PeerBytes { name, help, top, table: Mutex::new(Table::default()) }
    }

    /// The counter for a connection to `peer` (taken once per connection).
    pub(crate) fn tally(&self, peer: &str) -> PeerTally {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.settle(self.top);
        let named = t.peers.values().filter(|s| s.named).count();
        let room = named < self.top;
        let slot = t.peers.entry(peer.to_owned()).or_insert_with(|| Slot {
            bytes: Arc::new(AtomicU64::new(0)),
            base: 0,
            named: room,
        });
        PeerTally(slot.bytes.clone())
    }

    /// The series as exported now: each named peer's count, and `other`'s.
    fn series(&self) -> (Vec<(String, u64)>, u64) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        t.settle(self.top);
        let mut other = t.other;
        let mut named = Vec::new();
        for (peer, slot) in &t.peers {
            if slot.named {
                named.push((peer.clone(), slot.count()));
            } else {
                other += slot.count();
            }
        }
        named.sort();
        (named, other)
    }

    /// Peers remembered now (named, or connected).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).peers.len()
    }
}

impl Table {
    /// Forgets unnamed peers nobody is connected to, and gives series to the biggest peers.
    fn settle(&mut self, top: usize) {
        let Table { peers, other } = self;
        // Takeovers first, so a peer whose connections ended since the last settle is ranked
        // too (a short, heavy connection still earns its series).
        loop {
            // Ranked by all they moved since they entered the table, not by their count under
            // their current label: a peer just named (counting from 0) is not the smallest.
            let best = peers.iter().filter(|(_, s)| !s.named).max_by_key(|(_, s)| s.total());
            let Some((best, best_total)) = best.map(|(p, s)| (p.clone(), s.total())) else { break };
            if peers.values().filter(|s| s.named).count() >= top {
                let smallest = peers.iter().filter(|(_, s)| s.named).min_by_key(|(_, s)| s.total());
                let Some((smallest, small_total)) = smallest.map(|(p, s)| (p.clone(), s.total())) else { break };
                if best_total <= small_total.saturating_mul(TAKEOVER) {
                    break;
                }
                if let Some(s) = peers.get_mut(&smallest) {
                    s.fold(other);
                    s.named = false;
                }
            }
            if let Some(s) = peers.get_mut(&best) {
                s.fold(other);
                s.named = true;
            }
        }
        forget_idle(peers, other);
    }
}

/// Forgets the unnamed peers nobody is connected to, their bytes moved to `other`.
fn forget_idle(peers: &mut HashMap<String, Slot>, other: &mut u64) {
    peers.retain(|_, s| {
        if s.named || s.in_use() {
            return true;
        }
        s.fold(other);
        false
    });
}

impl Collector for PeerBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (named, other) = self.series();
        let mut e = encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (peer, n) in &named {
            ConstCounter::new(*n).encode(e.encode_family(&[("peer", peer.as_str())])?)?;
        }
        ConstCounter::new(other).encode(e.encode_family(&[("peer", OTHER)])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series_of(text: &str, metric: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .map(|l| {
                let (labels, value) = l.rsplit_once(' ').unwrap();
                (labels.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    /// The bound on label cardinality: a thousand peers, each connected once, give at most
    /// TOP_PEERS + 1 series, the table forgets the unnamed ones, and no byte is lost.
    #[test]
    fn a_thousand_peers_keep_top_plus_one_series() {
        let m = Arc::new(Metrics::new(Arc::default()));
        let mut total = 0;
        for i in 0..1000u64 {
            let tally = m.uploaded.tally(&format!("10.0.{}.{}", i / 256, i % 256));
            tally.add(i + 1);
            total += i + 1;
            drop(tally);
            assert!(m.uploaded.remembered() <= TOP_PEERS + 1);
        }
        let text = m.encode();
        let series = series_of(&text, "p2p_peer_uploaded_bytes_total");
        assert!(series.len() <= TOP_PEERS + 1, "{} series", series.len());
        assert!(series.iter().any(|(l, _)| l.contains("peer=\"other\"")));
        assert_eq!(series.iter().map(|s| s.1).sum::<u64>(), total);
        assert!(m.uploaded.remembered() <= TOP_PEERS);
    }

    /// A peer that moves far more than the named ones takes a series; the counters never go
    /// down (scrape to scrape), and the sum stays exact.
    #[test]
    fn a_big_peer_takes_a_series_and_counters_stay_monotonic() {
        let bytes = PeerBytes::with_top("t", "t", 2);
        let small: Vec<PeerTally> = ["a", "b"].iter().map(|p| bytes.tally(p)).collect();
        small.iter().for_each(|t| t.add(10));
        let big = bytes.tally("big");
        big.add(5);
        let (named, other) = bytes.series();
        assert_eq!(named, vec![("a".into(), 10), ("b".into(), 10)]);
        assert_eq!(other, 5);
        big.add(1000);
        let (named, other2) = bytes.series();
        assert!(named.iter().any(|(p, n)| p == "big" && *n == 0), "{named:?}");
        assert_eq!(named.len(), 2);
        // Big's first 1005 bytes and the demoted peer's 10 are in other: never less than before.
        assert_eq!(other2, 1015);
        big.add(7);
        let (named, other3) = bytes.series();
        assert!(named.contains(&("big".into(), 7)));
        assert!(other3 >= other2);
    }

    /// The per-download series exist only while the download does.
    #[test]
    fn download_series_are_removed_when_the_download_ends() {
        let m = Arc::new(Metrics::new(Arc::default()));
        let g = m.download_progress("dir/file.bin", 4096);
        g.set_done(1024);
        let text = m.encode();
        assert!(text.contains("p2p_peer_download_done_bytes{name=\"dir/file.bin\"} 1024"), "{text}");
        assert!(text.contains("p2p_peer_download_size_bytes{name=\"dir/file.bin\"} 4096"), "{text}");
        drop(g);
        assert!(!m.encode().contains("dir/file.bin"));
    }

    #[test]
    fn every_metric_has_help_and_type() {
        let m = Arc::new(Metrics::new(Arc::default()));
        m.source_dropped(DropReason::BadData);
        // A family with no series is not exported at all: one download in progress.
        let _download = m.download_progress("f", 1);
        let text = m.encode();
        for name in [
            "p2p_peer_uploaded_bytes",
            "p2p_peer_downloaded_bytes",
            "p2p_peer_chunks_verified",
            "p2p_peer_chunks_failed",
            "p2p_peer_wasted_bytes",
            "p2p_peer_duplicate_bytes",
            "p2p_peer_sources_connected",
            "p2p_peer_source_strikes",
            "p2p_peer_sources_dropped",
            "p2p_peer_disk_write_seconds",
            "p2p_peer_download_done_bytes",
            "p2p_peer_download_size_bytes",
            "p2p_peer_upload_connections_open",
            "p2p_peer_upload_connections_opened",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no type:\n{text}");
        }
        assert!(text.contains("p2p_peer_sources_dropped_total{reason=\"bad_data\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
