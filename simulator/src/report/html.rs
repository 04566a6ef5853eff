//! The report as one self-contained HTML page (`--report-html`): the summary, thresholds and
//! latency table, and four charts drawn as inline SVG by this module: throughput and update
//! latency over time, the latency distribution (percentile curves from the recorded
//! histograms), connections over time. No script, no stylesheet or font from elsewhere: the
//! file opens offline and can be attached to a CI run as it is.

use std::fmt::Write as _;

use super::{EMPTY, Report, histogram_of};

/// Chart size in SVG units.
const W: f64 = 760.0;
const H: f64 = 280.0;
/// Margins: left (axis labels), right, top (title), bottom (axis labels, legend).
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 28.0;
const MB: f64 = 52.0;

/// Line colours, in order.
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One line of a chart: its name and its points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// How the x axis is labelled.
enum XAxis {
    /// Linear, with this unit after each tick.
    Linear(&'static str),
    /// Percentile "nines": x = -log10(1 - q), ticks at 0, 90, 99, 99.9, 99.99 %.
    Nines,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis whose data reach `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&v| v >= max)
        .unwrap_or(10.0 * mag)
}

fn fmt_tick(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart as an `<svg class="chart">` element; an empty chart says so in its place.
fn chart(id: &str, title: &str, y_unit: &str, x: XAxis, lines: &[Line]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/><text x="{ML}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (x_min, x_max, y_max) = all.fold((f64::MAX, f64::MIN, 0.0f64), |(a, b, c), &(x, y)| {
        (a.min(x), b.max(x), c.max(y))
    });
    if x_min > x_max {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" font-size="13" fill="#777">no samples</text></svg>"##,
            W / 2.0 - 30.0,
            H / 2.0
        );
        return s;
    }
    let (x_min, x_max) = match x {
        XAxis::Nines => (0.0, x_max.max(2.0)),
        XAxis::Linear(_) if x_max > x_min => (x_min, x_max),
        XAxis::Linear(_) => (x_min, x_min + 1.0),
    };
    let y_top = nice_max(y_max);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let px = |x: f64| ML + (x - x_min) / (x_max - x_min) * pw;
    let py = |y: f64| MT + ph - y / y_top * ph;
    // Grid and y ticks.
    for k in 0..=4 {
        let v = y_top * f64::from(k) / 4.0;
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    let _ = write!(
        s,
        r#"<text x="12" y="{:.1}" font-size="11" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        MT + ph / 2.0,
        MT + ph / 2.0,
        escape(y_unit)
    );
    // X ticks.
    let ticks: Vec<(f64, String)> = match x {
        XAxis::Linear(unit) => (0..=5)
            .map(|k| {
                let v = x_min + (x_max - x_min) * f64::from(k) / 5.0;
                (v, format!("{}{unit}", fmt_tick(v)))
            })
            .collect(),
        XAxis::Nines => ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
            .map(|(k, l)| (k as f64, (*l).to_owned()))
            .filter(|(v, _)| *v <= x_max)
            .collect(),
    };
    for (v, label) in ticks {
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            MT + ph,
            MT + ph + 4.0,
            MT + ph + 16.0,
            escape(&label),
            x = px(v)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for (i, line) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            escape(&line.name),
            pts.join(" ")
        );
        let lx = ML + 150.0 * i as f64;
        let ly = H - 12.0;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{ly:.1}" font-size="12">{}</text>"#,
            ly - 5.0,
            lx + 18.0,
            escape(&line.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// The four charts of a report.
fn charts(r: &Report) -> Vec<String> {
    let over_time = |name: &str, f: &dyn Fn(&super::Point) -> Option<f64>| Line {
        name: name.to_owned(),
        points: r
            .series
            .iter()
            .filter_map(|p| f(p).map(|v| (p.t_s, v)))
            .collect(),
    };
    let throughput = chart(
        "throughput",
        "Shadow updates per second",
        "updates/s",
        XAxis::Linear("s"),
        &[
            over_time("sent", &|p| Some(p.sent as f64)),
            over_time("accepted", &|p| Some(p.accepted as f64)),
            over_time("errors", &|p| Some(p.errors as f64)),
        ],
    );
    let latency = chart(
        "latency",
        "Update latency over time (per second)",
        "ms",
        XAxis::Linear("s"),
        &[
            over_time("p50", &|p| p.update_p50_ms),
            over_time("p99", &|p| p.update_p99_ms),
        ],
    );
    // Percentile curves of the busiest interactions, from the recorded buckets: the first four
    // with samples (one colour each, and room for their legend).
    let mut curves = Vec::new();
    for name in [
        "update_to_accepted",
        "connect",
        "convergence",
        "method_rtt",
        "rollout",
        "job_thing",
    ] {
        if curves.len() == COLOURS.len() {
            break;
        }
        let Some(b) = r.histograms.get(name) else {
            continue;
        };
        let h = histogram_of(b);
        if h.is_empty() {
            continue;
        }
        let points = (0..=50)
            .map(|k| {
                // Up to five nines, evenly spaced in "nines".
                let nines = f64::from(k) / 10.0;
                let q = 1.0 - 10f64.powf(-nines);
                (nines, h.value_at_quantile(q) as f64 / 1000.0)
            })
            .collect();
        curves.push(Line {
            name: name.replace('_', " "),
            points,
        });
    }
    let distribution = chart(
        "distribution",
        "Latency distribution (percentiles)",
        "ms",
        XAxis::Nines,
        &curves,
    );
    let connects = chart(
        "connects",
        "Connections",
        "things",
        XAxis::Linear("s"),
        &[
            over_time("connected", &|p| Some(p.connected as f64)),
            over_time("connects/s", &|p| Some(p.connects as f64)),
        ],
    );
    vec![throughput, latency, distribution, connects]
}

/// The fleet operations section: one table each for the configuration rollout and the method
/// job, when the run had them.
fn fleet_ops(s: &mut String, r: &Report) {
    if r.rollout.is_none() && r.method_job.is_none() {
        return;
    }
    s.push_str("<h2>Fleet operations</h2>");
    let secs = |v: Option<f64>| v.map_or(EMPTY.to_owned(), |v| format!("{v:.1} s"));
    let ms = |p: &super::Percentiles, v: f64| {
        if p.count == 0 {
            EMPTY.to_owned()
        } else {
            format!("{v:.0} ms")
        }
    };
    let table = |s: &mut String, id: &str, rows: &[(&str, String)]| {
        let _ = write!(
            s,
            r#"<table id="{id}"><tr><th>figure</th><th>value</th></tr>"#
        );
        for (name, value) in rows {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(value)
            );
        }
        s.push_str("</table>");
    };
    if let Some(c) = &r.rollout {
        let l = &r.latency.rollout;
        let _ = write!(
            s,
            "<h3>Configuration rollout <code>{}</code>: {}={}</h3>",
            escape(&c.configuration),
            crate::fleet_ops::ROLLOUT_KEY,
            c.value
        );
        table(
            s,
            "rollout",
            &[
                ("things", c.things.to_string()),
                ("converged (reported)", c.converged.to_string()),
                ("all applied (hub counts)", secs(c.all_applied_s)),
                ("all succeeded (hub counts)", secs(c.all_succeeded_s)),
                ("created->reported p50", ms(l, l.p50_ms)),
                ("created->reported p99", ms(l, l.p99_ms)),
                ("created->reported max", ms(l, l.max_ms)),
                ("hub counts at the end", format!("{:?}", c.counts)),
                (
                    "hub cpu",
                    format!("{} over {:.1} s", secs(c.hub_cpu_s), c.elapsed_s),
                ),
                ("errors", format!("{:?}", c.errors)),
            ],
        );
    }
    if let Some(j) = &r.method_job {
        let l = &r.latency.job_thing;
        let _ = write!(
            s,
            "<h3>Method job <code>{}</code>: {} at {}/min</h3>",
            escape(&j.job_id),
            escape(&j.method),
            j.max_per_minute
        );
        table(
            s,
            "method-job",
            &[
                ("things", j.things.to_string()),
                ("status", j.status.clone()),
                ("created->ended", secs(j.duration_s)),
                ("pacing alone", secs(Some(j.nominal_s))),
                (
                    "achieved per minute",
                    j.achieved_per_minute
                        .map_or(EMPTY.to_owned(), |v| format!("{v:.0}")),
                ),
                ("counts", format!("{:?}", j.counts)),
                ("per-thing records", j.records.to_string()),
                ("start->succeeded p50", ms(l, l.p50_ms)),
                ("start->succeeded p99", ms(l, l.p99_ms)),
                ("start->succeeded max", ms(l, l.max_ms)),
                (
                    "hub cpu",
                    format!("{} over {:.1} s", secs(j.hub_cpu_s), j.elapsed_s),
                ),
                ("errors", format!("{:?}", j.errors)),
            ],
        );
    }
}

/// The page.
pub fn render(r: &Report) -> String {
    let mut s = String::with_capacity(64 * 1024);
    s.push_str(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>iothub-sim report</title><style>
body{font-family:sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#186a1e}.fail{color:#b00020;font-weight:bold}
svg.chart{display:block;margin:8px 0 20px;border:1px solid #ddd}code{background:#f3f3f3;padding:1px 4px}
</style></head><body>"#,
    );
    let _ = write!(
        s,
        "<h1>iothub-sim report</h1><p>{}</p><p><code>{}</code></p>",
        escape(&r.versions.describe()),
        escape(&r.scenario_line())
    );
    let verdict = if r.is_clean() && r.thresholds_passed() {
        r#"<span class="pass">passed</span>"#
    } else {
        r#"<span class="fail">failed</span>"#
    };
    let _ = write!(
        s,
        "<p>Run {verdict}: {} things ({} connected) in {} shard(s); {} updates sent, {} accepted \
         ({:.0}/s over {:.1} s); {} errors.</p>",
        r.things,
        r.connected,
        r.shards.len(),
        r.sent,
        r.accepted,
        r.accepted_per_sec,
        r.duration_s,
        r.errors()
    );
    if r.provisioning.things > 0 {
        let _ = write!(
            s,
            "<p>Provisioning: {}.</p>",
            escape(&r.provisioning_line())
        );
    }
    fleet_ops(&mut s, r);
    if !r.thresholds.is_empty() {
        s.push_str(
            "<h2>Thresholds</h2><table><tr><th>threshold</th><th>actual</th><th>verdict</th></tr>",
        );
        for c in &r.thresholds {
            let (class, word) = if c.passed {
                ("pass", "passed")
            } else {
                ("fail", "FAILED")
            };
            let actual = c.actual.map_or(EMPTY.to_owned(), |v| format!("{v:.3}"));
            let _ = write!(
                s,
                r#"<tr><td><code>{}</code></td><td>{actual}</td><td class="{class}">{word}</td></tr>"#,
                escape(&c.threshold)
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Latency (ms)</h2><table><tr><th>interaction</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (name, p) in r.rows() {
        let _ = write!(s, "<tr><td>{}</td><td>{}</td>", escape(name), p.count);
        for v in [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms] {
            if p.count == 0 {
                let _ = write!(s, "<td>{EMPTY}</td>");
            } else {
                let _ = write!(s, "<td>{v:.2}</td>");
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table><h2>Charts</h2>");
    for c in charts(r) {
        s.push_str(&c);
    }
    let _ = write!(
        s,
        "<h2>Details</h2><pre>{}</pre></body></html>",
        escape(&r.table())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.3), 10.0);
        assert_eq!(nice_max(1800.0), 2000.0);
        assert_eq!(nice_max(0.23), 0.25);
    }

    #[test]
    fn a_chart_without_points_says_so() {
        let svg = chart("x", "T <1>", "ms", XAxis::Linear("s"), &[]);
        assert!(
            svg.contains("no samples") && svg.contains("T &lt;1&gt;"),
            "{svg}"
        );
        assert!(!svg.contains("<polyline"));
        let svg = chart(
            "x",
            "T",
            "ms",
            XAxis::Linear("s"),
            &[Line {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 3.0)],
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
    }
}
