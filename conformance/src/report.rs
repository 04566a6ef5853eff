//! Results: the human table, the JSON report, and the diff against an expected-results file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::case::Outcome;

/// The result of one case in a run.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Case id.
    pub id: String,
    /// Clauses it checks.
    pub clauses: Vec<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// `(passed, failed, skipped)`.
pub fn counts(results: &[CaseResult]) -> (usize, usize, usize) {
    let n = |w: &str| results.iter().filter(|r| r.outcome.word() == w).count();
    (n("pass"), n("fail"), n("skip"))
}

/// The summary line, exactly `N passed, N failed, N skipped`.
pub fn summary(results: &[CaseResult]) -> String {
    let (p, f, s) = counts(results);
    format!("{p} passed, {f} failed, {s} skipped")
}

/// The human table: clause, case, result, reason; then the summary line.
pub fn table(results: &[CaseResult]) -> String {
    let cw = results
        .iter()
        .map(|r| r.clauses.join(",").len())
        .max()
        .unwrap_or(6)
        .max(6);
    let iw = results.iter().map(|r| r.id.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<cw$}  {:<iw$}  {:<6}  reason\n",
        "clause", "case", "result"
    );
    for r in results {
        out.push_str(&format!(
            "{:<cw$}  {:<iw$}  {:<6}  {}\n",
            r.clauses.join(","),
            r.id,
            r.outcome.word(),
            r.outcome.reason().replace('\n', " ")
        ));
    }
    out.push_str(&summary(results));
    out.push('\n');
    let profile: Vec<CaseResult> = results
        .iter()
        .filter(|r| r.clauses.iter().any(|c| c == crate::case::PROFILE))
        .cloned()
        .collect();
    if !profile.is_empty() {
        let (p, f, s) = counts(&profile);
        out.push_str(&format!(
            "of which profile checks (no clause, not spec failures): {p} passed, {f} failed, {s} skipped\n"
        ));
    }
    out
}

/// The JSON report: the same content as the table.
pub fn json_report(results: &[CaseResult]) -> Value {
    let (p, f, s) = counts(results);
    json!({
        "results": results.iter().map(|r| json!({
            "case": r.id,
            "clauses": r.clauses,
            "result": r.outcome.word(),
            "reason": r.outcome.reason(),
            "millis": r.elapsed.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "passed": p, "failed": f, "skipped": s,
        "summary": summary(results),
    })
}

/// One entry of an expected-results file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// `pass`, `fail` or `skip`.
    pub result: String,
    /// Why (for `fail` and `skip`).
    pub reason: String,
}

/// Parses an expected-results file:
/// `{"implementation":"..","cases":{"<case>":{"result":"pass|fail|skip","reason"?:".."}}}`.
pub fn parse_expected(text: &str) -> anyhow::Result<BTreeMap<String, Expected>> {
    let v: Value = serde_json::from_str(text)?;
    let cases = v
        .get("cases")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow::anyhow!("expected file has no \"cases\" object"))?;
    let mut out = BTreeMap::new();
    for (id, e) in cases {
        let result = e
            .get("result")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !["pass", "fail", "skip"].contains(&result.as_str()) {
            anyhow::bail!("case {id}: result must be pass, fail or skip");
        }
        let reason = e
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if result != "pass" && reason.is_empty() {
            anyhow::bail!("case {id}: a {result} needs a reason");
        }
        out.insert(id.clone(), Expected { result, reason });
    }
    Ok(out)
}

/// Writes an expected-results file from a run.
pub fn expected_file(implementation: &str, results: &[CaseResult]) -> Value {
    let mut cases = serde_json::Map::new();
    for r in results {
        let mut e = json!({ "result": r.outcome.word() });
        if !r.outcome.reason().is_empty() {
            e["reason"] = json!(r.outcome.reason());
        }
        cases.insert(r.id.clone(), e);
    }
    json!({ "implementation": implementation, "cases": cases })
}

/// Every difference between a run and the expected results, better or worse. Only the result
/// word counts (reasons may hold timings). When the run was `filtered` (`--only`, `--skip`),
/// expected cases that did not run are not reported.
pub fn diff(
    results: &[CaseResult],
    expected: &BTreeMap<String, Expected>,
    filtered: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for r in results {
        match expected.get(&r.id) {
            None => out.push(format!(
                "{}: not in the expected file (got {})",
                r.id,
                r.outcome.word()
            )),
            Some(e) if e.result != r.outcome.word() => out.push(format!(
                "{}: expected {}, got {}{}",
                r.id,
                e.result,
                r.outcome.word(),
                if r.outcome.reason().is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.outcome.reason())
                }
            )),
            Some(_) => {}
        }
    }
    if !filtered {
        for id in expected.keys() {
            if !results.iter().any(|r| &r.id == id) {
                out.push(format!(
                    "{id}: in the expected file but not run by this suite"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, o: Outcome) -> CaseResult {
        CaseResult {
            id: id.into(),
            clauses: vec!["S-1.2".into()],
            outcome: o,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn profile_checks_are_counted_apart() {
        let mut p = r(
            "dev_profile_x",
            Outcome::Fail("profile check (no clause): x".into()),
        );
        p.clauses = vec![crate::case::PROFILE.into()];
        let t = table(&[
            r("a", Outcome::Pass),
            r("b", Outcome::Fail("S-1.2 y".into())),
            p,
        ]);
        assert!(t.contains("\n1 passed, 2 failed, 0 skipped\n"), "{t}");
        assert!(
            t.ends_with("of which profile checks (no clause, not spec failures): 0 passed, 1 failed, 0 skipped\n"),
            "{t}"
        );
        let t = table(&[r("a", Outcome::Pass)]);
        assert!(!t.contains("profile"), "{t}");
    }

    #[test]
    fn diff_reports_better_and_worse() {
        let exp = parse_expected(
            r#"{"cases":{"a":{"result":"pass"},"b":{"result":"fail","reason":"x"},"c":{"result":"skip","reason":"y"}}}"#,
        )
        .unwrap();
        let same = [
            r("a", Outcome::Pass),
            r("b", Outcome::Fail("z".into())),
            r("c", Outcome::Skip("y".into())),
        ];
        assert!(diff(&same, &exp, false).is_empty());
        let changed = [
            r("a", Outcome::Fail("boom".into())),
            r("b", Outcome::Pass),
            r("d", Outcome::Pass),
        ];
        let d = diff(&changed, &exp, false);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(summary(&same) == "1 passed, 1 failed, 1 skipped");
    }

    #[test]
    fn expected_needs_reasons() {
        assert!(parse_expected(r#"{"cases":{"a":{"result":"skip"}}}"#).is_err());
        assert!(parse_expected(r#"{"cases":{"a":{"result":"maybe"}}}"#).is_err());
    }
}
