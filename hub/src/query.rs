//! The thing query language of S-9.4: parsed with `sqlparser`, checked against a tiny grammar,
//! turned into a typed [`ThingQuery`], and rendered to SQLite SQL whose every user-supplied value
//! (literals *and* JSON paths) is a bound parameter. User text is never spliced into SQL.
//!
//! Accepted: `SELECT * FROM things [WHERE <cond>] [ORDER BY <field> [ASC|DESC] [NULLS FIRST|LAST], ..]`.
//!
//! - Fields: `thingId`, `connected`, `enabled`, `tags.<path>`, `state.desired.<path>`,
//!   `state.reported.<path>` (the `default` shadow). A path is dot-separated segments of
//!   `[0-9A-Za-z_-]`; segments that are not plain SQL identifiers (`tags."x-y"`) may be quoted.
//! - tio's spelling is accepted too (docs/tio-compatibility.md): `FROM shadow` for `FROM things`,
//!   and a whole field in backticks (`` `tags.zone` ``), split at its dots.
//! - Conditions: `AND`, `OR`, `NOT`, parentheses, `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`,
//!   `IS NULL`, `IS NOT NULL`. The other side of a comparison is a literal: a `'string'`, a
//!   number, `TRUE` or `FALSE`.
//!
//! Comparison semantics are SQLite's for `json_extract` values, on purpose (one rule, no
//! surprises from the hub re-implementing SQL): a JSON string compares as TEXT (binary
//! collation, so `state.reported.fw < '2.0'` is a *lexicographic* comparison), a JSON number as
//! INTEGER/REAL, `true`/`false` as 1/0 (so `tags.flag = true` also matches `1`), and across
//! storage classes numbers sort before text. A missing path is SQL `NULL`: it matches
//! `IS NULL` and no comparison at all (not even `!=`). Objects and arrays compare as their JSON
//! text. Things without a default shadow see every `state.*` path as `NULL`.

use std::fmt;

mod parse;

/// Longest query text accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 4096;
/// Most comparisons and `IS NULL` tests in one query.
pub const MAX_PREDICATES: usize = 64;
/// Deepest nesting of `AND`/`OR`/`NOT` accepted.
pub const MAX_DEPTH: usize = 32;
/// Most `ORDER BY` keys.
pub const MAX_ORDER_KEYS: usize = 8;
/// Deepest parenthesis nesting accepted (checked on the tokens, before parsing).
pub const MAX_PAREN_DEPTH: usize = 8;
/// Most `NOT`s in one query (checked before parsing).
pub const MAX_NOTS: usize = 16;
/// Most segments in a JSON path.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// The shadow that `state.*` fields read (S-9.4: the classic shadow).
pub use iothub_spec::ids::DEFAULT_SHADOW;

/// Why a query was refused. Every variant is the caller's fault (HTTP 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The text is not SQL the parser understands.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The text is longer than [`MAX_QUERY_LEN`].
    #[error("query longer than {MAX_QUERY_LEN} bytes")]
    TooLong,
    /// Not exactly one statement.
    #[error("expected exactly one SELECT statement")]
    NotOneStatement,
    /// A statement other than `SELECT * FROM things ...`, or a clause we do not support.
    #[error("only `SELECT * FROM things [WHERE ..] [ORDER BY ..]` is supported")]
    Shape,
    /// A field that is not one of the queryable fields.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A JSON path segment outside `[0-9A-Za-z_-]+`, or too many segments.
    #[error("invalid path `{0}`")]
    InvalidPath(String),
    /// An operator or expression we do not support.
    #[error("unsupported expression: {0}")]
    Unsupported(String),
    /// A literal of the wrong type for its field (e.g. `connected = 'yes'`).
    #[error("type mismatch: {0}")]
    Type(String),
    /// Too many predicates, too deep, or too many ORDER BY keys.
    #[error("query too complex")]
    TooComplex,
}

/// A JSON path below `tags` or a shadow section, as validated segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// Builds a path from segments, each matching `[0-9A-Za-z_-]+`.
    pub fn new(segments: Vec<String>) -> Result<Self, QueryError> {
        let valid = !segments.is_empty()
            && segments.len() <= MAX_PATH_SEGMENTS
            && segments.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if valid {
            Ok(JsonPath(segments))
        } else {
            Err(QueryError::InvalidPath(segments.join(".")))
        }
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The SQLite JSON path (`$."a"."b"`), prefixed by `prefix` segments. Segments are quoted
    /// so `-` and leading digits need no special case; validation guarantees no `"` inside.
    fn sqlite_path(&self, prefix: &[&str]) -> String {
        let mut p = String::from("$");
        for seg in prefix
            .iter()
            .copied()
            .chain(self.0.iter().map(String::as_str))
        {
            p.push_str(".\"");
            p.push_str(seg);
            p.push('"');
        }
        p
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A queryable field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `thingId` (string).
    ThingId,
    /// `connected` (bool).
    Connected,
    /// `enabled` (bool).
    Enabled,
    /// `tags.<path>`.
    Tag(JsonPath),
    /// `state.desired.<path>` of the default shadow.
    Desired(JsonPath),
    /// `state.reported.<path>` of the default shadow.
    Reported(JsonPath),
}

impl Field {
    fn is_path(&self) -> bool {
        matches!(self, Field::Tag(_) | Field::Desired(_) | Field::Reported(_))
    }
}

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'`.
    Str(String),
    /// An integer that fits `i64`.
    Int(i64),
    /// Any other finite number.
    Float(f64),
    /// `TRUE` / `FALSE`.
    Bool(bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`).
    fn flipped(self) -> Self {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }
}

/// A typed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// Negation (SQL three-valued: `NOT` of an unknown stays unknown).
    Not(Box<Filter>),
    /// `field op literal`.
    Cmp {
        /// The field read.
        field: Field,
        /// The operator.
        op: CmpOp,
        /// The literal compared against.
        value: Literal,
    },
    /// `field IS [NOT] NULL` (paths only).
    IsNull {
        /// The field read.
        field: Field,
        /// `IS NOT NULL`.
        negated: bool,
    },
}

/// One `ORDER BY` key.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderKey {
    /// The field sorted by.
    pub field: Field,
    /// `DESC`.
    pub descending: bool,
    /// `NULLS FIRST` (`Some(true)`) / `NULLS LAST` (`Some(false)`), or SQLite's default.
    pub nulls_first: Option<bool>,
}

/// A parsed, validated query: `SELECT * FROM things [WHERE filter] [ORDER BY order]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThingQuery {
    /// The `WHERE` condition, if any.
    pub filter: Option<Filter>,
    /// The `ORDER BY` keys; results are always finally ordered by `thingId` for stable pages.
    pub order: Vec<OrderKey>,
}

/// A bound SQL parameter produced by [`render_sqlite`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryParam {
    /// TEXT.
    Text(String),
    /// INTEGER (booleans are 1/0, as SQLite and `json_extract` represent them).
    Int(i64),
    /// REAL.
    Real(f64),
}

/// Table and column names of the SQLite schema (`store/migrations`) the rendered SQL reads.
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
pub fn render_sqlite(q: &ThingQuery) -> (String, Vec<QueryParam>) {
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

/// Renders `SELECT COUNT(*) ...` for the same filter as [`render_sqlite`] (the page's `total`).
pub fn render_sqlite_count(q: &ThingQuery) -> (String, Vec<QueryParam>) {
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
                self.bind(QueryParam::Text(p.sqlite_path(&[])));
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
                self.bind(QueryParam::Text(p.sqlite_path(&["state", section])));
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
