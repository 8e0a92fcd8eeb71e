//! Latency histograms and the report a run prints: throughput and p50/p99/p999, as
//! text for people or one JSON line for scripts.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds; values above this (60 s) are clamped rather
/// than dropped, so one stalled request still shows in the tail.
const MAX_MICROS: u64 = 60_000_000;

/// One client's (or one watcher stream's) latencies and errors, merged at the end.
pub struct Recorder {
    hist: Histogram<u64>,
    pub errors: u64,
    /// The first error seen, kept whole so a run that failed says why.
    pub first_error: Option<tonic::Status>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        // Three significant digits: 0.1% resolution at any latency, which is what p999
        // of a few-ms distribution needs.
        let hist = Histogram::new_with_bounds(1, MAX_MICROS, 3)?;
        Ok(Self {
            hist,
            errors: 0,
            first_error: None,
        })
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.hist.saturating_record(us.clamp(1, MAX_MICROS));
    }

    pub fn error(&mut self, status: tonic::Status) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(status);
        }
    }

    pub fn merge(&mut self, other: Recorder) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    /// The final report of a run that took `elapsed`.
    pub fn report(&self, workload: &str, label: &str, elapsed: Duration) -> Report {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let secs = elapsed.as_secs_f64();
        let ok = self.hist.len();
        Report {
            workload: workload.to_string(),
            label: label.to_string(),
            ok,
            errors: self.errors,
            error_code: self.first_error.as_ref().map(|s| format!("{:?}", s.code())),
            first_error: self.first_error.as_ref().map(|s| s.message().to_string()),
            secs,
            throughput: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
            mean_ms: self.hist.mean() / 1000.0,
        }
    }
}

/// What one run measured. Serialized as the `--json` line that `run-vs-etcd.sh` and
/// the `compare` subcommand read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub workload: String,
    /// The row name in a comparison table (defaults to the workload).
    pub label: String,
    /// Successful operations (requests, or delivered events for watch-latency).
    pub ok: u64,
    pub errors: u64,
    /// The gRPC code of the first error (`Unimplemented`, `Unavailable`, ...).
    pub error_code: Option<String>,
    pub first_error: Option<String>,
    pub secs: f64,
    /// Successful operations per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Report {
    /// Prints the report, as one JSON line or as a short human summary.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        println!(
            "{}: {} ok, {} errors in {:.2}s: {:.1} ops/s",
            self.label, self.ok, self.errors, self.secs, self.throughput
        );
        println!(
            "latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  mean {:.3}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms
        );
        if let (Some(code), Some(msg)) = (&self.error_code, &self.first_error) {
            println!("first error: {code}: {msg}");
        }
        Ok(())
    }
}
