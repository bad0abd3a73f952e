//! Prometheus metrics of one replica, exposed on `GET /metrics` (OpenMetrics text).
//!
//! Counters and histograms are updated where things happen (requests, causal waits,
//! replication failures, view changes, anti-entropy); gauges are read from a
//! [`Health`] snapshot when the endpoint is scraped, so nothing is kept twice and the
//! request path pays only for the counters it touches. Label values are bounded: routes
//! are the API's route patterns, methods a fixed set, statuses the ones the API produces,
//! peers the members of the cluster, reasons and changes fixed words. No key or client
//! address is ever a label.
//!
//! Families (the names dashboards depend on): `causalkv_http_requests_total`,
//! `causalkv_http_request_duration_seconds`, `causalkv_replication_queue_depth`,
//! `causalkv_replication_lag_writes`, `causalkv_replication_failures_total`,
//! `causalkv_delivery_buffer_writes`, `causalkv_view_members`,
//! `causalkv_view_changes_total`, `causalkv_causal_wait_seconds`,
//! `causalkv_causal_timeouts_total`, `causalkv_anti_entropy_entries_total`,
//! `causalkv_lock_hold_seconds`, `causalkv_lock_hold_max_seconds`, `causalkv_keys`,
//! `causalkv_store_bytes`, `causalkv_tombstones`, `causalkv_tombstones_collected_total`,
//! `causalkv_ready`, and the process's
//! `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
//! `process_start_time_seconds`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::server::health::Health;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    peer: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

pub use crate::protocol::machine::FailureReason;

/// One replica's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<PeerLabels, Gauge>,
    lag: Family<PeerLabels, Gauge>,
    failures: Family<FailureLabels, Counter>,
    delivery_buffer: Gauge,
    view_members: Gauge,
    view_changes: Family<ChangeLabels, Counter>,
    causal_wait: Histogram,
    causal_timeouts: Counter,
    anti_entropy_entries: Counter,
    tombstones_collected: Counter,
    lock_hold: Histogram,
    /// The same holds in the holding thread's CPU time (with `--lock-cpu-metrics`).
    lock_hold_cpu: Histogram,
    /// The longest hold of the machine's lock since start, in nanoseconds (kept here, as
    /// an atomic maximum; the gauge is set from it at each scrape).
    lock_hold_max_ns: AtomicU64,
    lock_hold_max: Gauge<f64, AtomicU64>,
    keys: Gauge,
    tombstones: Gauge,
    store_bytes: Gauge,
    ready: Gauge,
}

fn request_histogram() -> Histogram {
    // 50 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Upper bounds of the lock-hold buckets, in seconds: fine between 0.1 ms and 10 ms, where
/// the 1 ms budget of a hold on the request path lies (`le="0.001"` counts the holds
/// within it), coarse beyond.
const LOCK_HOLD_BUCKETS: [f64; 21] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001,
    0.001_5, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            durations: Family::new_with_constructor(request_histogram),
            queue_depth: Family::default(),
            lag: Family::default(),
            failures: Family::default(),
            delivery_buffer: Gauge::default(),
            view_members: Gauge::default(),
            view_changes: Family::default(),
            // 1 ms to ~4 s: the causal wait is bounded by --causal-wait (0.5 s).
            causal_wait: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            causal_timeouts: Counter::default(),
            anti_entropy_entries: Counter::default(),
            tombstones_collected: Counter::default(),
            lock_hold: Histogram::new(LOCK_HOLD_BUCKETS),
            lock_hold_cpu: Histogram::new(LOCK_HOLD_BUCKETS),
            lock_hold_max_ns: AtomicU64::new(0),
            lock_hold_max: Gauge::default(),
            keys: Gauge::default(),
            tombstones: Gauge::default(),
            store_bytes: Gauge::default(),
            ready: Gauge::default(),
        };
        metrics.register();
        for change in ["joined", "left"] {
            let _ = metrics.view_changes.get_or_create(&ChangeLabels { change });
        }
        metrics
    }

    fn register(&mut self) {
        self.registry.register_collector(Box::new(Process));
        let r = self.registry.sub_registry_with_prefix("causalkv");
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            self.durations.clone(),
        );
        r.register(
            "replication_queue_depth",
            "Writes queued for a peer, not yet sent",
            self.queue_depth.clone(),
        );
        r.register(
            "replication_lag_writes",
            "Writes applied here that a peer had not applied at its last answered probe",
            self.lag.clone(),
        );
        r.register(
            "replication_failures",
            "Replication batches to a peer that failed or were not acknowledged, by reason",
            self.failures.clone(),
        );
        r.register(
            "delivery_buffer_writes",
            "Replicated writes waiting for their dependencies",
            self.delivery_buffer.clone(),
        );
        r.register(
            "view_members",
            "Replicas in this replica's view, itself included",
            self.view_members.clone(),
        );
        r.register(
            "view_changes",
            "Changes of this replica's view (a peer joined or left)",
            self.view_changes.clone(),
        );
        r.register(
            "causal_wait_seconds",
            "Time requests waited for their causal dependencies (requests that waited)",
            self.causal_wait.clone(),
        );
        r.register(
            "causal_timeouts",
            "Requests answered 503 because their dependencies were not applied in time",
            self.causal_timeouts.clone(),
        );
        r.register(
            "anti_entropy_entries",
            "Store entries received by anti-entropy (catch-up and bootstrap)",
            self.anti_entropy_entries.clone(),
        );
        r.register(
            "tombstones_collected",
            "Tombstones collected once every member had applied their delete",
            self.tombstones_collected.clone(),
        );
        r.register(
            "lock_hold_seconds",
            "How long each hold of the protocol machine's lock lasted",
            self.lock_hold.clone(),
        );
        r.register(
            "lock_hold_cpu_seconds",
            "The CPU time the holding thread spent in each hold of the protocol machine's \
             lock (only with --lock-cpu-metrics; a hold longer than its CPU time was \
             preempted)",
            self.lock_hold_cpu.clone(),
        );
        r.register(
            "lock_hold_max_seconds",
            "The longest hold of the protocol machine's lock since the replica started",
            self.lock_hold_max.clone(),
        );
        r.register("keys", "Keys holding a value", self.keys.clone());
        r.register(
            "tombstones",
            "Deleted keys whose tombstone is still held",
            self.tombstones.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes of keys and values as the store holds them",
            self.store_bytes.clone(),
        );
        r.register(
            "ready",
            "1 once the replica has bootstrapped and is in its own view, else 0",
            self.ready.clone(),
        );
    }

    /// One request to `route` answered with `status` after `took`.
    pub fn request(&self, route: Route, status: u16, took: Duration) {
        let Route { route, method } = route;
        let labels = RequestLabels {
            route,
            method,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// A request that waited for its dependencies, and whether it gave up.
    pub fn causal_wait(&self, waited: Duration, timed_out: bool) {
        self.causal_wait.observe(waited.as_secs_f64());
        if timed_out {
            self.causal_timeouts.inc();
        }
    }

    pub fn replication_failed(&self, peer: &str, reason: FailureReason) {
        let labels = FailureLabels {
            peer: peer.to_string(),
            reason: reason.label(),
        };
        self.failures.get_or_create(&labels).inc();
    }

    /// A peer joined (`true`) or left the view.
    pub fn view_changed(&self, joined: bool) {
        let change = if joined { "joined" } else { "left" };
        self.view_changes
            .get_or_create(&ChangeLabels { change })
            .inc();
    }

    pub fn anti_entropy_entries(&self, entries: usize) {
        self.anti_entropy_entries.inc_by(entries as u64);
    }

    pub fn tombstones_collected(&self, tombstones: usize) {
        self.tombstones_collected.inc_by(tombstones as u64);
    }

    /// One hold of the machine's lock that lasted `held`.
    /// CPU time the holding thread spent in one hold (with `--lock-cpu-metrics`).
    pub fn lock_held_cpu(&self, cpu: Duration) {
        self.lock_hold_cpu.observe(cpu.as_secs_f64());
    }

    pub fn lock_held(&self, held: Duration) {
        self.lock_hold.observe(held.as_secs_f64());
        let nanos = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.lock_hold_max_ns.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The text exposition, with the gauges taken from `health`.
    pub fn render(&self, health: &Health) -> Result<String, fmt::Error> {
        self.queue_depth.clear();
        self.lag.clear();
        for peer in &health.peers {
            // Every reason of every peer is present from the first scrape on, at 0.
            for reason in FailureReason::ALL {
                let labels = FailureLabels {
                    peer: peer.addr.to_string(),
                    reason: reason.label(),
                };
                let _ = self.failures.get_or_create(&labels);
            }
            let labels = PeerLabels {
                peer: peer.addr.to_string(),
            };
            self.queue_depth
                .get_or_create(&labels)
                .set(saturating_i64(peer.queue_depth as u64));
            self.lag
                .get_or_create(&labels)
                .set(saturating_i64(peer.lag_writes));
        }
        self.delivery_buffer
            .set(saturating_i64(health.delivery_buffer as u64));
        self.view_members
            .set(saturating_i64(health.view.len() as u64));
        self.keys.set(saturating_i64(health.keys as u64));
        self.tombstones
            .set(saturating_i64(health.tombstones as u64));
        self.store_bytes
            .set(saturating_i64(health.store_bytes as u64));
        self.ready.set(i64::from(health.ready));
        let max_ns = self.lock_hold_max_ns.load(Ordering::Relaxed);
        self.lock_hold_max
            .set(Duration::from_nanos(max_ns).as_secs_f64());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A request's route and method as bounded labels, taken before it is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    route: &'static str,
    method: &'static str,
}

impl Route {
    pub fn of(path: &str, method: &str) -> Route {
        Route {
            route: route_of(path),
            method: method_of(method),
        }
    }
}

/// The route pattern a path matched: a bounded label.
fn route_of(path: &str) -> &'static str {
    match path {
        "/view" => "/view",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        crate::protocol::wire::HEARTBEAT => crate::protocol::wire::HEARTBEAT,
        crate::protocol::wire::ANNOUNCE => crate::protocol::wire::ANNOUNCE,
        crate::protocol::wire::VIEW_CHANGE => crate::protocol::wire::VIEW_CHANGE,
        crate::protocol::wire::REPLICATE => crate::protocol::wire::REPLICATE,
        crate::protocol::wire::SYNC => crate::protocol::wire::SYNC,
        _ if path == "/kvs" || path.starts_with("/kvs/") => "/kvs/{key}",
        _ => "other",
    }
}

fn method_of(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "POST" => "POST",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// The process's own resource use, read from `/proc/self` at each scrape (Linux).
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(rss) = stats.resident_bytes {
            let gauge = ConstGauge::new(saturating_i64(rss));
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                MetricType::Gauge,
            )?;
            gauge.encode(metric)?;
        }
        if let Some(cpu) = stats.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?;
            counter.encode(metric)?;
        }
        if let Some(fds) = stats.open_fds {
            let gauge = ConstGauge::new(saturating_i64(fds));
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            gauge.encode(metric)?;
        }
        if let Some(start) = stats.start_time_seconds {
            let gauge = ConstGauge::new(start);
            let metric = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                None,
                MetricType::Gauge,
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// What `/proc/self` says; `None` where it could not be read (not Linux).
#[derive(Debug, Default)]
struct ProcessStats {
    resident_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    open_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ: 100 on every Linux in use).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: u64 = 4096;

impl ProcessStats {
    fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        // Fields after the command name (which may hold spaces), counted from field 3.
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let cpu_seconds = match (field(14), field(15)) {
            (Some(user), Some(system)) => Some((user + system) as f64 / TICKS_PER_SECOND),
            _ => None,
        };
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_time_seconds = match (boot, field(22)) {
            (Some(boot), Some(ticks)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND),
            _ => None,
        };
        ProcessStats {
            resident_bytes: field(24).map(|pages| pages * PAGE_BYTES),
            cpu_seconds,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            start_time_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::health::PeerHealth;

    fn health() -> Health {
        Health {
            replica: "127.0.0.1:1".into(),
            incarnation: Some("127.0.0.1:1#5".into()),
            uptime_seconds: 1.0,
            ready: true,
            view: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            keys: 3,
            store_bytes: 120,
            tombstones: 4,
            delivery_buffer: 2,
            peers: vec![PeerHealth {
                addr: "127.0.0.1:2".into(),
                status: "up",
                queue_depth: 4,
                lag_writes: 9,
            }],
        }
    }

    #[test]
    fn every_family_is_rendered_with_bounded_labels() {
        let metrics = Metrics::new();
        let took = Duration::from_micros(300);
        metrics.request(Route::of("/kvs/some-key", "PUT"), 201, took);
        metrics.request(Route::of("/kvs/other-key", "PUT"), 201, took);
        metrics.request(Route::of("/no/such/thing", "BREW"), 404, took);
        metrics.causal_wait(Duration::from_millis(20), true);
        metrics.replication_failed("127.0.0.1:2", FailureReason::Timeout);
        metrics.view_changed(true);
        metrics.anti_entropy_entries(7);
        metrics.lock_held(Duration::from_micros(400));
        metrics.lock_held(Duration::from_micros(2500));
        metrics.lock_held(Duration::from_micros(40));
        let text = metrics.render(&health()).unwrap();
        for line in [
            "causalkv_http_requests_total{route=\"/kvs/{key}\",method=\"PUT\",status=\"201\"} 2",
            "causalkv_http_requests_total{route=\"other\",method=\"other\",status=\"404\"} 1",
            "causalkv_replication_queue_depth{peer=\"127.0.0.1:2\"} 4",
            "causalkv_replication_lag_writes{peer=\"127.0.0.1:2\"} 9",
            "causalkv_replication_failures_total{peer=\"127.0.0.1:2\",reason=\"timeout\"} 1",
            "causalkv_delivery_buffer_writes 2",
            "causalkv_view_members 2",
            "causalkv_view_changes_total{change=\"joined\"} 1",
            "causalkv_causal_wait_seconds_count 1",
            "causalkv_causal_timeouts_total 1",
            "causalkv_anti_entropy_entries_total 7",
            "causalkv_lock_hold_seconds_count 3",
            "causalkv_lock_hold_seconds_bucket{le=\"0.001\"} 2",
            "causalkv_lock_hold_seconds_bucket{le=\"0.003\"} 3",
            "causalkv_lock_hold_max_seconds 0.0025",
            "causalkv_keys 3",
            "causalkv_store_bytes 120",
            "causalkv_ready 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("causalkv_http_request_duration_seconds_bucket{"));
        assert!(!text.contains("some-key"), "a key became a label:\n{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn process_metrics_come_from_proc() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.is_some_and(|b| b > 0));
        assert!(stats.cpu_seconds.is_some());
        assert!(stats.open_fds.is_some_and(|n| n > 0));
        assert!(stats.start_time_seconds.is_some_and(|t| t > 1.0e9));
    }

    #[test]
    fn routes_and_methods_are_a_fixed_set() {
        assert_eq!(route_of("/kvs/a/b%20c"), "/kvs/{key}");
        assert_eq!(route_of("/kvs"), "/kvs/{key}");
        assert_eq!(route_of("/internal/replicate"), "/internal/replicate");
        assert_eq!(route_of("/internal/nope"), "other");
        assert_eq!(method_of("PATCH"), "other");
    }
}
