//! Checks of what registry callers send (thing ids, secrets, tags, paging), and the ids and
//! secrets picked when a create request leaves them out.

use iothub_spec::ids::is_valid_thing_id;
use serde_json::{Map, Value};

use super::{
    CreateThing, GENERATED_ID_LEN, MAX_PAGE_SIZE, MAX_PASSWORD_LEN, MAX_TAGS_BYTES, MAX_TAGS_DEPTH,
    ThingsError,
};
use crate::auth::{self, SecretOrigin};

pub(super) fn check_page(page_index: u64, page_size: u64) -> Result<(), ThingsError> {
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(ThingsError::InvalidPaging(format!(
            "pageSize must be 1 to {MAX_PAGE_SIZE}"
        )));
    }
    if page_index
        .checked_mul(page_size)
        .is_none_or(|o| o > i64::MAX as u64)
    {
        return Err(ThingsError::InvalidPaging("pageIndex too large".into()));
    }
    Ok(())
}

/// Validates one create request and picks its id and secret.
/// A valid create request's id and secret, the secret's origin deciding its hash cost.
pub(super) fn prepare(req: &CreateThing) -> Result<(String, String, SecretOrigin), ThingsError> {
    let id = match &req.thing_id {
        Some(id) if is_valid_thing_id(id) => id.clone(),
        Some(_) => return Err(ThingsError::InvalidId),
        None => generate_id(),
    };
    let (password, origin) = match &req.password {
        Some(p) if !p.is_empty() && p.len() <= MAX_PASSWORD_LEN => {
            (p.clone(), SecretOrigin::Chosen)
        }
        Some(_) => return Err(ThingsError::InvalidPassword),
        None => (auth::generate_secret(), SecretOrigin::Generated),
    };
    check_tags(&req.tags)?;
    Ok((id, password, origin))
}

pub(crate) fn check_tags(tags: &Map<String, Value>) -> Result<(), ThingsError> {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let d = 1 + tags.values().map(depth).max().unwrap_or(0);
    if d > MAX_TAGS_DEPTH {
        return Err(ThingsError::InvalidTags(format!(
            "nested deeper than {MAX_TAGS_DEPTH}"
        )));
    }
    let size = serde_json::to_vec(tags)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_TAGS_BYTES {
        return Err(ThingsError::InvalidTags(format!(
            "larger than {MAX_TAGS_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A random thingId matching S-1.1 (`[0-9a-z]`, [`GENERATED_ID_LEN`] characters, ~103 bits).
pub(crate) fn generate_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..GENERATED_ID_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate_id();
        let b = generate_id();
        assert!(is_valid_thing_id(&a) && is_valid_thing_id(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn prepare_validates() {
        let bad_id = CreateThing {
            thing_id: Some("a/b".into()),
            ..Default::default()
        };
        assert_eq!(prepare(&bad_id).err(), Some(ThingsError::InvalidId));
        let dollar = CreateThing {
            thing_id: Some("$svc".into()),
            ..Default::default()
        };
        assert_eq!(prepare(&dollar).err(), Some(ThingsError::InvalidId));
        let empty_pw = CreateThing {
            password: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(prepare(&empty_pw).err(), Some(ThingsError::InvalidPassword));
        let given = CreateThing {
            thing_id: Some("t-1".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        };
        assert_eq!(
            prepare(&given).ok(),
            Some(("t-1".into(), "s3cret".into(), SecretOrigin::Chosen))
        );
        let generated = prepare(&CreateThing::default());
        assert!(matches!(generated, Ok((_, _, SecretOrigin::Generated))));
    }

    #[test]
    fn tags_bounds() {
        let mut deep = Value::from(1);
        for _ in 0..MAX_TAGS_DEPTH {
            deep = serde_json::json!({ "x": deep });
        }
        let mut m = Map::new();
        m.insert("d".into(), deep);
        assert!(check_tags(&m).is_err());
        let mut big = Map::new();
        big.insert("b".into(), Value::String("x".repeat(MAX_TAGS_BYTES)));
        assert!(check_tags(&big).is_err());
        assert!(check_tags(&Map::new()).is_ok());
    }

    #[test]
    fn paging_bounds() {
        assert!(check_page(0, 0).is_err());
        assert!(check_page(0, MAX_PAGE_SIZE + 1).is_err());
        assert!(check_page(u64::MAX, 10).is_err());
        assert!(check_page(3, 50).is_ok());
    }
}
