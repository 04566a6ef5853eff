//! The run as one HTML page (`--html FILE`): the summary, then one table per clause with its
//! cases, results and reasons; failures first and in full. Self-contained (no script, nothing
//! fetched), so it can be kept as a CI artefact.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::case::Outcome;
use crate::report::{CaseResult, summary};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page of a run of `side` against `target` (a description of the hub or device).
pub fn render(side: &str, target: &str, results: &[CaseResult]) -> String {
    let mut s = String::from(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>iothub-conformance report</title><style>
body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:6px 0 18px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.pass{color:#186a1e}.fail{color:#b00020;font-weight:bold}.skip{color:#777}pre{white-space:pre-wrap;margin:0}
</style></head><body>"#,
    );
    let _ = write!(
        s,
        "<h1>iothub-conformance {}</h1><p>{}</p><p><b>{}</b></p>",
        escape(side),
        escape(target),
        escape(&summary(results))
    );
    let failures: Vec<&CaseResult> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .collect();
    if !failures.is_empty() {
        s.push_str("<h2>Failures</h2><table><tr><th>clause</th><th>case</th><th>reason</th></tr>");
        for r in failures {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td class="fail"><pre>{}</pre></td></tr>"#,
                escape(&r.clauses.join(", ")),
                escape(&r.id),
                escape(r.outcome.reason())
            );
        }
        s.push_str("</table>");
    }
    let mut by_clause: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        for c in &r.clauses {
            by_clause.entry(c.as_str()).or_default().push(r);
        }
    }
    s.push_str("<h2>By clause</h2>");
    for (clause, rs) in by_clause {
        let _ = write!(
            s,
            "<h3>{}</h3><table><tr><th>case</th><th>result</th><th>ms</th><th>reason</th></tr>",
            escape(clause)
        );
        for r in rs {
            let word = r.outcome.word();
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="{word}">{word}</td><td>{}</td><td><pre>{}</pre></td></tr>"#,
                escape(&r.id),
                r.elapsed.as_millis(),
                escape(r.outcome.reason())
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}
