//! Metrics: counters and gauges a user reads over JSON-RPC (`metrics_get`)
//! or from the Prometheus text endpoint (`GET /metrics`).
//!
//! Parts of the node register *providers*: closures that append their
//! current samples when asked. Nothing is sampled in the background, so an
//! idle node does no metrics work.

pub mod http;
pub mod volume;

use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

/// Whether a sample only grows (counter) or goes up and down (gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value of one metric, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    pub fn counter(
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) -> Self {
        Self {
            name,
            help,
            kind: Kind::Counter,
            labels,
            value,
        }
    }
    pub fn gauge(
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: f64,
    ) -> Self {
        Self {
            name,
            help,
            kind: Kind::Gauge,
            labels,
            value,
        }
    }
}

type Provider = Box<dyn Fn(&mut Vec<Sample>) + Send + Sync>;

/// The node's metric providers.
#[derive(Default)]
pub struct Metrics {
    providers: RwLock<Vec<Provider>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, f: impl Fn(&mut Vec<Sample>) + Send + Sync + 'static) {
        self.providers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Every current sample.
    pub fn collect(&self) -> Vec<Sample> {
        let mut v = Vec::new();
        for p in self
            .providers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            p(&mut v);
        }
        v
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut samples = self.collect();
        // Group by metric name: HELP and TYPE once per metric.
        samples.sort_by(|a, b| a.name.cmp(b.name));
        let mut out = String::new();
        let mut last = "";
        for s in &samples {
            if s.name != last {
                let kind = match s.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
                let _ = writeln!(out, "# TYPE {} {}", s.name, kind);
                last = s.name;
            }
            out.push_str(s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(s.value));
        }
        out
    }

    /// The same samples as JSON, for `metrics_get`.
    pub fn render_json(&self) -> Value {
        Value::Array(
            self.collect()
                .into_iter()
                .map(|s| {
                    let labels: serde_json::Map<String, Value> = s
                        .labels
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), Value::String(v)))
                        .collect();
                    json!({"name": s.name, "labels": labels, "value": s.value})
                })
                .collect(),
        )
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Per-reactor busy and idle time from the runtime's counters.
pub fn register_reactor_metrics(metrics: &Metrics, handle: crate::rt::Handle) {
    metrics.register(move |out| {
        use std::sync::atomic::Ordering::Relaxed;
        for r in handle.reactors() {
            let l = vec![
                ("reactor", r.id().to_string()),
                ("core", r.core().map(|c| c.to_string()).unwrap_or_default()),
            ];
            let st = r.stats();
            let busy = st.busy_ns.load(Relaxed) as f64 / 1e9;
            let idle = st.idle_ns.load(Relaxed) as f64 / 1e9;
            out.push(Sample::counter(
                "ferrite_reactor_busy_seconds_total",
                "Time the reactor spent in loop iterations that did work",
                l.clone(),
                busy,
            ));
            out.push(Sample::counter(
                "ferrite_reactor_idle_seconds_total",
                "Time the reactor spent polling with nothing to do, or asleep",
                l.clone(),
                idle,
            ));
            out.push(Sample::gauge(
                "ferrite_reactor_busy_ratio",
                "Busy time over busy plus idle time since start",
                l.clone(),
                if busy + idle > 0.0 {
                    busy / (busy + idle)
                } else {
                    0.0
                },
            ));
            out.push(Sample::counter(
                "ferrite_reactor_coroutines_spawned_total",
                "Coroutines started on the reactor",
                l.clone(),
                st.coroutines_spawned.load(Relaxed) as f64,
            ));
            out.push(Sample::counter(
                "ferrite_reactor_sleeps_total",
                "Times the adaptive reactor went to sleep",
                l,
                st.sleeps.load(Relaxed) as f64,
            ));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_groups_by_metric() {
        let m = Metrics::new();
        m.register(|o| {
            o.push(Sample::counter(
                "a_total",
                "A.",
                vec![("v", "x\"y".into())],
                3.0,
            ));
            o.push(Sample::gauge("b", "B.", vec![], 0.5));
            o.push(Sample::counter(
                "a_total",
                "A.",
                vec![("v", "z".into())],
                4.0,
            ));
        });
        let t = m.render_prometheus();
        assert_eq!(t.matches("# TYPE a_total counter").count(), 1);
        assert!(t.contains("a_total{v=\"x\\\"y\"} 3\n"));
        assert!(t.contains("b 0.5\n"));
        assert_eq!(m.render_json().as_array().unwrap().len(), 3);
    }
}
