//! The S-9.4 thing query ([`ThingQuery`]) rendered as PostgreSQL SQL on `jsonb`, with the
//! comparison rules of D-32 (which are SQLite's `json_extract` rules).
//!
//! PostgreSQL's own `jsonb` comparisons differ from D-32 (they order objects above numbers, for
//! instance), so a path's value `V` (`tags::jsonb #> $path`) is never compared as `jsonb`. It is
//! classified with `jsonb_typeof` and compared the way SQLite would:
//! - a JSON `number` as `numeric`, `true`/`false` as 1/0, a `string` as text in byte order
//!   (`COLLATE "C"`), an object or array as its text;
//! - numbers (and booleans) sort before text, so comparing across the two is a constant
//!   (`1 < 'a'` is true, `1 = 'a'` false);
//! - JSON `null` and a missing path are SQL `NULL`, which no comparison matches.
//!
//! `ORDER BY` a path sorts by three keys (class, number, text) for the same order, with nulls
//! first ascending and last descending unless the query says otherwise (SQLite's default, the
//! opposite of PostgreSQL's). One difference remains: objects and arrays compare as PostgreSQL's
//! text form of `jsonb` (`{"a": 1}`, keys reordered), not as the stored text.
//!
//! Every literal, path and the shadow name is a bound parameter (`$N`); the SQL text is built only
//! from fixed fragments.

use crate::query::{CmpOp, DEFAULT_SHADOW, Field, Filter, Literal, ThingQuery};

/// A bound SQL parameter produced by [`render`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryParam {
    /// `text`.
    Text(String),
    /// A JSON path as `text[]` (for `#>`).
    Path(Vec<String>),
    /// `int8`.
    Int(i64),
    /// `float8`.
    Real(f64),
    /// `bool`.
    Bool(bool),
    /// A `NULL` of type `bool`.
    NullBool,
}

/// A rendered query: the page and the count share the leading `count_params` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `SELECT COUNT(*) …` with the filter.
    pub count_sql: String,
    /// `SELECT <thing columns> … ORDER BY … LIMIT $a OFFSET $b`, where `$a` and `$b` are the two
    /// parameters after [`Rendered::params`].
    pub page_sql: String,
    /// The parameters of the page, in order.
    pub params: Vec<QueryParam>,
    /// How many of `params` the count takes.
    pub count_params: usize,
}

/// The selected thing columns, in the order `statements::thing_from_row` reads them.
const THING_COLUMNS: &str = "t.thing_id, t.enabled, t.tags, t.tags_version, t.connected, \
                             t.connected_at, t.disconnected_at, t.created_at";

/// Renders `q` (see the module docs for the semantics).
pub fn render(q: &ThingQuery) -> Rendered {
    let mut r = Renderer::default();
    let mut from_where = String::new();
    r.push_from_where(q, &mut from_where);
    let count_params = r.params.len();
    let count_sql = format!("SELECT COUNT(*) {from_where}");

    let mut page_sql = format!("SELECT {THING_COLUMNS} {from_where} ORDER BY ");
    for key in &q.order {
        let dir = if key.descending { "DESC" } else { "ASC" };
        // SQLite's default puts NULL lowest: first ascending, last descending.
        let nulls_first = key.nulls_first.unwrap_or(!key.descending);
        let nulls = if nulls_first {
            "NULLS FIRST"
        } else {
            "NULLS LAST"
        };
        match &key.field {
            Field::ThingId | Field::Connected | Field::Enabled => {
                page_sql.push_str(&format!("{} {dir} {nulls}, ", column(&key.field)));
            }
            path => {
                let v = r.value(path);
                page_sql.push_str(&format!(
                    "CASE jsonb_typeof({v}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 \
                       WHEN 'string' THEN 2 WHEN 'object' THEN 2 WHEN 'array' THEN 2 END \
                       {dir} {nulls}, \
                     {num} {dir}, {text} {dir}, ",
                    num = number_of(&v),
                    text = text_of(&v),
                ));
            }
        }
    }
    let n = r.params.len();
    page_sql.push_str(&format!(
        "t.thing_id ASC LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    ));
    Rendered {
        count_sql,
        page_sql,
        params: r.params,
        count_params,
    }
}

fn column(f: &Field) -> &'static str {
    match f {
        Field::Connected => "t.connected",
        Field::Enabled => "t.enabled",
        _ => "t.thing_id",
    }
}

/// `V` as a number (`NULL` unless a number or boolean).
fn number_of(v: &str) -> String {
    format!(
        "(CASE jsonb_typeof({v}) WHEN 'number' THEN ({v})::numeric \
           WHEN 'boolean' THEN CASE WHEN ({v})::boolean THEN 1 ELSE 0 END END)"
    )
}

/// `V` as byte-ordered text (`NULL` unless a string, object or array).
fn text_of(v: &str) -> String {
    format!(
        "(CASE jsonb_typeof({v}) WHEN 'string' THEN {v} #>> '{{}}' \
           WHEN 'object' THEN ({v})::text WHEN 'array' THEN ({v})::text END) COLLATE \"C\""
    )
}

/// The outcome of `number OP text` (numbers sort before text), as SQL.
fn number_vs_text(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Ne | CmpOp::Lt | CmpOp::Le => "TRUE",
        CmpOp::Eq | CmpOp::Gt | CmpOp::Ge => "FALSE",
    }
}

/// The outcome of `text OP number`.
fn text_vs_number(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Ne | CmpOp::Gt | CmpOp::Ge => "TRUE",
        CmpOp::Eq | CmpOp::Lt | CmpOp::Le => "FALSE",
    }
}

#[derive(Default)]
struct Renderer {
    params: Vec<QueryParam>,
}

impl Renderer {
    /// Adds a parameter and returns its placeholder.
    fn bind(&mut self, p: QueryParam) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn push_from_where(&mut self, q: &ThingQuery, out: &mut String) {
        let shadow = self.bind(QueryParam::Text(DEFAULT_SHADOW.to_owned()));
        out.push_str(&format!(
            "FROM things t LEFT JOIN shadows s ON s.thing_id = t.thing_id AND s.name = {shadow}::text"
        ));
        if let Some(f) = &q.filter {
            out.push_str(" WHERE ");
            self.filter(f, out);
        }
    }

    /// The `jsonb` value of a path field (`NULL` when the path or the shadow is missing).
    fn value(&mut self, f: &Field) -> String {
        let (source, prefix, path) = match f {
            Field::Tag(p) => ("t.tags", &[][..], p),
            Field::Desired(p) => ("s.body", &["state", "desired"][..], p),
            Field::Reported(p) => ("s.body", &["state", "reported"][..], p),
            // The parser allows paths only here; a column still has a well-defined value.
            other => return format!("to_jsonb({})", column(other)),
        };
        let segments = prefix
            .iter()
            .map(|s| (*s).to_owned())
            .chain(path.segments().iter().cloned())
            .collect();
        let p = self.bind(QueryParam::Path(segments));
        format!("({source}::jsonb #> {p}::text[])")
    }

    fn filter(&mut self, f: &Filter, out: &mut String) {
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                out.push('(');
                self.filter(a, out);
                out.push_str(if matches!(f, Filter::And(..)) {
                    " AND "
                } else {
                    " OR "
                });
                self.filter(b, out);
                out.push(')');
            }
            Filter::Not(a) => {
                out.push_str("(NOT ");
                self.filter(a, out);
                out.push(')');
            }
            Filter::Cmp { field, op, value } => self.compare(field, *op, value, out),
            Filter::IsNull { field, negated } => {
                // JSON null is SQL NULL, as json_extract has it.
                let v = self.value(field);
                let not = if *negated { " NOT" } else { "" };
                out.push_str(&format!("(NULLIF(jsonb_typeof({v}), 'null') IS{not} NULL)"));
            }
        }
    }

    fn compare(&mut self, field: &Field, op: CmpOp, value: &Literal, out: &mut String) {
        let sql = op.sql();
        if !field.is_path() {
            let (param, ty) = match value {
                Literal::Str(s) => (QueryParam::Text(s.clone()), "text"),
                Literal::Bool(b) => (QueryParam::Bool(*b), "bool"),
                // The parser lets only strings reach thingId and booleans connected/enabled.
                Literal::Int(i) => (QueryParam::Int(*i), "int8"),
                Literal::Float(x) => (QueryParam::Real(*x), "float8"),
            };
            let p = self.bind(param);
            out.push_str(&format!("({} {sql} {p}::{ty})", column(field)));
            return;
        }
        let v = self.value(field);
        let number = match value {
            Literal::Str(s) => {
                let p = self.bind(QueryParam::Text(s.clone()));
                out.push_str(&format!(
                    "(CASE jsonb_typeof({v}) \
                       WHEN 'string' THEN ({v} #>> '{{}}') COLLATE \"C\" {sql} {p}::text \
                       WHEN 'object' THEN ({v})::text COLLATE \"C\" {sql} {p}::text \
                       WHEN 'array' THEN ({v})::text COLLATE \"C\" {sql} {p}::text \
                       WHEN 'number' THEN {c} WHEN 'boolean' THEN {c} END)",
                    c = number_vs_text(op)
                ));
                return;
            }
            Literal::Int(i) => QueryParam::Int(*i),
            Literal::Float(x) => QueryParam::Real(*x),
            Literal::Bool(b) => QueryParam::Int(i64::from(*b)),
        };
        let p = self.bind(number);
        out.push_str(&format!(
            "(CASE jsonb_typeof({v}) \
               WHEN 'number' THEN ({v})::numeric {sql} {p}::numeric \
               WHEN 'boolean' THEN (CASE WHEN ({v})::boolean THEN 1 ELSE 0 END) {sql} {p}::numeric \
               WHEN 'string' THEN {c} WHEN 'object' THEN {c} WHEN 'array' THEN {c} END)",
            c = text_vs_number(op)
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The highest `$N` in `sql`.
    fn highest_placeholder(sql: &str) -> usize {
        sql.split('$')
            .skip(1)
            .filter_map(|s| {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn values_are_bound_and_placeholders_line_up() {
        let q = ThingQuery::parse(
            "SELECT * FROM things WHERE tags.\"a-b\".c = 'x'' OR 1=1' AND NOT connected = true \
             AND state.reported.fw < 2.5 AND state.desired.y IS NOT NULL ORDER BY tags.rank DESC",
        )
        .unwrap();
        let r = render(&q);
        assert!(!r.page_sql.contains("x'") && !r.page_sql.contains("a-b"));
        assert!(r.params.contains(&QueryParam::Text("x' OR 1=1".into())));
        assert!(
            r.params
                .contains(&QueryParam::Path(vec!["a-b".into(), "c".into()]))
        );
        assert!(r.params.contains(&QueryParam::Path(vec![
            "state".into(),
            "reported".into(),
            "fw".into()
        ])));
        assert_eq!(highest_placeholder(&r.count_sql), r.count_params);
        assert_eq!(highest_placeholder(&r.page_sql), r.params.len() + 2);
        // ORDER BY binds its own path, after the filter's parameters.
        assert_eq!(r.params.len(), r.count_params + 1);
        assert!(r.page_sql.contains("DESC NULLS LAST"), "{}", r.page_sql);
    }

    #[test]
    fn default_nulls_are_sqlites() {
        let r = render(
            &ThingQuery::parse("SELECT * FROM things ORDER BY tags.a, thingId DESC").unwrap(),
        );
        assert!(r.page_sql.contains("END ASC NULLS FIRST"), "{}", r.page_sql);
        assert!(
            r.page_sql.contains("t.thing_id DESC NULLS LAST"),
            "{}",
            r.page_sql
        );
    }

    proptest! {
        #[test]
        fn every_parsed_query_renders_with_matching_placeholders(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("SELECT"), Just("*"), Just("FROM"), Just("things"), Just("WHERE"),
                    Just("tags.a"), Just("state.reported.x"), Just("="), Just("<"), Just("AND"),
                    Just("OR"), Just("NOT"), Just("("), Just(")"), Just("'s'"), Just("1"),
                    Just("-2.5"), Just("IS"), Just("NULL"), Just("ORDER BY"), Just("DESC"),
                    Just(","), Just(";"), Just("\""), Just("true"),
                ],
                0..40,
            )
        ) {
            let text = parts.join(" ");
            if let Ok(q) = ThingQuery::parse(&text) {
                let r = render(&q);
                prop_assert_eq!(highest_placeholder(&r.count_sql), r.count_params);
                prop_assert_eq!(highest_placeholder(&r.page_sql), r.params.len() + 2);
                prop_assert!(!r.page_sql.contains("'s'"));
            }
        }
    }
}
