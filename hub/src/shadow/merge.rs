//! Merge (S-3.4), metadata, delta (S-3.6) and JSON value equality: pure functions over
//! `serde_json` maps. No I/O, no clock: the caller passes `now`.

use serde_json::{Map, Value};

use iothub_spec::payload::field;

use super::Shadow;

/// The metadata leaf `{"timestamp": now}` that S-3.1 puts at every scalar or array.
pub fn metadata_leaf(now: u64) -> Value {
    let mut leaf = Map::with_capacity(1);
    leaf.insert(field::TIMESTAMP.into(), Value::from(now));
    Value::Object(leaf)
}

/// Merges `patch` into one section (`desired` or `reported`) and its metadata mirror (S-3.4).
///
/// Keys absent from `patch` are untouched; `null` deletes the key and its metadata; an object
/// merges recursively onto an object and replaces anything else; scalars and arrays replace the
/// old value whole and get a fresh `{"timestamp": now}` leaf. Objects that end up empty are
/// removed together with their metadata **(stricter than tio)**, so the state never holds an
/// empty object and the metadata mirrors the state key for key.
pub fn merge_section(
    state: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(sub_patch) => {
                // Object onto object merges; onto anything else (absent, scalar, array) it
                // starts from an empty object, i.e. replaces the old value.
                let mut sub_state = match state.remove(key) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                let mut sub_meta = match metadata.remove(key) {
                    Some(Value::Object(m)) if !sub_state.is_empty() => m,
                    _ => Map::new(),
                };
                merge_section(&mut sub_state, &mut sub_meta, sub_patch, now);
                if !sub_state.is_empty() {
                    state.insert(key.clone(), Value::Object(sub_state));
                    metadata.insert(key.clone(), Value::Object(sub_meta));
                }
            }
            scalar_or_array => {
                state.insert(key.clone(), scalar_or_array.clone());
                metadata.insert(key.clone(), metadata_leaf(now));
            }
        }
    }
}

/// The metadata of the keys a request writes (`update/accepted`, S-3.5): the request's section
/// with every scalar, array or `null` replaced by `{"timestamp": now}`.
pub fn written_metadata(patch: &Value, now: u64) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), written_metadata(v, now)))
                .collect(),
        ),
        _ => metadata_leaf(now),
    }
}

/// The delta of a shadow (S-3.6): the desired keys whose value differs from reported.
///
/// Computed over `desired` keys only; objects compare recursively; everything else compares with
/// [`json_eq`] (numbers numerically, arrays atomically). An empty map means "no delta".
pub fn delta(shadow: &Shadow) -> Map<String, Value> {
    delta_of(&shadow.desired, &shadow.reported)
}

/// [`delta`] over two raw sections.
pub fn delta_of(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want_obj), Some(Value::Object(have_obj))) => {
                let sub = delta_of(want_obj, have_obj);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (_, Some(have)) if json_eq(want, have) => {}
            _ => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// The desired metadata of a delta's leaves (S-3.6): `metadata_desired` cut to the shape of
/// `delta`.
pub fn delta_metadata(
    delta: &Map<String, Value>,
    metadata_desired: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in delta {
        let Some(meta) = metadata_desired.get(key) else {
            continue;
        };
        match (value, meta) {
            (Value::Object(sub), Value::Object(sub_meta)) => {
                out.insert(key.clone(), Value::Object(delta_metadata(sub, sub_meta)));
            }
            _ => {
                out.insert(key.clone(), meta.clone());
            }
        }
    }
    out
}

/// JSON equality as S-3.6 defines it: numbers compare numerically (`1 == 1.0`, `1 != "1"`),
/// arrays element by element, objects key by key.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else if x.is_f64() || y.is_f64() {
                // At least one is fractional or exponent-form: compare as doubles.
                x.as_f64() == y.as_f64()
            } else {
                // One is a u64 above i64::MAX, the other a negative i64.
                false
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn merge_replaces_scalars_and_arrays_and_stamps_them() {
        let mut s = obj(json!({"a": 1, "b": [1, 2], "c": {"d": 1}}));
        let mut m = obj(
            json!({"a": {"timestamp": 1}, "b": {"timestamp": 1}, "c": {"d": {"timestamp": 1}}}),
        );
        merge_section(&mut s, &mut m, &obj(json!({"b": [3], "c": {"e": "x"}})), 9);
        assert_eq!(
            Value::Object(s),
            json!({"a": 1, "b": [3], "c": {"d": 1, "e": "x"}})
        );
        assert_eq!(
            Value::Object(m),
            json!({"a": {"timestamp": 1}, "b": {"timestamp": 9}, "c": {"d": {"timestamp": 1}, "e": {"timestamp": 9}}})
        );
    }

    #[test]
    fn null_deletes_key_and_metadata_and_prunes_empty_objects() {
        let mut s = obj(json!({"a": {"b": {"c": 1}}, "x": 1}));
        let mut m = obj(json!({"a": {"b": {"c": {"timestamp": 1}}}, "x": {"timestamp": 1}}));
        merge_section(
            &mut s,
            &mut m,
            &obj(json!({"a": {"b": {"c": null}}, "y": null})),
            2,
        );
        assert_eq!(Value::Object(s), json!({"x": 1}));
        assert_eq!(Value::Object(m), json!({"x": {"timestamp": 1}}));
    }

    #[test]
    fn object_replaces_scalar_and_scalar_replaces_object() {
        let mut s = obj(json!({"a": 1, "b": {"c": 1}}));
        let mut m = obj(json!({"a": {"timestamp": 1}, "b": {"c": {"timestamp": 1}}}));
        merge_section(&mut s, &mut m, &obj(json!({"a": {"x": true}, "b": 5})), 3);
        assert_eq!(Value::Object(s), json!({"a": {"x": true}, "b": 5}));
        assert_eq!(
            Value::Object(m),
            json!({"a": {"x": {"timestamp": 3}}, "b": {"timestamp": 3}})
        );
    }

    #[test]
    fn empty_object_patch_never_creates_an_empty_object() {
        let mut s = Map::new();
        let mut m = Map::new();
        merge_section(&mut s, &mut m, &obj(json!({"a": {}, "b": {"c": null}})), 3);
        assert!(s.is_empty() && m.is_empty());
    }

    #[test]
    fn numbers_compare_numerically_strings_do_not() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!json_eq(&json!(1), &json!("1")));
        assert!(!json_eq(&json!(u64::MAX), &json!(-1)));
        assert!(!json_eq(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn delta_is_recursive_over_desired_keys_only() {
        let d = obj(json!({"a": 1, "b": {"c": 1, "d": 2}, "e": [1], "f": {"g": 1}}));
        let r = obj(json!({"a": 1.0, "b": {"c": 1, "d": 3}, "e": [1, 2], "f": 7, "z": 1}));
        assert_eq!(
            Value::Object(delta_of(&d, &r)),
            json!({"b": {"d": 2}, "e": [1], "f": {"g": 1}})
        );
    }

    #[test]
    fn delta_metadata_follows_delta_shape() {
        let delta = obj(json!({"b": {"d": 2}, "f": {"g": 1}}));
        let meta = obj(
            json!({"a": {"timestamp": 1}, "b": {"c": {"timestamp": 1}, "d": {"timestamp": 2}}, "f": {"g": {"timestamp": 3}}}),
        );
        assert_eq!(
            Value::Object(delta_metadata(&delta, &meta)),
            json!({"b": {"d": {"timestamp": 2}}, "f": {"g": {"timestamp": 3}}})
        );
    }

    #[test]
    fn written_metadata_stamps_nulls_too() {
        assert_eq!(
            written_metadata(&json!({"a": null, "b": {"c": [1]}}), 5),
            json!({"a": {"timestamp": 5}, "b": {"c": {"timestamp": 5}}})
        );
        assert_eq!(written_metadata(&Value::Null, 5), json!({"timestamp": 5}));
    }
}
