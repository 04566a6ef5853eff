//! The SQLite rendering of parsed queries: binds everything, splices nothing. What the rendered
//! SQL selects is checked against real data, for every backend, by `hub/tests/store_suite`.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::query::{CmpOp, Field, Filter, JsonPath, Literal, QueryError, ThingQuery};
use proptest::prelude::*;

fn path(s: &str) -> JsonPath {
    JsonPath::new(s.split('.').map(str::to_owned).collect()).unwrap()
}

#[test]
fn parses_spec_example() {
    let q = ThingQuery::parse(
        "SELECT * FROM things WHERE tags.location.building = 'b1' AND state.reported.fw < '2.0'",
    )
    .unwrap();
    assert_eq!(
        q.filter,
        Some(Filter::And(
            Box::new(Filter::Cmp {
                field: Field::Tag(path("location.building")),
                op: CmpOp::Eq,
                value: Literal::Str("b1".into()),
            }),
            Box::new(Filter::Cmp {
                field: Field::Reported(path("fw")),
                op: CmpOp::Lt,
                value: Literal::Str("2.0".into()),
            }),
        ))
    );
    let (sql, params) = render(&q);
    assert!(!sql.contains("b1") && !sql.contains("2.0") && !sql.contains("location"));
    assert_eq!(
        params,
        vec![
            QueryParam::Text("default".into()),
            QueryParam::Text("$.\"location\".\"building\"".into()),
            QueryParam::Text("b1".into()),
            QueryParam::Text("$.\"state\".\"reported\".\"fw\"".into()),
            QueryParam::Text("2.0".into()),
        ]
    );
    assert_eq!(sql.matches('?').count(), params.len());
}

#[test]
fn no_where_and_order_by() {
    let q = ThingQuery::parse("select * from things order by tags.rank desc nulls last, thingId")
        .unwrap();
    assert_eq!(q.filter, None);
    assert_eq!(q.order.len(), 2);
    assert!(q.order[0].descending);
    assert_eq!(q.order[0].nulls_first, Some(false));
    assert_eq!(q.order[1].field, Field::ThingId);
    let (sql, params) = render(&q);
    assert!(sql.ends_with("DESC NULLS LAST, t.thing_id ASC, t.thing_id ASC"));
    assert_eq!(params.len(), 2);
    let (count, cparams) = render_count(&q);
    assert!(count.starts_with("SELECT COUNT(*) FROM"));
    assert_eq!(cparams.len(), 1);
}

#[test]
fn operators_literals_and_nulls() {
    let q = ThingQuery::parse(
        "SELECT * FROM things WHERE NOT (connected = true OR enabled <> FALSE) \
             AND tags.n >= -3 AND 2.5 > state.desired.x AND tags.\"a-b\".c IS NOT NULL \
             AND state.reported.y IS NULL AND thingId != 'z'",
    )
    .unwrap();
    let (sql, params) = render(&q);
    assert!(
        sql.contains("(NOT ((t.connected = ?) OR (t.enabled <> ?)))"),
        "{sql}"
    );
    assert!(params.contains(&QueryParam::Int(-3)));
    assert!(params.contains(&QueryParam::Real(2.5)));
    assert!(params.contains(&QueryParam::Text("$.\"a-b\".\"c\"".into())));
    // 2.5 > x is rendered as x < 2.5.
    assert!(sql.contains("json_extract(s.body, ?) < ?"), "{sql}");
    assert_eq!(sql.matches('?').count(), params.len());
}

#[test]
fn injection_attempts_are_rejected_or_bound() {
    // A second statement.
    assert!(
        ThingQuery::parse("SELECT * FROM things WHERE thingId = 'a'; DROP TABLE things").is_err()
    );
    assert_eq!(
        ThingQuery::parse("SELECT * FROM things WHERE thingId = 'a'; SELECT * FROM things"),
        Err(QueryError::NotOneStatement)
    );
    // Quote tricks inside a path segment are not a valid path.
    assert!(matches!(
        ThingQuery::parse("SELECT * FROM things WHERE tags.\"x') OR 1=1 --\" = 1"),
        Err(QueryError::InvalidPath(_))
    ));
    // Quote tricks inside a literal stay inside a bound parameter.
    let evil = "a' OR '1'='1";
    let q = ThingQuery::parse("SELECT * FROM things WHERE thingId = 'a'' OR ''1''=''1'").unwrap();
    let (sql, params) = render(&q);
    assert!(!sql.contains('\''), "{sql}");
    assert!(params.contains(&QueryParam::Text(evil.into())));
    // Comments are not a way around the shape check.
    assert!(ThingQuery::parse("SELECT * FROM things -- WHERE x\n; DROP TABLE things").is_err());
}

proptest! {
    #[test]
    fn parse_never_panics_on_sqlish(
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
            let (sql, params) = render(&q);
            prop_assert_eq!(sql.matches('?').count(), params.len());
            prop_assert!(!sql.contains('\''));
        }
    }
}
