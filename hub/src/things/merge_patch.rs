//! JSON merge-patch (RFC 7386) over tags objects (`PATCH /things/{id}/tags`, D-42).
//!
//! Written here rather than taken from the `json-patch` crate: the algorithm is the dozen lines
//! of RFC 7386 section 2, tags are always an object (so only the object-onto-object case is
//! needed), and it works in place on the map the store returned instead of cloning the whole
//! document into a `Value` and back. A property test checks it against the RFC's pseudocode.
//!
//! It differs from the shadow merge ([`crate::shadow::merge::merge_section`]) on purpose: an
//! empty object in the patch is kept (RFC 7386), where the shadow merge removes objects that end
//! up empty (S-3.4, stricter than tio).

use serde_json::{Map, Value};

/// Applies `patch` to `target` (RFC 7386): `null` deletes the key, an object merges into an
/// object (and replaces anything else, starting from an empty object), every other value
/// (scalar, array) replaces the old value whole. Keys absent from `patch` are untouched.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub_patch) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(sub_target) = slot {
                    merge_patch(sub_target, sub_patch);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// RFC 7386 section 2, transcribed line by line on whole values (the reference).
    fn reference(target: &Value, patch: &Value) -> Value {
        let Value::Object(patch) = patch else {
            return patch.clone();
        };
        let mut target = match target {
            Value::Object(t) => t.clone(),
            _ => Map::new(),
        };
        for (name, value) in patch {
            if value.is_null() {
                target.remove(name);
            } else {
                let old = target.get(name).cloned().unwrap_or(Value::Null);
                target.insert(name.clone(), reference(&old, value));
            }
        }
        Value::Object(target)
    }

    #[test]
    fn rfc7386_appendix_a_examples() {
        // (target, patch, result) from RFC 7386 appendix A, object-patch cases.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = obj(target.clone());
            merge_patch(&mut t, &obj(patch.clone()));
            assert_eq!(Value::Object(t), want, "{target} + {patch}");
        }
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ]
    }

    /// Random JSON over a small key set ("a".."d"), so patches and targets collide often.
    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-d]", json_value(), 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn merge_patch_equals_rfc7386_reference(target in json_object(), patch in json_object()) {
            let want = reference(&Value::Object(target.clone()), &Value::Object(patch.clone()));
            let mut got = target;
            merge_patch(&mut got, &patch);
            prop_assert_eq!(Value::Object(got), want);
        }

        #[test]
        fn merge_patch_is_idempotent(target in json_object(), patch in json_object()) {
            let mut once = target;
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }
    }
}
