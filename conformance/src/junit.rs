//! The run as JUnit XML (`--junit FILE`), the format CI servers (Jenkins, GitLab, GitHub
//! actions' reporters) read: one `<testsuite>` per side, one `<testcase>` per conformance case
//! with the case id as its name and its clauses as its class name; a failure carries the
//! case's reason, a skip its reason. `tests/fixtures/junit.xsd` is the schema the test
//! validates this output against.

use std::fmt::Write as _;

use crate::case::Outcome;
use crate::report::{CaseResult, counts};

/// `s` escaped for XML text and attribute values (control characters other than tab and
/// newline, which XML 1.0 forbids, become spaces).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML document of a run of `side` (`hub` or `device`) with `results`.
pub fn render(side: &str, results: &[CaseResult]) -> String {
    let (_, failed, skipped) = counts(results);
    let time: f64 = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let name = format!("iothub-conformance {side}");
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        r#"<testsuites name="{n}" tests="{t}" failures="{failed}" errors="0" skipped="{skipped}" time="{time:.3}">"#,
        n = escape(&name),
        t = results.len()
    );
    let _ = writeln!(
        s,
        r#"  <testsuite name="{n}" tests="{t}" failures="{failed}" errors="0" skipped="{skipped}" time="{time:.3}">"#,
        n = escape(&name),
        t = results.len()
    );
    for r in results {
        let _ = write!(
            s,
            r#"    <testcase name="{}" classname="{}" time="{:.3}""#,
            escape(&r.id),
            escape(&r.clauses.join(",")),
            r.elapsed.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Pass => s.push_str("/>\n"),
            Outcome::Fail(reason) => {
                let first = reason.lines().next().unwrap_or_default();
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                    escape(first),
                    escape(r.clauses.first().map_or("", String::as_str)),
                    escape(reason)
                );
            }
            Outcome::Skip(reason) => {
                let _ = writeln!(
                    s,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(reason)
                );
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_testcase_per_case_with_the_clause_as_class() {
        let r = |id: &str, o: Outcome| CaseResult {
            id: id.into(),
            clauses: vec!["S-3.4".into()],
            outcome: o,
            elapsed: Duration::from_millis(1500),
        };
        let xml = render(
            "hub",
            &[
                r("a", Outcome::Pass),
                r("b", Outcome::Fail("S-3.4 <bad> & \"worse\"\x01".into())),
                r("c", Outcome::Skip("needs x".into())),
            ],
        );
        assert!(
            xml.contains(r#"tests="3" failures="1" errors="0" skipped="1""#),
            "{xml}"
        );
        assert!(xml.contains(r#"<testcase name="a" classname="S-3.4" time="1.500"/>"#));
        assert!(
            xml.contains("S-3.4 &lt;bad&gt; &amp; &quot;worse&quot; </failure>"),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="needs x"/>"#));
    }
}
