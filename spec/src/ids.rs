//! Identifier rules (S-1.1, S-1.5, S-2, S-5.1).
//!
//! Use these before building a topic from user input, when creating a thing, or when checking an
//! MQTT username. [`crate::topic::Topic::parse`] applies them to every id level already.

/// The name of the classic (unnamed) shadow, `T/shadows/name/default` (S-2).
///
/// SDKs use it when the application does not name a shadow.
pub const DEFAULT_SHADOW: &str = "default";

/// Maximum length in bytes of a thing id, shadow name or method name.
pub const MAX_ID_LEN: usize = 64;

fn all_bytes(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Whether `s` is a valid thing id, `^[0-9A-Za-z_-]{1,64}$` (S-1.1).
///
/// Call it on ids from REST bodies, MQTT usernames of things and topic levels.
pub fn is_valid_thing_id(s: &str) -> bool {
    all_bytes(s, b"_-")
}

/// Whether `s` is a valid shadow name, `^[0-9A-Za-z_:-]{1,64}$` (S-2).
pub fn is_valid_shadow_name(s: &str) -> bool {
    all_bytes(s, b"_:-")
}

/// Whether `s` is a valid direct-method name, `^[0-9A-Za-z_.-]{1,64}$` (S-5.1).
pub fn is_valid_method_name(s: &str) -> bool {
    all_bytes(s, b"_.-")
}

/// The start of a claim connection's user name, `$claim/{enrollment}/{serial}` (S-10.1); see
/// [`crate::topic::provision::Claim`].
pub const CLAIM_USER_PREFIX: &str = "$claim/";

/// Whether an MQTT username belongs to a hub-side service user (it starts with `$`, S-1.1, S-1.5),
/// claim user names (`$claim/...`, S-10.1) excepted.
///
/// Service users bypass the per-thing allow-list of S-2.1; the hub still authenticates them
/// against its configuration.
pub fn is_service_user(username: &str) -> bool {
    username.starts_with('$') && !is_claim_user(username)
}

/// Whether an MQTT username is in the claim form `$claim/...` (S-10.1), valid or not: such a
/// name is never a service user and never a thing.
pub fn is_claim_user(username: &str) -> bool {
    username.starts_with(CLAIM_USER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_ids() {
        assert!(is_valid_thing_id("t1"));
        assert!(is_valid_thing_id("A-b_9"));
        assert!(is_valid_thing_id(&"x".repeat(64)));
        assert!(!is_valid_thing_id(&"x".repeat(65)));
        assert!(!is_valid_thing_id(""));
        assert!(!is_valid_thing_id("a:b"));
        assert!(!is_valid_thing_id("a.b"));
        assert!(!is_valid_thing_id("a/b"));
        assert!(!is_valid_thing_id("+"));
        assert!(!is_valid_thing_id("$svc"));
        assert!(!is_valid_thing_id("é"));
    }

    #[test]
    fn shadow_and_method_names() {
        assert!(is_valid_shadow_name("default"));
        assert!(is_valid_shadow_name("a:b-c_d"));
        assert!(!is_valid_shadow_name("a.b"));
        assert!(is_valid_method_name("reboot.now"));
        assert!(is_valid_method_name("a-b_c"));
        assert!(!is_valid_method_name("a:b"));
        assert!(!is_valid_method_name(""));
        assert!(!is_valid_method_name(&"m".repeat(65)));
    }

    #[test]
    fn service_users() {
        assert!(is_service_user("$admin"));
        assert!(!is_service_user("t1"));
        assert!(!is_service_user(""));
        assert!(!is_service_user("$claim/e1/s1"));
        assert!(!is_service_user("$claim/"));
        assert!(is_claim_user("$claim/e1/s1"));
        assert!(is_service_user("$claimant"));
    }
}
