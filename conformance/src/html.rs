//! The run as one HTML page (`--html FILE`): the summary, then one table per clause with its
//! cases, results and reasons; failures first and in full, each with the messages its case
//! exchanged ([`crate::transcript`]), escaped. Self-contained (no script, nothing
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
        s.push_str("<h2>Failures</h2><table><tr><th>clause</th><th>case</th><th>reason and exchanged messages</th></tr>");
        for r in failures {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td><pre class="fail">{}</pre>"#,
                escape(&r.clauses.join(", ")),
                escape(&r.id),
                escape(r.outcome.reason())
            );
            if !r.exchange.is_empty() {
                // Folded: a failing case may have exchanged a few hundred messages.
                let _ = write!(
                    s,
                    r#"<details class="exchange"><summary>{} exchanged message(s)</summary><pre>{}</pre></details>"#,
                    r.exchange.len(),
                    escape(&r.exchange.join("\n"))
                );
            }
            s.push_str("</td></tr>");
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_failure_shows_its_exchange_escaped() {
        let results = [
            CaseResult {
                id: "s3_x".into(),
                clauses: vec!["S-3.3".into()],
                outcome: Outcome::Fail("S-3.3 update <refused>".into()),
                elapsed: Duration::from_millis(3),
                exchange: vec![
                    "+  0.001s [v5] t -> PUBLISH a/b qos1 {\"x\":\"<script>\"}".into(),
                    "+  0.002s [v5] t <- PUBACK 0x87".into(),
                ],
            },
            CaseResult {
                id: "s3_y".into(),
                clauses: vec!["S-3.3".into()],
                outcome: Outcome::Pass,
                elapsed: Duration::from_millis(3),
                exchange: Vec::new(),
            },
        ];
        let page = render("hub", "127.0.0.1:1883", &results);
        assert!(page.contains("2 exchanged message(s)"), "{page}");
        assert!(page.contains("PUBLISH a/b qos1 {&quot;x&quot;:&quot;&lt;script&gt;&quot;}"));
        assert!(page.contains("&lt;- PUBACK 0x87"));
        assert!(page.contains("S-3.3 update &lt;refused&gt;"));
        assert!(!page.contains("<script>"));
        assert_eq!(page.matches("<details").count(), 1, "only the failure");
    }
}
