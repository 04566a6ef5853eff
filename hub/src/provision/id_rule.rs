//! The id rule of an enrollment (D-44) as pure functions: which thing id a device gets.

use iothub_spec::ids::is_valid_thing_id;

use crate::store::enroll::IdRule;

/// The thing id for a device with `serial` that asked for `requested`, or `None` when the rule
/// refuses it. `generate` makes a random id (only [`IdRule::Generated`] calls it).
pub fn choose(
    rule: &IdRule,
    serial: &str,
    requested: Option<&str>,
    generate: impl FnOnce() -> String,
) -> Option<String> {
    let id = match (rule, requested) {
        (IdRule::Generated, _) => generate(),
        (IdRule::Prefix(prefix), Some(id)) => id.starts_with(prefix.as_str()).then(|| id.into())?,
        // Serials may hold `.` and `:`, which thing ids may not.
        (IdRule::Prefix(prefix), None) => format!("{prefix}{}", serial.replace(['.', ':'], "-")),
        (IdRule::Pattern(pattern), Some(id)) => matches(pattern, id).then(|| id.into())?,
        (IdRule::Pattern(_), None) => return None,
    };
    is_valid_thing_id(&id).then_some(id)
}

/// Whether a rule's prefix or pattern can ever give a valid id (checked when the enrollment is
/// created): its characters are id characters (and `*` in a pattern).
pub fn is_valid_rule(rule: &IdRule) -> bool {
    let id_chars = |s: &str, extra: &[u8]| {
        s.len() <= iothub_spec::ids::MAX_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b) || extra.contains(&b))
    };
    match rule {
        IdRule::Generated => true,
        IdRule::Prefix(p) => id_chars(p, b""),
        IdRule::Pattern(p) => !p.is_empty() && id_chars(p, b"*"),
    }
}

/// Glob match where `*` stands for any run (also empty) of characters; `id` holds no `*`.
fn matches(pattern: &str, id: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = id.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_id() -> String {
        "generated1".into()
    }

    #[test]
    fn generated_ignores_the_request() {
        assert_eq!(
            choose(&IdRule::Generated, "s1", Some("mine"), gen_id).as_deref(),
            Some("generated1")
        );
    }

    #[test]
    fn prefix_rule() {
        let rule = IdRule::Prefix("fac-".into());
        assert_eq!(
            choose(&rule, "s", Some("fac-7"), gen_id).as_deref(),
            Some("fac-7")
        );
        assert_eq!(choose(&rule, "s", Some("other-7"), gen_id), None);
        assert_eq!(
            choose(&rule, "AA:BB.1", None, gen_id).as_deref(),
            Some("fac-AA-BB-1")
        );
        assert_eq!(choose(&rule, "s", Some("fac-a/b"), gen_id), None);
    }

    #[test]
    fn pattern_rule() {
        let rule = IdRule::Pattern("meter-*-eu".into());
        assert_eq!(
            choose(&rule, "s", Some("meter-12-eu"), gen_id).as_deref(),
            Some("meter-12-eu")
        );
        assert_eq!(choose(&rule, "s", Some("meter-12-us"), gen_id), None);
        assert_eq!(choose(&rule, "s", None, gen_id), None);
        assert!(matches("a*", "a"));
        assert!(matches("*", "xyz"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXc"));
        assert!(!matches("ab*ba", "aba"));
        assert!(!matches("abc", "abcd"));
    }

    #[test]
    fn rules_are_checked() {
        assert!(is_valid_rule(&IdRule::Prefix("fac-".into())));
        assert!(!is_valid_rule(&IdRule::Prefix("fac/".into())));
        assert!(is_valid_rule(&IdRule::Pattern("m-*".into())));
        assert!(!is_valid_rule(&IdRule::Pattern(String::new())));
    }
}
