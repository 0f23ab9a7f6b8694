//! What a run found, in two forms from the same data: a human summary on
//! stdout, or (`--json`) one JSON object with the scenario, its parameters,
//! its figures, histogram percentiles in microseconds, failures and hints.
//! Also the side-by-side comparison of a baseline run and a Switchboard run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::procfs::Sample;

/// One run's results, in the order they are printed.
#[derive(Debug)]
pub(crate) struct Report {
    scenario: String,
    /// `switchboard` or `baseline`: which server was measured.
    server: String,
    params: Vec<(String, Value)>,
    figures: Vec<(String, Value, &'static str)>,
    histograms: Vec<(String, Histogram<u64>)>,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(scenario: &str, server: &str) -> Self {
        Report {
            scenario: scenario.to_string(),
            server: server.to_string(),
            params: Vec::new(),
            figures: Vec::new(),
            histograms: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.push((key.to_string(), value.into()));
    }

    /// A measured figure; `unit` is shown to humans only (the JSON key
    /// already says it, e.g. `deliveries_per_s`).
    pub(crate) fn figure(&mut self, key: &str, value: impl Into<Value>, unit: &'static str) {
        self.figures.push((key.to_string(), value.into(), unit));
    }

    /// A rate: `count / seconds`, rounded to 0.1.
    pub(crate) fn rate(&mut self, key: &str, count: u64, seconds: f64) {
        let r = if seconds > 0.0 {
            (count as f64 / seconds * 10.0).round() / 10.0
        } else {
            0.0
        };
        self.figure(key, r, "/s");
    }

    /// A map of counts (close codes, error codes); omitted when empty.
    pub(crate) fn counts(&mut self, key: &str, counts: BTreeMap<String, u64>) {
        if !counts.is_empty() {
            let map: Map<String, Value> = counts.into_iter().map(|(k, v)| (k, v.into())).collect();
            self.figure(key, Value::Object(map), "");
        }
    }

    pub(crate) fn histogram(&mut self, key: &str, h: Histogram<u64>) {
        self.histograms.push((key.to_string(), h));
    }

    /// Makes the run fail (non-zero exit) with this reason.
    pub(crate) fn fail(&mut self, reason: impl Into<String>) {
        self.failures.push(reason.into());
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub(crate) fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Memory and CPU of the server between two samples.
    pub(crate) fn server_usage(&mut self, pid: u32, before: Sample, after: Sample) {
        self.param("server_pid", pid);
        if let (Some(b), Some(a)) = (before.rss_kib, after.rss_kib) {
            self.figure("server_rss_before_kib", b, "KiB");
            self.figure("server_rss_after_kib", a, "KiB");
        }
        if let (Some(b), Some(a)) = (before.cpu_s, after.cpu_s) {
            self.figure("server_cpu_s", ((a - b) * 100.0).round() / 100.0, "s");
        }
    }

    /// A figure's value, for comparisons.
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(k, _, _)| k == key)
            .and_then(|(_, v, _)| v.as_f64())
    }

    /// A histogram percentile in µs, for comparisons.
    pub(crate) fn percentile(&self, key: &str, q: f64) -> Option<u64> {
        self.histograms
            .iter()
            .find(|(k, _)| k == key)
            .filter(|(_, h)| !h.is_empty())
            .map(|(_, h)| h.value_at_quantile(q))
    }

    pub(crate) fn to_json(&self) -> Value {
        let obj =
            |pairs: &[(String, Value)]| -> Value { Value::Object(pairs.iter().cloned().collect()) };
        let figures: Map<String, Value> = self
            .figures
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let histograms: Map<String, Value> = self
            .histograms
            .iter()
            .map(|(k, h)| (k.clone(), histogram_json(h)))
            .collect();
        json!({
            "scenario": self.scenario,
            "server": self.server,
            "ok": self.ok(),
            "parameters": obj(&self.params),
            "figures": figures,
            "histograms_us": histograms,
            "failures": self.failures,
            "notes": self.notes,
        })
    }

    pub(crate) fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {} against {}: {}",
            self.scenario,
            self.server,
            if self.ok() { "OK" } else { "FAILED" }
        );
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect();
        let _ = writeln!(out, "   parameters: {}", params.join(" "));
        for (k, v, unit) in &self.figures {
            let _ = writeln!(out, "   {k:<28} {}{}", plain(v), unit_suffix(unit));
        }
        for (k, h) in &self.histograms {
            if h.is_empty() {
                let _ = writeln!(out, "   {k:<28} (no samples)");
                continue;
            }
            let _ = writeln!(
                out,
                "   {k:<28} p50 {} p90 {} p99 {} p99.9 {} max {}  (n={})",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                h.len()
            );
        }
        for f in &self.failures {
            let _ = writeln!(out, "   FAILURE: {f}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "   note: {n}");
        }
        out
    }
}

/// Percentiles of a histogram of microseconds.
pub(crate) fn histogram_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn unit_suffix(unit: &str) -> String {
    match unit {
        "" => String::new(),
        "/s" => "/s".to_string(),
        u => format!(" {u}"),
    }
}

/// Microseconds shown as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

/// What to compare between a baseline and a Switchboard run: figures where
/// higher is better, and latency histograms.
pub(crate) struct Comparison<'a> {
    pub(crate) rates: &'a [&'a str],
    pub(crate) latencies: &'a [&'a str],
}

impl Comparison<'_> {
    /// Switchboard ÷ baseline for each rate and latency percentile.
    pub(crate) fn ratios(&self, baseline: &Report, switchboard: &Report) -> Map<String, Value> {
        let mut ratios = Map::new();
        for key in self.rates {
            if let (Some(b), Some(s)) = (baseline.get(key), switchboard.get(key)) {
                if b > 0.0 {
                    ratios.insert(key.to_string(), round3(s / b).into());
                }
            }
        }
        for key in self.latencies {
            for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
                if let (Some(b), Some(s)) =
                    (baseline.percentile(key, q), switchboard.percentile(key, q))
                {
                    ratios.insert(format!("{key}_{name}"), round3(s as f64 / b as f64).into());
                }
            }
        }
        ratios
    }

    pub(crate) fn json(&self, baseline: &Report, switchboard: &Report) -> Value {
        json!({
            "scenario": switchboard.scenario,
            "compare": true,
            "ok": baseline.ok() && switchboard.ok(),
            "baseline": baseline.to_json(),
            "switchboard": switchboard.to_json(),
            "ratio_switchboard_to_baseline": self.ratios(baseline, switchboard),
        })
    }

    pub(crate) fn human(&self, baseline: &Report, switchboard: &Report) -> String {
        let mut out = baseline.human();
        out.push('\n');
        out.push_str(&switchboard.human());
        out.push_str("\n== switchboard / baseline (same run, same machine)\n");
        for (k, v) in self.ratios(baseline, switchboard) {
            let _ = writeln!(out, "   {k:<28} {}x", plain(&v));
        }
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    fn sample_report(server: &str, rate: f64, latency_us: u64) -> Report {
        let mut r = Report::new("group", server);
        r.param("members", 10);
        r.figure("deliveries_per_s", rate, "/s");
        r.counts("close_codes", BTreeMap::from([("4008".to_string(), 2)]));
        let mut h = new_histogram();
        for _ in 0..100 {
            h.record(latency_us).unwrap();
        }
        r.histogram("delivery_latency", h);
        r
    }

    #[test]
    fn json_shape() {
        let mut r = sample_report("switchboard", 1000.0, 250);
        r.histogram("empty", new_histogram());
        let v = r.to_json();
        assert_eq!(v["scenario"], "group");
        assert_eq!(v["server"], "switchboard");
        assert_eq!(v["ok"], true);
        assert_eq!(v["parameters"]["members"], 10);
        assert_eq!(v["figures"]["deliveries_per_s"], 1000.0);
        assert_eq!(v["figures"]["close_codes"]["4008"], 2);
        let h = &v["histograms_us"]["delivery_latency"];
        for key in ["count", "min", "p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(h[key].is_number(), "{key} in {h}");
        }
        assert_eq!(h["count"], 100);
        // 3 significant figures: 250 µs is exact.
        assert_eq!(h["p99"], 250);
        assert_eq!(v["histograms_us"]["empty"], json!({"count": 0}));
        r.fail("2 gaps");
        let v = r.to_json();
        assert_eq!(v["ok"], false);
        assert_eq!(v["failures"][0], "2 gaps");
        assert!(r.human().contains("FAILURE: 2 gaps"));
    }

    #[test]
    fn comparison_ratios() {
        let base = sample_report("baseline", 2000.0, 100);
        let sb = sample_report("switchboard", 1000.0, 300);
        let c = Comparison {
            rates: &["deliveries_per_s"],
            latencies: &["delivery_latency"],
        };
        let v = c.json(&base, &sb);
        assert_eq!(v["ratio_switchboard_to_baseline"]["deliveries_per_s"], 0.5);
        assert_eq!(
            v["ratio_switchboard_to_baseline"]["delivery_latency_p99"],
            3.0
        );
        assert_eq!(v["baseline"]["server"], "baseline");
        assert!(c.human(&base, &sb).contains("deliveries_per_s"));
    }

    #[test]
    fn rates_round() {
        let mut r = Report::new("x", "switchboard");
        r.rate("per_s", 10, 3.0);
        r.rate("zero", 10, 0.0);
        assert_eq!(r.get("per_s"), Some(3.3));
        assert_eq!(r.get("zero"), Some(0.0));
    }
}
