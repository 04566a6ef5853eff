//! Shadow state as the application's own types: parsing that names the key at fault and
//! reports keys the type does not hold, instead of serde's silent skip.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a shadow section or a delta does not fit the application's type. Both variants name
/// the key (a dotted path such as `light.color`, or `.` for the section itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Keys present in the shadow that the type has no field for. Nothing was applied: a
    /// delta is taken whole or not at all. Remove the keys from `desired` (set them to `null`)
    /// or add them to the type.
    #[error("keys not held by the state type: {}", .keys.join(", "))]
    UnknownKeys {
        /// The unknown keys, as dotted paths.
        keys: Vec<String>,
    },
    /// A value has the wrong type or shape for its field (for example a string where a number
    /// is expected).
    #[error("key {key}: {message}")]
    Invalid {
        /// The key, as a dotted path.
        key: String,
        /// serde's explanation (`invalid type: string "hot", expected f64`).
        message: String,
    },
}

impl StateError {
    /// The keys this error is about.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            StateError::UnknownKeys { keys } => keys.iter().map(String::as_str).collect(),
            StateError::Invalid { key, .. } => vec![key.as_str()],
        }
    }
}

/// Parses `value` into `T`, failing on keys `T` would silently skip and naming the key of a
/// type mismatch.
pub(crate) fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, StateError> {
    let mut unknown = Vec::new();
    let mut collect = |path: serde_ignored::Path<'_>| unknown.push(dotted(&path));
    let de = serde_ignored::Deserializer::new(value, &mut collect);
    let parsed = serde_path_to_error::deserialize(de).map_err(|e| StateError::Invalid {
        key: e.path().to_string(),
        message: e.inner().to_string(),
    });
    // A type error ends parsing early; it is the more useful of the two to show.
    let parsed = parsed?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(StateError::UnknownKeys { keys: unknown })
    }
}

/// `light.color`, `list.2`: the keys as the shadow spells them, without serde's markers for
/// `Option` and newtype layers.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let (parent, segment) = match path {
        Path::Root => return String::new(),
        Path::Seq { parent, index } => (*parent, index.to_string()),
        Path::Map { parent, key } => (*parent, key.clone()),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => {
            return dotted(parent);
        }
    };
    let head = dotted(parent);
    if head.is_empty() {
        segment
    } else {
        format!("{head}.{segment}")
    }
}

/// Parses an optional section (absent sections parse as `{}`).
pub(crate) fn parse_section<T: DeserializeOwned>(value: Option<&Value>) -> Result<T, StateError> {
    match value {
        Some(v) => parse(v),
        None => parse(&Value::Object(serde_json::Map::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Light {
        color: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct State {
        setpoint: f64,
        #[serde(default)]
        light: Option<Light>,
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let e =
            parse::<State>(&json!({"setpoint": 1, "fan": "on", "light": {"color": "red", "x": 1}}))
                .expect_err("unknown keys");
        assert_eq!(
            e,
            StateError::UnknownKeys {
                keys: vec!["fan".into(), "light.x".into()]
            }
        );
        assert_eq!(
            e.to_string(),
            "keys not held by the state type: fan, light.x"
        );
    }

    #[test]
    fn a_type_mismatch_names_the_key() {
        let e = parse::<State>(&json!({"setpoint": "hot"})).expect_err("wrong type");
        assert_eq!(e.keys(), vec!["setpoint"]);
        assert!(
            e.to_string()
                .starts_with("key setpoint: invalid type: string \"hot\""),
            "{e}"
        );
        let e =
            parse::<State>(&json!({"setpoint": 1, "light": {"color": 5}})).expect_err("wrong type");
        assert_eq!(e.keys(), vec!["light.color"]);
    }

    #[test]
    fn a_fitting_value_parses() {
        assert_eq!(
            parse::<State>(&json!({"setpoint": 21.5})),
            Ok(State {
                setpoint: 21.5,
                light: None
            })
        );
        assert_eq!(
            parse_section::<std::collections::BTreeMap<String, u8>>(None),
            Ok(Default::default())
        );
    }
}
