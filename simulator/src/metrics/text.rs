//! The Prometheus text exposition format (version 0.0.4), written line by line: `# HELP` and
//! `# TYPE` headers, samples with escaped labels, counters, gauges and latency summaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::QUANTILES;

/// Prometheus text, written line by line.
pub(super) struct Writer(pub(super) String);

impl Writer {
    pub(super) fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        self.0.push(' ');
        value.write(&mut self.0);
        self.0.push('\n');
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, help, "counter");
        self.sample(name, &[], v);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], v);
    }

    pub(super) fn kinds(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counts: &BTreeMap<String, u64>,
    ) {
        self.header(name, help, "counter");
        for (kind, n) in counts {
            self.sample(name, &[(label, kind)], *n);
        }
    }

    pub(super) fn summary(&mut self, name: &str, interaction: &str, h: &Histogram<u64>) {
        let secs = |us: u64| us as f64 / 1e6;
        for q in QUANTILES {
            let v = if h.is_empty() {
                f64::NAN
            } else {
                secs(h.value_at_quantile(q))
            };
            let q = q.to_string();
            self.sample(name, &[("interaction", interaction), ("quantile", &q)], v);
        }
        let sum = h.mean() * h.len() as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[("interaction", interaction)], sum);
        self.sample(
            &format!("{name}_count"),
            &[("interaction", interaction)],
            h.len(),
        );
    }
}

/// A sample value in the text format.
pub(super) trait Value {
    fn write(self, out: &mut String);
}

impl Value for u64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
