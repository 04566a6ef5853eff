//! The thing query language of S-9.4: parsed with `sqlparser`, checked against a tiny grammar and
//! turned into a typed [`ThingQuery`]. That tree, not SQL, is what the store receives
//! ([`crate::store::Store::query_things`]): each store backend renders its own SQL from it
//! (`store/sqlite/query.rs` with JSON1, `store/postgres/query.rs` with jsonb), binding every
//! user-supplied value (literals *and* JSON paths). User text is never spliced into SQL.
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
//! Comparison semantics are SQLite's for `json_extract` values (D-32), on purpose (one rule, no
//! surprises from the hub re-implementing SQL): a JSON string compares as TEXT (binary
//! collation, so `state.reported.fw < '2.0'` is a *lexicographic* comparison), a JSON number as
//! INTEGER/REAL, `true`/`false` as 1/0 (so `tags.flag = true` also matches `1`), and across
//! storage classes numbers sort before text. A missing path is SQL `NULL`: it matches
//! `IS NULL` and no comparison at all (not even `!=`). Objects and arrays compare as their JSON
//! text. Things without a default shadow see every `state.*` path as `NULL`. Other backends
//! reproduce these rules in their own SQL; the store behaviour suite (`hub/tests/store_suite`)
//! runs the same queries against every backend.

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
    /// Whether the field is a JSON path (`tags.*`, `state.*`).
    pub fn is_path(&self) -> bool {
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
    /// The SQL spelling, the same in every backend.
    pub fn sql(self) -> &'static str {
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
    /// `NULLS FIRST` (`Some(true)`) / `NULLS LAST` (`Some(false)`), or the default: nulls sort as
    /// the smallest value (first ascending, last descending), as in SQLite.
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

#[cfg(test)]
mod tests;
