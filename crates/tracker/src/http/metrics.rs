//! The tracker's metrics, encoded by `prometheus-client` for `/metrics` (OpenMetrics text, which
//! Prometheus scrapes): what requests cost is counted where they are answered, what the registry
//! holds is read from it at scrape time.
//!
//! The request path pays relaxed atomic increments and one histogram observation: every
//! (kind, outcome) counter and every kind's histogram is created up front and kept in arrays
//! indexed by the kind, so no label lookup (the `Family`'s lock) happens per request. The gauges
//! that mirror the registry (sessions, files, holdings, metadata bytes) and the bytes queued to
//! clients are computed by a [`Collector`] when `/metrics` is scraped: one registry read lock
//! per scrape instead of an update on every change.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry as Metrics, Unit};
use proto::tracker::TrackerRequest;

use crate::backlog::Backlog;
use crate::registry::Registry;

/// A request's kind, as the `kind` label names it: one per request of the protocol, and
/// `malformed` for a frame that holds none. A fixed set, so the label cannot grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RequestKind {
    Hello,
    Register,
    FileList,
    FileMeta,
    FileLocations,
    ChunkRegister,
    ChunkRegisterBatch,
    Leave,
    KeepAlive,
    Unregister,
    FindRoot,
    Malformed,
}

impl RequestKind {
    const ALL: [RequestKind; 12] = [
        RequestKind::Hello,
        RequestKind::Register,
        RequestKind::FileList,
        RequestKind::FileMeta,
        RequestKind::FileLocations,
        RequestKind::ChunkRegister,
        RequestKind::ChunkRegisterBatch,
        RequestKind::Leave,
        RequestKind::KeepAlive,
        RequestKind::Unregister,
        RequestKind::FindRoot,
        RequestKind::Malformed,
    ];

    /// The kind of `request`.
    pub(crate) fn of(request: &TrackerRequest) -> RequestKind {
        match request {
            TrackerRequest::Hello(_) => RequestKind::Hello,
            TrackerRequest::Register(_) => RequestKind::Register,
            TrackerRequest::FileList { .. } => RequestKind::FileList,
            TrackerRequest::FileMeta { .. } => RequestKind::FileMeta,
            TrackerRequest::FileLocations { .. } => RequestKind::FileLocations,
            TrackerRequest::ChunkRegister { .. } => RequestKind::ChunkRegister,
            TrackerRequest::ChunkRegisterBatch { .. } => RequestKind::ChunkRegisterBatch,
            TrackerRequest::Leave => RequestKind::Leave,
            TrackerRequest::KeepAlive => RequestKind::KeepAlive,
            TrackerRequest::Unregister { .. } => RequestKind::Unregister,
            TrackerRequest::FindRoot { .. } => RequestKind::FindRoot,
        }
    }

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RequestKind::Hello => "hello",
            RequestKind::Register => "register",
            RequestKind::FileList => "file_list",
            RequestKind::FileMeta => "file_meta",
            RequestKind::FileLocations => "file_locations",
            RequestKind::ChunkRegister => "chunk_register",
            RequestKind::ChunkRegisterBatch => "chunk_register_batch",
            RequestKind::Leave => "leave",
            RequestKind::KeepAlive => "keep_alive",
            RequestKind::Unregister => "unregister",
            RequestKind::FindRoot => "find_root",
            RequestKind::Malformed => "malformed",
        }
    }
}

impl EncodeLabelValue for RequestKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// Whether a request was answered with its reply (`ok`) or with an error (`error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Ok,
    Error,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        })
    }
}

/// Why a connection was refused before it became a session (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// `max_connections` were open.
    MaxConnections,
    /// The first frame was not an acceptable Hello (wrong magic or version, not a Hello, garbage).
    Handshake,
    /// No Hello within the handshake timeout.
    HandshakeTimeout,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::MaxConnections, Refusal::Handshake, Refusal::HandshakeTimeout];
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::Handshake => "handshake",
            Refusal::HandshakeTimeout => "handshake_timeout",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    kind: RequestKind,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: RequestKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: Refusal,
}

/// Request latencies from 10 µs to about 0.7 s (x4 a bucket): a request the tracker answers in
/// memory takes tens of microseconds, a large Register or File Meta milliseconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(10e-6, 4.0, 9)
}

/// The tracker's metrics: handles to the counters and histograms the request path updates, and
/// the registry they are encoded from.
#[derive(Debug)]
pub(crate) struct TrackerMetrics {
    /// By [`RequestKind`] (its position in `ALL`), then ok / error.
    requests: Vec<[Counter; 2]>,
    /// By [`RequestKind`].
    latency: Vec<Histogram>,
    /// By [`Refusal`].
    refused: Vec<Counter>,
    registry: Metrics,
}

impl TrackerMetrics {
    /// Metrics of the tracker whose registry and backlog are given (read at each scrape).
    pub(crate) fn new(state: Registry, backlog: Arc<Backlog>) -> TrackerMetrics {
        let mut registry = Metrics::with_prefix("tracker");
        let requests_family = Family::<RequestLabels, Counter>::default();
        let latency_family = Family::<KindLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        let refused_family = Family::<ReasonLabel, Counter>::default();
        // Every series exists from the start (at zero), so a scrape lists them all and the hot
        // path only touches the handles below.
        let requests = RequestKind::ALL
            .iter()
            .map(|&kind| {
                [Outcome::Ok, Outcome::Error]
                    .map(|outcome| requests_family.get_or_create_owned(&RequestLabels { kind, outcome }))
            })
            .collect();
        let latency =
            RequestKind::ALL.iter().map(|&kind| latency_family.get_or_create_owned(&KindLabel { kind })).collect();
        let refused =
            Refusal::ALL.iter().map(|&reason| refused_family.get_or_create_owned(&ReasonLabel { reason })).collect();
        registry.register(
            "requests",
            "Requests answered, by kind and outcome (error: answered with an error reply)",
            requests_family,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's frame read to its reply queued, by kind",
            Unit::Seconds,
            latency_family,
        );
        registry.register(
            "connections_refused",
            "Connections refused before they became sessions, by reason",
            refused_family,
        );
        registry.register_collector(Box::new(StateCollector { registry: state, backlog }));
        TrackerMetrics { requests, latency, refused, registry }
    }

    /// One request of `kind` answered, with an error reply or not, in `took`.
    pub(crate) fn request(&self, kind: RequestKind, failed: bool, took: Duration) {
        let i = kind as usize;
        if let Some(counters) = self.requests.get(i) {
            counters[usize::from(failed)].inc();
        }
        if let Some(h) = self.latency.get(i) {
            h.observe(took.as_secs_f64());
        }
    }

    /// One connection refused for `reason`.
    pub(crate) fn refused(&self, reason: Refusal) {
        if let Some(c) = self.refused.get(reason as usize) {
            c.inc();
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The gauges read from the registry and the backlog at scrape time.
#[derive(Debug)]
struct StateCollector {
    registry: Registry,
    backlog: Arc<Backlog>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.registry.stats();
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: u64| {
            let value = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, unit, value.metric_type())?;
            value.encode(metric)
        };
        gauge(
            &mut encoder,
            "sessions",
            "Open sessions (connected peers past the handshake)",
            None,
            stats.sessions as u64,
        )?;
        gauge(&mut encoder, "files", "Distinct files registered", None, stats.files as u64)?;
        gauge(
            &mut encoder,
            "holdings",
            "(peer, file) registrations, complete or partial",
            None,
            stats.holdings as u64,
        )?;
        gauge(
            &mut encoder,
            "metadata",
            "Metadata bytes held, by the estimate the metadata budgets are checked against",
            Some(&Unit::Bytes),
            self.registry.meta_bytes(),
        )?;
        gauge(
            &mut encoder,
            "queued",
            "Reply bytes queued to clients (encoded, not yet written to their sockets)",
            Some(&Unit::Bytes),
            self.backlog.total() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    #[test]
    fn every_series_is_listed_from_the_start_and_moves() {
        let metrics = TrackerMetrics::new(Registry::new(Limits::default()), Backlog::new(1 << 20));
        let text = metrics.encode().unwrap();
        for name in [
            "tracker_sessions",
            "tracker_files",
            "tracker_holdings",
            "tracker_metadata_bytes",
            "tracker_queued_bytes",
            // Counters' HELP names the family; their series end in `_total`.
            "tracker_requests",
            "tracker_request_duration_seconds",
            "tracker_connections_refused",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has HELP text:\n{text}");
        }
        assert!(text.contains(r#"tracker_requests_total{kind="find_root",outcome="error"} 0"#), "{text}");
        metrics.request(RequestKind::FindRoot, true, Duration::from_micros(50));
        metrics.refused(Refusal::HandshakeTimeout);
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"tracker_requests_total{kind="find_root",outcome="error"} 1"#), "{text}");
        assert!(text.contains(r#"tracker_request_duration_seconds_count{kind="find_root"} 1"#), "{text}");
        assert!(text.contains(r#"tracker_connections_refused_total{reason="handshake_timeout"} 1"#), "{text}");
        // 12 kinds x 2 outcomes: the label set is bounded.
        assert_eq!(text.matches("tracker_requests_total{").count(), 24);
    }
}
