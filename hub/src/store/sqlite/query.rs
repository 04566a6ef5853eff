//! The S-9.4 thing query ([`ThingQuery`]) rendered as SQLite SQL with the JSON1 functions.
//!
//! `json_extract` gives exactly the comparison rules D-32 states (they were written from it), so
//! this renderer only maps fields to columns and binds values. Every literal, JSON path and the
//! shadow name is a bound parameter (`?`, in order); the SQL text is built only from fixed
//! fragments.

use crate::query::{DEFAULT_SHADOW, Field, Filter, JsonPath, Literal, ThingQuery};

/// The SQLite JSON path (`$."a"."b"`) of `path`, prefixed by `prefix` segments. Segments are
/// quoted so `-` and leading digits need no special case; validation guarantees no `"` inside.
fn sqlite_path(path: &JsonPath, prefix: &[&str]) -> String {
    let mut p = String::from("$");
    for seg in prefix
        .iter()
        .copied()
        .chain(path.segments().iter().map(String::as_str))
    {
        p.push_str(".\"");
        p.push_str(seg);
        p.push('"');
    }
    p
}

/// A bound SQL parameter produced by [`render`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryParam {
    /// TEXT.
    Text(String),
    /// INTEGER (booleans are 1/0, as SQLite and `json_extract` represent them).
    Int(i64),
    /// REAL.
    Real(f64),
}

/// Table and column names of the SQLite schema (`store/migrations/sqlite`) the rendered SQL reads.
mod schema {
    pub const THINGS: &str = "things";
    pub const THING_ID: &str = "thing_id";
    pub const CONNECTED: &str = "connected";
    pub const ENABLED: &str = "enabled";
    pub const TAGS: &str = "tags";
    pub const SHADOWS: &str = "shadows";
    pub const SHADOW_THING: &str = "thing_id";
    pub const SHADOW_NAME: &str = "name";
    pub const SHADOW_BODY: &str = "body";
    /// The selected thing columns, in the order `store::sqlite` reads a thing row (never the
    /// password hash).
    pub const THING_COLUMNS: &str = "t.thing_id, t.enabled, t.tags, t.tags_version, t.connected, \
                                     t.connected_at, t.disconnected_at, t.created_at";
}

/// Renders `q` as a SQLite `SELECT <thing columns> FROM things t LEFT JOIN shadows s ... WHERE ...
/// ORDER BY ...` without `LIMIT`/`OFFSET` (the store appends `LIMIT ? OFFSET ?` and binds the
/// page).
///
/// Every literal, JSON path and the shadow name are bound parameters (`?`, in order); the SQL
/// text is built only from fixed fragments. The columns are those of a thing row in the order
/// `thing_id, enabled, tags, tags_version, connected, connected_at, disconnected_at, created_at`;
/// the default shadow is joined as `s` (absent shadow: every `state.*` is `NULL`).
pub fn render(q: &ThingQuery) -> (String, Vec<QueryParam>) {
    let mut r = Renderer::default();
    r.sql.push_str("SELECT ");
    r.sql.push_str(schema::THING_COLUMNS);
    r.sql.push(' ');
    r.push_from_where(q);
    r.sql.push_str(" ORDER BY ");
    for key in &q.order {
        r.field(&key.field);
        r.sql
            .push_str(if key.descending { " DESC" } else { " ASC" });
        match key.nulls_first {
            Some(true) => r.sql.push_str(" NULLS FIRST"),
            Some(false) => r.sql.push_str(" NULLS LAST"),
            None => {}
        }
        r.sql.push_str(", ");
    }
    r.sql.push_str("t.");
    r.sql.push_str(schema::THING_ID);
    r.sql.push_str(" ASC");
    (r.sql, r.params)
}

/// Renders `SELECT COUNT(*) ...` for the same filter as [`render`] (the page's `total`).
pub fn render_count(q: &ThingQuery) -> (String, Vec<QueryParam>) {
    let mut r = Renderer::default();
    r.sql.push_str("SELECT COUNT(*) ");
    r.push_from_where(q);
    (r.sql, r.params)
}

#[derive(Default)]
struct Renderer {
    sql: String,
    params: Vec<QueryParam>,
}

impl Renderer {
    fn bind(&mut self, p: QueryParam) {
        self.sql.push('?');
        self.params.push(p);
    }

    fn push_from_where(&mut self, q: &ThingQuery) {
        use schema::*;
        self.sql.push_str(&format!(
            "FROM {THINGS} t LEFT JOIN {SHADOWS} s ON s.{SHADOW_THING} = t.{THING_ID} AND s.{SHADOW_NAME} = "
        ));
        self.bind(QueryParam::Text(DEFAULT_SHADOW.to_owned()));
        if let Some(f) = &q.filter {
            self.sql.push_str(" WHERE ");
            self.filter(f);
        }
    }

    fn field(&mut self, f: &Field) {
        use schema::*;
        match f {
            Field::ThingId => self.sql.push_str(&format!("t.{THING_ID}")),
            Field::Connected => self.sql.push_str(&format!("t.{CONNECTED}")),
            Field::Enabled => self.sql.push_str(&format!("t.{ENABLED}")),
            Field::Tag(p) => {
                self.sql.push_str(&format!("json_extract(t.{TAGS}, "));
                self.bind(QueryParam::Text(sqlite_path(p, &[])));
                self.sql.push(')');
            }
            Field::Desired(p) | Field::Reported(p) => {
                let section = if matches!(f, Field::Desired(_)) {
                    "desired"
                } else {
                    "reported"
                };
                self.sql
                    .push_str(&format!("json_extract(s.{SHADOW_BODY}, "));
                self.bind(QueryParam::Text(sqlite_path(p, &["state", section])));
                self.sql.push(')');
            }
        }
    }

    fn filter(&mut self, f: &Filter) {
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.sql.push('(');
                self.filter(a);
                self.sql.push_str(if matches!(f, Filter::And(..)) {
                    " AND "
                } else {
                    " OR "
                });
                self.filter(b);
                self.sql.push(')');
            }
            Filter::Not(a) => {
                self.sql.push_str("(NOT ");
                self.filter(a);
                self.sql.push(')');
            }
            Filter::Cmp { field, op, value } => {
                self.sql.push('(');
                self.field(field);
                self.sql.push(' ');
                self.sql.push_str(op.sql());
                self.sql.push(' ');
                self.bind(match value {
                    Literal::Str(s) => QueryParam::Text(s.clone()),
                    Literal::Int(i) => QueryParam::Int(*i),
                    Literal::Float(x) => QueryParam::Real(*x),
                    Literal::Bool(b) => QueryParam::Int(i64::from(*b)),
                });
                self.sql.push(')');
            }
            Filter::IsNull { field, negated } => {
                self.sql.push('(');
                self.field(field);
                self.sql.push_str(if *negated {
                    " IS NOT NULL)"
                } else {
                    " IS NULL)"
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
