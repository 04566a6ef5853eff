//! Query text to [`ThingQuery`]: a lexical gate on the tokens, then sqlparser, then a check of
//! the statement's shape and a conversion of its `WHERE` and `ORDER BY` into the typed grammar,
//! within the limits of the parent module.

use sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Ident, OrderByKind, SetExpr, Statement, UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::{
    CmpOp, Field, Filter, JsonPath, Literal, MAX_DEPTH, MAX_NOTS, MAX_ORDER_KEYS, MAX_PAREN_DEPTH,
    MAX_PREDICATES, MAX_QUERY_LEN, OrderKey, QueryError, ThingQuery,
};

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
        let bare = bare.to_string();
        // `shadow` is tio's name for the same table (docs/tio-compatibility.md).
        if !bare.eq_ignore_ascii_case("SELECT * FROM things")
            && !bare.eq_ignore_ascii_case("SELECT * FROM shadow")
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
    "shadow",
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
                // A backtick-quoted word is a whole dotted field, as tio writes them
                // (`tags.zone`); it is validated as a field later.
                if w.quote_style == Some('`') {
                    continue;
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
    // A backtick-quoted identifier is a whole dotted path (tio's `tags.zone`); other quoted
    // identifiers are one segment each (`tags."x-y"`).
    let segments: Vec<String> = ids
        .iter()
        .flat_map(|i| {
            if i.quote_style == Some('`') {
                i.value.split('.').map(str::to_owned).collect::<Vec<_>>()
            } else {
                vec![i.value.clone()]
            }
        })
        .collect();
    let shown = || segments.join(".");
    // Field names are matched exactly: `thingId`, not `THINGID` (JSON names are case-sensitive).
    match segments.as_slice() {
        [one] if one == "thingId" => Ok(Field::ThingId),
        [one] if one == "connected" => Ok(Field::Connected),
        [one] if one == "enabled" => Ok(Field::Enabled),
        [head, rest @ ..] if head == "tags" && !rest.is_empty() => {
            Ok(Field::Tag(JsonPath::new(rest.to_vec())?))
        }
        [head, section, rest @ ..] if head == "state" && !rest.is_empty() => {
            let path = JsonPath::new(rest.to_vec())?;
            match section.as_str() {
                "desired" => Ok(Field::Desired(path)),
                "reported" => Ok(Field::Reported(path)),
                _ => Err(QueryError::UnknownField(shown())),
            }
        }
        _ => Err(QueryError::UnknownField(shown())),
    }
}
