#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

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
}
