//! Realistic Prometheus remote-write load, built once and sent unchanged to
//! every system under test.
//!
//! The series look like what a Prometheus scraping node-exporter and a few
//! instrumented services forwards: per instance 112 series of a few dozen
//! metric names, about 73% counters (CPU seconds with 10 ms resolution, byte
//! and packet counters, request counters, mostly idle error counters, one
//! full-precision `_sum`, the buckets of two classic histograms, span-metrics
//! calls as the shop dashboard reads them) and 27% gauges (memory in pages,
//! load averages, temperatures with 0.1 resolution, small integers,
//! constants). [`Values::Full`] makes every counter and gauge value full
//! precision instead. Labels: `__name__`, `job` (10), `instance` (about one
//! per 110 series), `env`, and a metric-specific one (`mode`, `device`,
//! `code`, `le`, ...; the span metrics carry `service_name`, `span_kind` and
//! `status_code`). On top,
//! the counter family [`QUERY_METRIC`] has exactly [`QUERY_SERIES`] series
//! across the 10 jobs, for the range-query benchmark.
//!
//! Time is compressed: `rounds` scrapes 15 s apart are generated up front
//! (backfill-style, ending before "now"), so the load can be sent as fast as
//! the receiver acknowledges it. Every instance has its own scrape phase and
//! a few timestamps carry a few ms of jitter, as real scrapes do.
//!
//! Each client owns a disjoint shard of the series and sends its requests in
//! order, so samples of one series always arrive in time order. A request
//! holds `samples_per_request` samples taken scrape by scrape over the
//! shard, one [`TimeSeries`] per series (with several samples when the
//! request spans several scrapes of it), like a remote-write queue shard
//! catching up.

use std::collections::HashMap;

use anyhow::{Context, Result};
use prost::Message;
use prost::bytes::Bytes;
use rand::Rng;

/// Spacing of the simulated scrapes.
pub const SCRAPE_INTERVAL_MS: i64 = 15_000;
/// The counter family the range-query benchmark aggregates.
pub const QUERY_METRIC: &str = "x";
/// Series of [`QUERY_METRIC`], whatever `--series` is.
pub const QUERY_SERIES: usize = 1_000;
/// Values of the `job` label.
pub const JOBS: [&str; 10] = [
    "node",
    "api",
    "checkout",
    "inventory",
    "payments",
    "search",
    "auth",
    "cart",
    "shipping",
    "frontend",
];
/// Chance that a scrape timestamp is a few ms off the instance's grid.
const JITTER_CHANCE: f64 = 0.01;
/// Largest timestamp jitter, in ms.
const MAX_JITTER_MS: i64 = 5;

/// The daemon's own wire types, so the load is exactly what it decodes.
pub use strand::remote_write::{
    TimeSeries, WireLabel as Label, WireMetadata as MetricMetadata, WireSample as Sample,
    WriteRequest,
};

/// How a series' value evolves from one scrape to the next. Values are kept
/// as integer multiples of `quantum`, the resolution the exporter reports.
#[derive(Clone, Copy, Debug)]
enum Model {
    /// Grows by `low..=high` quanta per scrape, except with chance `idle`.
    Counter { low: i64, high: i64, idle: f64 },
    /// Moves by up to `step` quanta per scrape (unless it stays put, with
    /// chance `still`), within `min..=max` quanta.
    Gauge {
        step: i64,
        still: f64,
        min: i64,
        max: i64,
    },
    /// A classic histogram bucket: every scrape, `low..=high` observations
    /// happen on the instance (the same number for all of its buckets, drawn
    /// from the instance's own stream), and `share` of them fall into this
    /// bucket, so the buckets of one instance stay cumulative.
    Bucket { low: i64, high: i64, share: f64 },
}

/// The `le` values of the generated histograms, and (below) the share of
/// observations at or below each.
const BUCKET_LES: &[&str] = &["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1", "+Inf"];
const BUCKET_SHARES: [f64; 8] = [0.05, 0.15, 0.35, 0.6, 0.8, 0.92, 0.99, 1.0];
/// A label value replaced by the series' `job`, for the span-metrics
/// families the shop dashboard queries by `service_name`.
const JOB: &str = "$job";

/// How the generated values look on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Integer multiples of each family's resolution, as exporters report
    /// them (counters grow by small integers, gauges take few values).
    Realistic,
    /// The same series with full-precision values: counters grow by a
    /// random fraction of a step more each scrape, gauges get a random
    /// fraction of a step added (histogram buckets stay integer counts):
    /// the worst case for compression.
    Full,
}

/// A metric family of the per-instance catalog.
struct Family {
    name: &'static str,
    /// The metric-specific label and its values (one series per value).
    label: Option<(&'static str, &'static [&'static str])>,
    quantum: f64,
    model: Model,
    /// Labels every series of the family carries ([`JOB`] for the job).
    fixed: &'static [(&'static str, &'static str)],
}

impl Family {
    const fn with(self, fixed: &'static [(&'static str, &'static str)]) -> Family {
        Family { fixed, ..self }
    }
}

const CPU_MODES: &[&str] = &[
    "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
];
const NET_DEVICES: &[&str] = &["eth0", "eth1", "lo"];
const DISKS: &[&str] = &["nvme0n1", "sda", "sdb"];
const CODES: &[&str] = &[
    "200", "201", "204", "301", "304", "400", "401", "403", "404", "500", "502", "503",
];
const HANDLERS: &[&str] = &[
    "/api/cart",
    "/api/login",
    "/api/orders",
    "/api/orders/{id}",
    "/api/products",
    "/api/products/{id}",
    "/api/search",
    "/healthz",
];
const MOUNTS: &[&str] = &["/", "/boot", "/home", "/var"];
const SENSORS: &[&str] = &["temp1", "temp2", "temp3", "temp4"];

const fn counter(
    name: &'static str,
    label: Option<(&'static str, &'static [&'static str])>,
    quantum: f64,
    (low, high): (i64, i64),
    idle: f64,
) -> Family {
    Family {
        name,
        label,
        quantum,
        model: Model::Counter { low, high, idle },
        fixed: &[],
    }
}

const fn gauge(
    name: &'static str,
    label: Option<(&'static str, &'static [&'static str])>,
    quantum: f64,
    (min, max): (i64, i64),
    step: i64,
    still: f64,
) -> Family {
    Family {
        name,
        label,
        quantum,
        model: Model::Gauge {
            step,
            still,
            min,
            max,
        },
        fixed: &[],
    }
}

/// A histogram's `_bucket` family: `low..=high` observations per scrape.
const fn histogram(name: &'static str, (low, high): (i64, i64)) -> Family {
    Family {
        name,
        label: Some(("le", BUCKET_LES)),
        quantum: 1.0,
        model: Model::Bucket {
            low,
            high,
            share: 1.0,
        },
        fixed: &[],
    }
}

const SPAN_SERVER: (&str, &str) = ("span_kind", "SPAN_KIND_SERVER");

/// What every instance exports: 82 counter and 30 gauge series, among them
/// two histograms and the span metrics the shop dashboard reads.
#[rustfmt::skip]
const CATALOG: &[Family] = &[
    counter("node_cpu_seconds_total", Some(("mode", CPU_MODES)), 0.01, (0, 1_500), 0.0),
    counter("node_network_receive_bytes_total", Some(("device", NET_DEVICES)), 1.0, (1_000, 2_000_000), 0.0),
    counter("node_network_transmit_bytes_total", Some(("device", NET_DEVICES)), 1.0, (1_000, 2_000_000), 0.0),
    counter("node_network_receive_packets_total", Some(("device", NET_DEVICES)), 1.0, (10, 2_000), 0.0),
    counter("node_network_receive_errs_total", Some(("device", NET_DEVICES)), 1.0, (1, 2), 0.98),
    counter("node_disk_read_bytes_total", Some(("device", DISKS)), 4096.0, (0, 500), 0.3),
    counter("node_disk_written_bytes_total", Some(("device", DISKS)), 4096.0, (10, 3_000), 0.0),
    counter("node_disk_io_time_seconds_total", Some(("device", DISKS)), 0.001, (0, 2_000), 0.1),
    counter("node_disk_writes_completed_total", Some(("device", DISKS)), 1.0, (5, 400), 0.0),
    counter("http_requests_total", Some(("code", CODES)), 1.0, (0, 300), 0.3),
    counter("http_request_duration_seconds_count", Some(("handler", HANDLERS)), 1.0, (0, 200), 0.1),
    counter("http_request_duration_seconds_sum", Some(("handler", HANDLERS)), 1e-9, (0, 20_000_000_000), 0.1),
    counter("node_context_switches_total", None, 1.0, (20_000, 90_000), 0.0),
    counter("node_intr_total", None, 1.0, (10_000, 60_000), 0.0),
    counter("node_forks_total", None, 1.0, (0, 40), 0.2),
    counter("process_cpu_seconds_total", None, 0.01, (1, 30), 0.0),
    counter("go_gc_duration_seconds_count", None, 1.0, (0, 3), 0.5),
    counter("node_vmstat_pgfault", None, 1.0, (1_000, 50_000), 0.0),
    counter("node_vmstat_pgmajfault", None, 1.0, (1, 5), 0.9),
    gauge("node_memory_MemAvailable_bytes", None, 4096.0, (500_000, 4_000_000), 2_000, 0.0),
    gauge("node_memory_MemFree_bytes", None, 4096.0, (100_000, 1_000_000), 1_000, 0.0),
    gauge("node_memory_Cached_bytes", None, 4096.0, (200_000, 2_000_000), 500, 0.2),
    gauge("node_memory_Buffers_bytes", None, 4096.0, (10_000, 50_000), 20, 0.5),
    gauge("node_load1", None, 0.01, (0, 800), 30, 0.0),
    gauge("node_load5", None, 0.01, (0, 800), 10, 0.0),
    gauge("node_load15", None, 0.01, (0, 800), 3, 0.1),
    gauge("node_filesystem_avail_bytes", Some(("mountpoint", MOUNTS)), 4096.0, (1_000_000, 50_000_000), 100, 0.3),
    gauge("node_filesystem_size_bytes", Some(("mountpoint", MOUNTS)), 4096.0, (50_000_000, 50_000_000), 0, 1.0),
    gauge("node_hwmon_temp_celsius", Some(("sensor", SENSORS)), 0.1, (300, 900), 5, 0.3),
    gauge("process_resident_memory_bytes", None, 4096.0, (5_000, 100_000), 50, 0.2),
    gauge("process_open_fds", None, 1.0, (10, 200), 2, 0.6),
    gauge("go_goroutines", None, 1.0, (10, 500), 5, 0.3),
    gauge("go_memstats_heap_inuse_bytes", None, 8192.0, (1_000, 50_000), 100, 0.0),
    gauge("node_filefd_allocated", None, 1.0, (1_000, 5_000), 10, 0.2),
    gauge("node_procs_running", None, 1.0, (1, 8), 1, 0.5),
    gauge("node_procs_blocked", None, 1.0, (0, 2), 1, 0.9),
    gauge("up", None, 1.0, (1, 1), 0, 1.0),
    gauge("http_requests_in_flight", Some(("handler", &["/api/cart", "/api/orders", "/api/search"])), 1.0, (0, 20), 2, 0.4),
    histogram("http_request_duration_seconds_bucket", (0, 300)),
    counter("traces_span_metrics_calls_total", None, 1.0, (0, 200), 0.05)
        .with(&[("service_name", JOB), SPAN_SERVER, ("status_code", "STATUS_CODE_UNSET")]),
    counter("traces_span_metrics_calls_total", None, 1.0, (1, 3), 0.8)
        .with(&[("service_name", JOB), SPAN_SERVER, ("status_code", "STATUS_CODE_ERROR")]),
    histogram("traces_span_metrics_duration_seconds_bucket", (0, 200))
        .with(&[("service_name", JOB), SPAN_SERVER]),
];

/// The family of [`QUERY_METRIC`]: a busy request counter.
const QUERY_FAMILY: Family = counter(QUERY_METRIC, None, 1.0, (0, 100), 0.05);

/// One series: labels (sorted by name, as Prometheus sends them), how its
/// value evolves, its current value in quanta and its scrape phase.
struct Series {
    labels: Vec<Label>,
    quantum: f64,
    model: Model,
    values: Values,
    units: i64,
    phase_ms: i64,
    /// Seed of the instance's observation stream (histogram buckets).
    stream: u64,
    /// Scrapes generated so far.
    scrapes: u64,
    /// A counter's full-precision part ([`Values::Full`]), never shrinking.
    fraction: f64,
}

impl Series {
    fn new(
        family: &Family,
        job: &str,
        instance: usize,
        extra: Option<(&str, &str)>,
        values: Values,
        rng: &mut impl Rng,
    ) -> Series {
        let mut labels = vec![
            label("__name__", family.name),
            label("env", "prod"),
            label("instance", &format!("host-{instance:04}:9100")),
            label("job", job),
        ];
        if let Some((name, value)) = extra {
            labels.push(label(name, value));
        }
        for &(name, value) in family.fixed {
            labels.push(label(name, if value == JOB { job } else { value }));
        }
        labels.sort();
        let mut model = family.model;
        if let (Model::Bucket { share, .. }, Some(("le", le))) = (&mut model, extra) {
            *share = BUCKET_LES
                .iter()
                .position(|b| *b == le)
                .map_or(1.0, |i| BUCKET_SHARES[i]);
        }
        let stream = splitmix(instance as u64 ^ 0x5eed);
        let units = match model {
            Model::Counter { high, .. } => rng.random_range(0..=high.max(1) * 10_000),
            Model::Gauge { min, max, .. } => rng.random_range(min..=max),
            // The instance's earlier observations, cumulative like the rest.
            Model::Bucket { high, share, .. } => {
                ((splitmix(stream) % (high.max(1) as u64 * 10_000)) as f64 * share) as i64
            }
        };
        Series {
            labels,
            quantum: family.quantum,
            model,
            values,
            units,
            stream,
            scrapes: 0,
            fraction: 0.0,
            // Each instance is scraped at its own offset into the interval,
            // early enough that jitter never reaches the next scrape.
            phase_ms: (instance as i64 * 7_919) % (SCRAPE_INTERVAL_MS - MAX_JITTER_MS),
        }
    }

    /// The value after one more scrape.
    fn advance(&mut self, rng: &mut impl Rng) -> f64 {
        self.scrapes += 1;
        match self.model {
            Model::Counter { low, high, idle } => {
                if !rng.random_bool(idle) {
                    self.units += rng.random_range(low..=high);
                }
            }
            Model::Gauge {
                step,
                still,
                min,
                max,
            } => {
                if !rng.random_bool(still) {
                    self.units = (self.units + rng.random_range(-step..=step)).clamp(min, max);
                }
            }
            Model::Bucket { low, high, share } => {
                let span = (high - low + 1).max(1) as u64;
                let observed = low + (splitmix(self.stream ^ self.scrapes) % span) as i64;
                self.units += (observed as f64 * share) as i64;
            }
        }
        let value = self.units as f64 * self.quantum;
        match (self.values, self.model) {
            (Values::Full, Model::Counter { .. }) => {
                self.fraction += rng.random::<f64>() * self.quantum;
                value + self.fraction
            }
            (Values::Full, Model::Gauge { .. }) => value + rng.random::<f64>() * self.quantum,
            _ => value,
        }
    }

    fn is_counter(&self) -> bool {
        !matches!(self.model, Model::Gauge { .. })
    }
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// A label string as text: every label here is built from a `&str`.
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).expect("labels are built from strs")
}

/// The series of one benchmark run, in generation order: first the
/// [`QUERY_SERIES`] series of [`QUERY_METRIC`], then instances of the catalog.
pub struct SeriesSet {
    series: Vec<Series>,
}

impl SeriesSet {
    /// `count` series (at least [`QUERY_SERIES`]) whose values look like
    /// `values`; they start at random points drawn from `rng`.
    pub fn new(count: usize, values: Values, rng: &mut impl Rng) -> SeriesSet {
        let mut series = Vec::with_capacity(count);
        // x: 100 instances x 10 jobs, unique by (job, instance).
        for k in 0..QUERY_SERIES.min(count) {
            series.push(Series::new(
                &QUERY_FAMILY,
                JOBS[k % 10],
                k / 10,
                None,
                values,
                rng,
            ));
        }
        let per_instance: Vec<(&Family, Option<(&str, &str)>)> = CATALOG
            .iter()
            .flat_map(|family| match family.label {
                Some((name, values)) => values
                    .iter()
                    .map(|value| (family, Some((name, *value))))
                    .collect(),
                None => vec![(family, None)],
            })
            .collect();
        for j in 0..count.saturating_sub(QUERY_SERIES) {
            let instance = j / per_instance.len();
            let (family, extra) = per_instance[j % per_instance.len()];
            series.push(Series::new(
                family,
                JOBS[instance % JOBS.len()],
                instance,
                extra,
                values,
                rng,
            ));
        }
        SeriesSet { series }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Series whose model is a counter.
    pub fn counters(&self) -> usize {
        self.series.iter().filter(|s| s.is_counter()).count()
    }

    /// Type metadata of every metric family, as remote write sends it.
    fn metadata(&self) -> Vec<MetricMetadata> {
        let mut families: Vec<(&str, bool)> = self
            .series
            .iter()
            .map(|s| (text(&s.labels[0].value), s.is_counter()))
            .collect();
        families.sort();
        families.dedup();
        families
            .into_iter()
            .map(|(name, counter)| MetricMetadata {
                r#type: if counter { 1 } else { 2 },
                metric_family_name: name.into(),
                help: format!("{name} (strand-bench)"),
                unit: String::new(),
            })
            .collect()
    }

    /// Generates `rounds` scrapes of every series, the first at
    /// `start_ms` plus each instance's phase, and encodes them as requests of
    /// `samples_per_request` samples for `clients` clients: series `i` goes
    /// to client `i % clients`. Advances the series' values.
    pub fn build_requests(
        &mut self,
        clients: usize,
        samples_per_request: usize,
        rounds: usize,
        start_ms: i64,
        rng: &mut impl Rng,
    ) -> Result<Vec<Vec<Payload>>> {
        let mut metadata = self.metadata();
        let mut shards = Vec::with_capacity(clients);
        for client in 0..clients {
            let shard: Vec<usize> = (client..self.len()).step_by(clients).collect();
            let total = shard.len() * rounds;
            let mut payloads = Vec::with_capacity(total.div_ceil(samples_per_request.max(1)));
            let mut position = 0;
            while position < total {
                let end = (position + samples_per_request).min(total);
                let mut request = WriteRequest {
                    timeseries: Vec::new(),
                    // Once per run, with the first request.
                    metadata: std::mem::take(&mut metadata),
                };
                let mut slot: HashMap<usize, usize> = HashMap::new();
                for n in position..end {
                    let (round, index) = (n / shard.len(), shard[n % shard.len()]);
                    let series = &mut self.series[index];
                    let jitter = if rng.random_bool(JITTER_CHANCE) {
                        rng.random_range(1..=MAX_JITTER_MS)
                    } else {
                        0
                    };
                    let sample = Sample {
                        value: series.advance(rng),
                        timestamp: start_ms
                            + round as i64 * SCRAPE_INTERVAL_MS
                            + series.phase_ms
                            + jitter,
                    };
                    let at = *slot.entry(index).or_insert_with(|| {
                        request.timeseries.push(TimeSeries {
                            labels: series.labels.clone(),
                            samples: Vec::new(),
                        });
                        request.timeseries.len() - 1
                    });
                    request.timeseries[at].samples.push(sample);
                }
                payloads.push(Payload::encode(&request, (end - position) as u64)?);
                position = end;
            }
            shards.push(payloads);
        }
        Ok(shards)
    }
}

/// One snappy-compressed, protobuf-encoded `WriteRequest`, ready to send.
pub struct Payload {
    /// The HTTP request body.
    pub body: Vec<u8>,
    /// Samples in the request.
    pub samples: u64,
}

impl Payload {
    fn encode(request: &WriteRequest, samples: u64) -> Result<Payload> {
        let body = snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .context("snappy-compressing a WriteRequest")?;
        Ok(Payload { body, samples })
    }

    /// The request this payload encodes.
    #[cfg(test)]
    fn decode(&self) -> WriteRequest {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&self.body)
            .unwrap();
        WriteRequest::decode(raw.as_slice()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn value_of<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
        labels
            .iter()
            .find(|l| l.name == name.as_bytes())
            .map(|l| text(&l.value))
    }

    #[test]
    fn series_counts_labels_and_mix() {
        let mut rng = SmallRng::seed_from_u64(1);
        let set = SeriesSet::new(10_000, Values::Realistic, &mut rng);
        assert_eq!(set.len(), 10_000);
        let distinct: BTreeSet<&Vec<Label>> = set.series.iter().map(|s| &s.labels).collect();
        assert_eq!(distinct.len(), 10_000, "label sets must be unique");
        let x: Vec<&Series> = set
            .series
            .iter()
            .filter(|s| value_of(&s.labels, "__name__") == Some(QUERY_METRIC))
            .collect();
        assert_eq!(x.len(), QUERY_SERIES);
        assert!(x.iter().all(|s| s.is_counter()));
        let x_jobs: BTreeSet<&str> = x
            .iter()
            .filter_map(|s| value_of(&s.labels, "job"))
            .collect();
        assert_eq!(x_jobs.len(), 10);
        let counters = set.counters() as f64 / set.len() as f64;
        assert!((0.65..0.8).contains(&counters), "{counters} counters");
        let names: BTreeSet<&str> = set
            .series
            .iter()
            .filter_map(|s| value_of(&s.labels, "__name__"))
            .collect();
        assert!((30..60).contains(&names.len()), "{} names", names.len());
        let instances: BTreeSet<&str> = set
            .series
            .iter()
            .filter_map(|s| value_of(&s.labels, "instance"))
            .collect();
        assert!(
            (90..=110).contains(&instances.len()),
            "{} instances",
            instances.len()
        );
        for s in &set.series {
            assert!(s.labels.windows(2).all(|w| w[0].name < w[1].name));
            assert!((4..=7).contains(&s.labels.len()));
        }
    }

    #[test]
    fn requests_cover_every_series_in_time_order() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut set = SeriesSet::new(3_000, Values::Full, &mut rng);
        let (clients, rounds, per_request) = (4, 7, 1_000);
        let start = 1_700_000_000_000;
        let shards = set
            .build_requests(clients, per_request, rounds, start, &mut rng)
            .unwrap();
        assert_eq!(shards.len(), clients);
        let mut owner: BTreeMap<Vec<Label>, usize> = BTreeMap::new();
        let mut samples: BTreeMap<Vec<Label>, Vec<(i64, f64)>> = BTreeMap::new();
        let mut metadata = 0;
        for (client, payloads) in shards.iter().enumerate() {
            for payload in payloads {
                let request = payload.decode();
                metadata += request.metadata.len();
                let count: usize = request.timeseries.iter().map(|t| t.samples.len()).sum();
                assert_eq!(count as u64, payload.samples);
                assert!(count <= per_request);
                let mut seen = BTreeSet::new();
                for series in request.timeseries {
                    assert!(
                        seen.insert(series.labels.clone()),
                        "series twice in a request"
                    );
                    assert_eq!(
                        *owner.entry(series.labels.clone()).or_insert(client),
                        client
                    );
                    let entry = samples.entry(series.labels).or_default();
                    entry.extend(series.samples.iter().map(|s| (s.timestamp, s.value)));
                }
            }
        }
        assert!(metadata > 30, "metadata is sent once");
        assert_eq!(samples.len(), 3_000);
        for (labels, points) in &samples {
            assert_eq!(points.len(), rounds);
            assert!(
                points.windows(2).all(|w| w[0].0 < w[1].0),
                "timestamps of {labels:?} not strictly increasing"
            );
            assert!(points[0].0 >= start);
            assert!(points[rounds - 1].0 < start + rounds as i64 * SCRAPE_INTERVAL_MS);
            if value_of(labels, "__name__").is_some_and(|n| n.ends_with("_total") || n == "x") {
                assert!(
                    points.windows(2).all(|w| w[0].1 <= w[1].1),
                    "counter decreased"
                );
            }
        }
    }

    #[test]
    fn histogram_buckets_stay_cumulative() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut set = SeriesSet::new(1_500, Values::Full, &mut rng);
        let shards = set.build_requests(1, 100_000, 20, 0, &mut rng).unwrap();
        let request = shards[0][0].decode();
        let mut buckets: BTreeMap<String, Vec<(f64, Vec<f64>)>> = BTreeMap::new();
        for series in &request.timeseries {
            if value_of(&series.labels, "__name__") != Some("http_request_duration_seconds_bucket")
            {
                continue;
            }
            let le = value_of(&series.labels, "le").unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let instance = value_of(&series.labels, "instance").unwrap().to_string();
            let values = series.samples.iter().map(|s| s.value).collect();
            buckets.entry(instance).or_default().push((le, values));
        }
        assert!(!buckets.is_empty());
        for (_, mut les) in buckets {
            assert_eq!(les.len(), BUCKET_LES.len());
            les.sort_by(|a, b| a.0.total_cmp(&b.0));
            for scrape in 0..20 {
                assert!(les.windows(2).all(|w| w[0].1[scrape] <= w[1].1[scrape]));
            }
            let inf = &les.last().unwrap().1;
            assert!(inf.windows(2).all(|w| w[0] <= w[1]), "a bucket decreased");
        }
    }

    #[test]
    fn large_requests_group_samples_per_series() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut set = SeriesSet::new(1_000, Values::Realistic, &mut rng);
        let shards = set.build_requests(2, 2_000, 8, 0, &mut rng).unwrap();
        // 500 series per client, 4 scrapes per request.
        assert_eq!(shards[0].len(), 2);
        let request = shards[0][0].decode();
        assert_eq!(request.timeseries.len(), 500);
        assert!(request.timeseries.iter().all(|t| t.samples.len() == 4));
    }
}
