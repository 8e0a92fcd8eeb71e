//! `compare`: renders two runs' JSON reports (a baseline server and a candidate) as the
//! markdown table `run-vs-etcd.sh` prints and writes into BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::stats::Report;

/// A server's reports plus its memory use, as the script measured them.
pub struct Side {
    pub name: String,
    pub reports: Vec<Report>,
    /// VmRSS after the workloads, KiB.
    pub rss_kib: Option<u64>,
    /// VmHWM (peak RSS) after the workloads, KiB.
    pub peak_kib: Option<u64>,
}

/// Reads a file of `--json` lines, skipping blank lines.
pub fn read_reports(path: &Path) -> anyhow::Result<Vec<Report>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: bad line {l:?}", path.display()))
        })
        .collect()
}

/// The measured value, or why there is none.
enum Cell {
    Value(f64),
    Missing(String),
}

fn cell(r: Option<&Report>, value: impl Fn(&Report) -> f64) -> Cell {
    let Some(r) = r else {
        return Cell::Missing("not run".into());
    };
    if r.ok == 0 {
        return Cell::Missing(match r.error_code.as_deref() {
            Some("Unimplemented") => "n/a (not yet implemented)".into(),
            Some(code) => format!("failed ({code})"),
            None => "no data".into(),
        });
    }
    Cell::Value(value(r))
}

fn show(c: &Cell, decimals: usize, errors: u64) -> String {
    match c {
        Cell::Value(v) if errors > 0 => format!("{v:.decimals$} ({errors} errors)"),
        Cell::Value(v) => format!("{v:.decimals$}"),
        Cell::Missing(why) => why.clone(),
    }
}

fn ratio(candidate: &Cell, baseline: &Cell) -> String {
    match (candidate, baseline) {
        (Cell::Value(c), Cell::Value(b)) if *b > 0.0 => format!("{:.2}", c / b),
        _ => "–".into(),
    }
}

fn errors(r: Option<&Report>) -> u64 {
    r.map(|r| r.errors).unwrap_or(0)
}

/// The markdown table: one row per workload (in the baseline's order, then any the
/// candidate alone has), throughput and p99 with candidate/baseline ratios, then a
/// memory table.
pub fn table(base: &Side, cand: &Side) -> String {
    let mut labels: Vec<&str> = base.reports.iter().map(|r| r.label.as_str()).collect();
    for r in &cand.reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let (b, c) = (&base.name, &cand.name);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | {b} ops/s | {c} ops/s | {c}/{b} | {b} p99 ms | {c} p99 ms | {c}/{b} |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    for label in labels {
        let rb = base.reports.iter().find(|r| r.label == label);
        let rc = cand.reports.iter().find(|r| r.label == label);
        let (tb, tc) = (cell(rb, |r| r.throughput), cell(rc, |r| r.throughput));
        let (pb, pc) = (cell(rb, |r| r.p99_ms), cell(rc, |r| r.p99_ms));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            show(&tb, 0, errors(rb)),
            show(&tc, 0, errors(rc)),
            ratio(&tc, &tb),
            show(&pb, 2, 0),
            show(&pc, 2, 0),
            ratio(&pc, &pb),
        );
    }
    // Memory in a table of its own: its columns mean something else.
    let _ = writeln!(out);
    let _ = writeln!(out, "| memory (MiB) | {b} | {c} | {c}/{b} |");
    let _ = writeln!(out, "|---|--:|--:|--:|");
    let mib = |k: Option<u64>| match k {
        Some(k) => Cell::Value(k as f64 / 1024.0),
        None => Cell::Missing("–".into()),
    };
    for (what, kib_b, kib_c) in [
        ("RSS after all workloads", base.rss_kib, cand.rss_kib),
        ("peak RSS (VmHWM)", base.peak_kib, cand.peak_kib),
    ] {
        let (mb, mc) = (mib(kib_b), mib(kib_c));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} |",
            show(&mb, 1, 0),
            show(&mc, 1, 0),
            ratio(&mc, &mb)
        );
    }
    out
}
