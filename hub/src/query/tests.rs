#![allow(clippy::unwrap_used)]
use super::*;
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
    let (sql, params) = render_sqlite(&q);
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
    let (sql, params) = render_sqlite(&q);
    assert!(sql.ends_with("DESC NULLS LAST, t.thing_id ASC, t.thing_id ASC"));
    assert_eq!(params.len(), 2);
    let (count, cparams) = render_sqlite_count(&q);
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
    let (sql, params) = render_sqlite(&q);
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
fn rejects_other_shapes() {
    for bad in [
        "",
        "SELECT thingId FROM things",
        "SELECT * FROM users",
        "SELECT * FROM things t",
        "SELECT DISTINCT * FROM things",
        "SELECT * FROM things LIMIT 1",
        "SELECT * FROM things GROUP BY thingId",
        "SELECT * FROM things, shadows",
        "SELECT * FROM things JOIN shadows ON 1 = 1",
        "WITH x AS (SELECT 1) SELECT * FROM things",
        "SELECT * FROM things UNION SELECT * FROM things",
        "DELETE FROM things",
        "SELECT * FROM things WHERE password_hash = 'x'",
        "SELECT * FROM things WHERE tags = 'x'",
        "SELECT * FROM things WHERE state.metadata.x = 1",
        "SELECT * FROM things WHERE tags.a LIKE 'x%'",
        "SELECT * FROM things WHERE tags.a = tags.b",
        "SELECT * FROM things WHERE tags.a = NULL",
        "SELECT * FROM things WHERE connected = 'yes'",
        "SELECT * FROM things WHERE connected < true",
        "SELECT * FROM things WHERE thingId = 3",
        "SELECT * FROM things WHERE thingId IS NULL",
        "SELECT * FROM things WHERE tags.a IN (1, 2)",
        "SELECT * FROM things WHERE lower(thingId) = 'a'",
        "SELECT * FROM things WHERE (SELECT 1) = 1",
        "SELECT * FROM things WHERE tags.a",
    ] {
        assert!(ThingQuery::parse(bad).is_err(), "accepted {bad:?}");
    }
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
    let (sql, params) = render_sqlite(&q);
    assert!(!sql.contains('\''), "{sql}");
    assert!(params.contains(&QueryParam::Text(evil.into())));
    // Comments are not a way around the shape check.
    assert!(ThingQuery::parse("SELECT * FROM things -- WHERE x\n; DROP TABLE things").is_err());
}

#[test]
fn limits_complexity() {
    let long = format!(
        "SELECT * FROM things WHERE {}",
        "tags.a = 1 OR ".repeat(400)
    );
    assert_eq!(ThingQuery::parse(&long), Err(QueryError::TooLong));
    let many = format!(
        "SELECT * FROM things WHERE {}tags.a = 1",
        "tags.a = 1 OR ".repeat(MAX_PREDICATES)
    );
    assert!(ThingQuery::parse(&many).is_err());
    let deep = format!(
        "SELECT * FROM things WHERE {}tags.a = 1{}",
        "NOT (".repeat(200),
        ")".repeat(200)
    );
    assert_eq!(ThingQuery::parse(&deep), Err(QueryError::TooComplex));
    let nots = format!(
        "SELECT * FROM things WHERE {}tags.a = 1",
        "NOT ".repeat(500)
    );
    assert_eq!(ThingQuery::parse(&nots), Err(QueryError::TooComplex));
    let signs = format!("SELECT * FROM things WHERE tags.a = {}1", "- ".repeat(500));
    assert!(ThingQuery::parse(&signs).is_err());
    let case = format!(
        "SELECT * FROM things WHERE tags.a = {}1",
        "CASE WHEN ".repeat(500)
    );
    assert!(ThingQuery::parse(&case).is_err());
    // Within the limits, deep is fine.
    let ok = format!(
        "SELECT * FROM things WHERE {}tags.a = 1{}",
        "NOT (".repeat(MAX_PAREN_DEPTH),
        ")".repeat(MAX_PAREN_DEPTH)
    );
    assert!(ThingQuery::parse(&ok).is_ok());
}

#[test]
fn keywords_are_fine_as_path_segments() {
    let q = ThingQuery::parse(
        "SELECT * FROM things WHERE tags.order.select = 1 AND state.desired.from IS NULL",
    )
    .unwrap();
    assert!(q.filter.is_some());
}

/// tio's spelling (docs/tio-compatibility.md): `FROM shadow` and whole fields in backticks.
#[test]
fn tio_spelling_means_the_same_query() {
    let ours = ThingQuery::parse(
        "SELECT * FROM things WHERE tags.zone = 'Shanghai' AND state.reported.loc.lat > 30",
    )
    .unwrap();
    let tio = ThingQuery::parse(
        "select * from shadow where `tags.zone` = 'Shanghai' and `state.reported.loc.lat` > 30",
    )
    .unwrap();
    assert_eq!(ours, tio);
    assert!(ThingQuery::parse("select * from shadow").is_ok());
    // Backticks hold a field, never anything else.
    for bad in [
        "SELECT * FROM `things`",
        "SELECT * FROM shadow WHERE `tags..zone` = 1",
        "SELECT * FROM shadow WHERE `tags.zone; DROP` = 1",
        "SELECT * FROM shadow WHERE `createdAt` > 1",
        "SELECT * FROM shadows",
    ] {
        assert!(ThingQuery::parse(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn parse_never_panics(s in ".{0,300}") {
        let _ = ThingQuery::parse(&s);
    }

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
            let (sql, params) = render_sqlite(&q);
            prop_assert_eq!(sql.matches('?').count(), params.len());
            prop_assert!(!sql.contains('\''));
        }
    }
}
