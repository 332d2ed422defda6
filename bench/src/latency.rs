//! Latency recording (hdrhistogram, nanosecond resolution) and its printable summary, shared by
//! the fsync profiler and the cluster benchmark.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Slowest latency the histogram resolves; anything slower is recorded as this (one minute).
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// Percentiles of one latency distribution, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub us_p50: f64,
    /// 90th percentile.
    pub us_p90: f64,
    /// 99th percentile.
    pub us_p99: f64,
    /// 99.9th percentile.
    pub us_p999: f64,
    /// Slowest sample.
    pub us_max: f64,
    /// Arithmetic mean.
    pub us_mean: f64,
}

/// Records latencies of one kind of operation.
#[derive(Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl LatencyRecorder {
    /// An empty recorder (1 ns to 60 s, 3 significant digits).
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
            .expect("static histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    /// Adds one sample; anything slower than a minute counts as a minute.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(ns);
    }

    /// Adds every sample of `other` (per-thread recorders merged into one).
    pub fn merge(&mut self, other: &LatencyRecorder) {
        self.histogram
            .add(&other.histogram)
            .expect("recorders share the same bounds");
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles (all zero when empty).
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let us = |ns: u64| ns as f64 / 1000.0;
        let summary = LatencySummary {
            count: h.len(),
            us_p50: us(h.value_at_quantile(0.50)),
            us_p90: us(h.value_at_quantile(0.90)),
            us_p99: us(h.value_at_quantile(0.99)),
            us_p999: us(h.value_at_quantile(0.999)),
            us_max: us(h.max()),
            us_mean: h.mean() / 1000.0,
        };
        debug_assert!(summary.us_p50 <= summary.us_p90 && summary.us_p90 <= summary.us_p99);
        debug_assert!(summary.us_p99 <= summary.us_p999 && summary.us_p999 <= summary.us_max);
        summary
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}
