//! The Prometheus text exposition format (version 0.0.4), written line by line: `# HELP` and
//! `# TYPE` headers, samples with escaped labels, counters, gauges and latency summaries.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::QUANTILES;

/// Prometheus text, written line by line; `shard` (`I/N`, empty for an unsharded run) labels
/// every sample, so one Prometheus scraping every shard of a distributed run can aggregate them.
pub(super) struct Writer {
    pub(super) out: String,
    pub(super) shard: String,
}

impl Writer {
    pub(super) fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(name);
        let shard = [("shard", self.shard.as_str())];
        let all = labels
            .iter()
            .chain(shard.iter().filter(|(_, v)| !v.is_empty()));
        let mut first = true;
        for (k, v) in all {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(self.out, "{k}=\"{}\"", escape(v));
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
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
