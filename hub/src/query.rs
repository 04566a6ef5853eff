//! The thing query language of S-9.4: parsed with `sqlparser`, checked against a tiny grammar,
//! turned into a typed [`ThingQuery`], and rendered to SQLite SQL whose every user-supplied value
//! (literals *and* JSON paths) is a bound parameter. User text is never spliced into SQL.
//!
//! Accepted: `SELECT * FROM things [WHERE <cond>] [ORDER BY <field> [ASC|DESC] [NULLS FIRST|LAST], ..]`.
//!
//! - Fields: `thingId`, `connected`, `enabled`, `tags.<path>`, `state.desired.<path>`,
//!   `state.reported.<path>` (the `default` shadow). A path is dot-separated segments of
//!   `[0-9A-Za-z_-]`; segments that are not plain SQL identifiers (`tags."x-y"`) may be quoted.
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

use sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Ident, OrderByKind, SetExpr, Statement, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

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

impl ThingQuery {
    /// Parses and validates query text (S-9.4). Never panics on any input.
    pub fn parse(text: &str) -> Result<ThingQuery, QueryError> {
        if text.len() > MAX_QUERY_LEN {
            return Err(QueryError::TooLong);
        }
        let dialect = GenericDialect {};
        lexical_gate(&dialect, text)?;
        let statements = Parser::new(&dialect)
            .with_recursion_limit(MAX_DEPTH + 8)
            .try_with_sql(text)
            .and_then(|mut p| p.parse_statements())
            .map_err(|e| QueryError::Syntax(e.to_string()))?;
        let [statement] = statements.as_slice() else {
            return Err(QueryError::NotOneStatement);
        };
        let Statement::Query(query) = statement else {
            return Err(QueryError::Shape);
        };
        let SetExpr::Select(select) = query.body.as_ref() else {
            return Err(QueryError::Shape);
        };

        // Shape check by canonical rendering: with WHERE and ORDER BY removed, the statement must
        // print as exactly `SELECT * FROM things`. Every other clause sqlparser knows (DISTINCT,
        // JOIN, GROUP BY, LIMIT, WITH, aliases, ...) prints something, so this rejects them all
        // without enumerating the AST's many fields.
        let mut bare = query.as_ref().clone();
        bare.order_by = None;
        let mut bare_select = select.as_ref().clone();
        bare_select.selection = None;
        *bare.body = SetExpr::Select(Box::new(bare_select));
        if !bare
            .to_string()
            .eq_ignore_ascii_case("SELECT * FROM things")
        {
            return Err(QueryError::Shape);
        }

        let mut budget = Budget {
            predicates: MAX_PREDICATES,
        };
        let filter = select
            .selection
            .as_ref()
            .map(|e| convert_filter(e, 0, &mut budget))
            .transpose()?;

        let mut order = Vec::new();
        if let Some(order_by) = &query.order_by {
            if order_by.interpolate.is_some() {
                return Err(QueryError::Shape);
            }
            let OrderByKind::Expressions(exprs) = &order_by.kind else {
                return Err(QueryError::Shape);
            };
            if exprs.len() > MAX_ORDER_KEYS {
                return Err(QueryError::TooComplex);
            }
            for e in exprs {
                if e.with_fill.is_some() {
                    return Err(QueryError::Shape);
                }
                order.push(OrderKey {
                    field: convert_field(&e.expr)?,
                    descending: e.options.asc == Some(false),
                    nulls_first: e.options.nulls_first,
                });
            }
        }
        Ok(ThingQuery { filter, order })
    }
}

/// Words that may appear outside a path (after a `.` any word is a path segment).
const ALLOWED_WORDS: &[&str] = &[
    "select",
    "from",
    "things",
    "where",
    "and",
    "or",
    "not",
    "is",
    "null",
    "order",
    "by",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "true",
    "false",
    "tags",
    "state",
    "thingid",
    "connected",
    "enabled",
];

/// Rejects, from tokens alone, everything that could make the recursive-descent parser recurse
/// deeply: sqlparser's own recursion limit does not stop a stack overflow on a 2 MiB tokio stack
/// for about 20 levels of `NOT (` in a debug build. So before parsing we bound parenthesis depth
/// and `NOT`s, allow a sign only directly before a number, and allow only the words of our
/// grammar (no `CASE`, functions, subqueries, ...) outside paths.
fn lexical_gate(dialect: &GenericDialect, text: &str) -> Result<(), QueryError> {
    let tokens = Tokenizer::new(dialect, text)
        .tokenize()
        .map_err(|e| QueryError::Syntax(e.to_string()))?;
    let significant: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut depth = 0usize;
    let mut nots = 0usize;
    for (i, t) in significant.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| significant.get(j));
        let next = significant.get(i + 1);
        match t {
            Token::LParen => {
                depth += 1;
                if depth > MAX_PAREN_DEPTH {
                    return Err(QueryError::TooComplex);
                }
            }
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Minus | Token::Plus if !matches!(next, Some(Token::Number(..))) => {
                return Err(QueryError::Unsupported(
                    "a sign must directly precede a number".into(),
                ));
            }
            Token::Word(w) => {
                if matches!(prev, Some(Token::Period)) {
                    continue; // a path segment: any word, validated later
                }
                if w.quote_style.is_some()
                    || !ALLOWED_WORDS
                        .iter()
                        .any(|a| w.value.eq_ignore_ascii_case(a))
                {
                    return Err(QueryError::Unsupported(format!(
                        "unexpected word `{}`",
                        w.value
                    )));
                }
                if w.value.eq_ignore_ascii_case("not") {
                    nots += 1;
                    if nots > MAX_NOTS {
                        return Err(QueryError::TooComplex);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

struct Budget {
    predicates: usize,
}

impl Budget {
    fn take(&mut self) -> Result<(), QueryError> {
        self.predicates = self
            .predicates
            .checked_sub(1)
            .ok_or(QueryError::TooComplex)?;
        Ok(())
    }
}

fn convert_filter(e: &SqlExpr, depth: usize, budget: &mut Budget) -> Result<Filter, QueryError> {
    if depth > MAX_DEPTH {
        return Err(QueryError::TooComplex);
    }
    let d = depth + 1;
    match e {
        SqlExpr::Nested(inner) => convert_filter(inner, d, budget),
        SqlExpr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Ok(Filter::Not(Box::new(convert_filter(expr, d, budget)?))),
        SqlExpr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => Ok(Filter::And(
                Box::new(convert_filter(left, d, budget)?),
                Box::new(convert_filter(right, d, budget)?),
            )),
            BinaryOperator::Or => Ok(Filter::Or(
                Box::new(convert_filter(left, d, budget)?),
                Box::new(convert_filter(right, d, budget)?),
            )),
            BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq => {
                budget.take()?;
                let op = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                // `field op literal`, or `literal op field` (flipped).
                let (field, op, value) = match convert_literal(left) {
                    Some(lit) => (convert_field(right)?, op.flipped(), lit?),
                    None => {
                        let value = convert_literal(right).ok_or_else(|| {
                            QueryError::Unsupported(format!(
                                "right side of `{op}` must be a literal",
                                op = op.sql()
                            ))
                        })??;
                        (convert_field(left)?, op, value)
                    }
                };
                check_types(&field, op, &value)?;
                Ok(Filter::Cmp { field, op, value })
            }
            other => Err(QueryError::Unsupported(format!("operator {other}"))),
        },
        SqlExpr::IsNull(inner) | SqlExpr::IsNotNull(inner) => {
            budget.take()?;
            let field = convert_field(inner)?;
            if !field.is_path() {
                return Err(QueryError::Type(
                    "IS NULL applies to tags.* and state.* paths only".into(),
                ));
            }
            Ok(Filter::IsNull {
                field,
                negated: matches!(e, SqlExpr::IsNotNull(_)),
            })
        }
        _ => Err(QueryError::Unsupported(
            "expected a comparison, IS [NOT] NULL, AND, OR or NOT".into(),
        )),
    }
}

fn check_types(field: &Field, op: CmpOp, value: &Literal) -> Result<(), QueryError> {
    match field {
        Field::ThingId if !matches!(value, Literal::Str(_)) => {
            Err(QueryError::Type("thingId compares with a string".into()))
        }
        Field::Connected | Field::Enabled => {
            if !matches!(value, Literal::Bool(_)) {
                Err(QueryError::Type(
                    "connected/enabled compare with TRUE or FALSE".into(),
                ))
            } else if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                Err(QueryError::Type(
                    "connected/enabled support only = and !=".into(),
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// `None` if `e` is not a literal at all; `Some(Err)` for an unsupported literal.
fn convert_literal(e: &SqlExpr) -> Option<Result<Literal, QueryError>> {
    match e {
        SqlExpr::Value(v) => Some(match &v.value {
            Value::SingleQuotedString(s) => Ok(Literal::Str(s.clone())),
            Value::Boolean(b) => Ok(Literal::Bool(*b)),
            Value::Number(n, _) => number(n, false),
            Value::Null => Err(QueryError::Unsupported(
                "compare with NULL using IS NULL".into(),
            )),
            other => Err(QueryError::Unsupported(format!("literal {other}"))),
        }),
        SqlExpr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match expr.as_ref() {
            SqlExpr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(number(n, *op == UnaryOperator::Minus)),
                _ => Some(Err(QueryError::Unsupported("sign on a non-number".into()))),
            },
            _ => None,
        },
        _ => None,
    }
}

fn number(text: &str, negative: bool) -> Result<Literal, QueryError> {
    let signed = if negative {
        format!("-{text}")
    } else {
        text.to_owned()
    };
    if let Ok(i) = signed.parse::<i64>() {
        return Ok(Literal::Int(i));
    }
    match signed.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Literal::Float(f)),
        _ => Err(QueryError::Type(format!("bad number {signed}"))),
    }
}

fn idents(e: &SqlExpr) -> Option<Vec<&Ident>> {
    match e {
        SqlExpr::Identifier(i) => Some(vec![i]),
        SqlExpr::CompoundIdentifier(is) => Some(is.iter().collect()),
        SqlExpr::Nested(inner) => idents(inner),
        _ => None,
    }
}

fn convert_field(e: &SqlExpr) -> Result<Field, QueryError> {
    let ids =
        idents(e).ok_or_else(|| QueryError::Unsupported(format!("expected a field, got {e}")))?;
    let name = |i: &Ident| i.value.clone();
    let shown = || {
        ids.iter()
            .map(|i| i.value.as_str())
            .collect::<Vec<_>>()
            .join(".")
    };
    // Field names are matched exactly: `thingId`, not `THINGID` (JSON names are case-sensitive).
    match ids.as_slice() {
        [one] if one.value == "thingId" => Ok(Field::ThingId),
        [one] if one.value == "connected" => Ok(Field::Connected),
        [one] if one.value == "enabled" => Ok(Field::Enabled),
        [head, rest @ ..] if head.value == "tags" && !rest.is_empty() => Ok(Field::Tag(
            JsonPath::new(rest.iter().map(|i| name(i)).collect())?,
        )),
        [head, section, rest @ ..] if head.value == "state" && !rest.is_empty() => {
            let path = JsonPath::new(rest.iter().map(|i| name(i)).collect())?;
            match section.value.as_str() {
                "desired" => Ok(Field::Desired(path)),
                "reported" => Ok(Field::Reported(path)),
                _ => Err(QueryError::UnknownField(shown())),
            }
        }
        _ => Err(QueryError::UnknownField(shown())),
    }
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
