//! Which configuration owns which key on one thing (D-48). Pure: no I/O, no clock.
//!
//! Ownership is per top-level key of `desired`: among the configurations that target the thing,
//! the one with the highest priority sets a key, and on equal priority the smallest name (byte
//! order). The outcome depends only on the set of configurations, never on the order they were
//! created or swept, so every thing resolves an overlap the same way.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::store::configurations::Configuration;

/// For one thing, each targeting configuration (by name) with the keys and values it owns
/// there. A configuration whose every key is owned by others maps to an empty patch: it still
/// targets the thing and counts as applied once recorded.
pub fn plan<'a>(targeting: &[&'a Configuration]) -> BTreeMap<&'a str, Map<String, Value>> {
    let mut ordered: Vec<&Configuration> = targeting.to_vec();
    ordered.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    let mut owned: BTreeMap<&str, ()> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for c in ordered {
        let mut mine = Map::new();
        for (key, value) in &c.desired {
            if owned.insert(key.as_str(), ()).is_none() {
                mine.insert(key.clone(), value.clone());
            }
        }
        out.insert(c.name.as_str(), mine);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(name: &str, priority: i64, desired: Value) -> Configuration {
        Configuration {
            name: name.into(),
            target: "connected = false".into(),
            priority,
            desired: desired.as_object().cloned().unwrap_or_default(),
            success: None,
            remove_on_unmatch: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn higher_priority_owns_shared_keys() {
        let low = config("a-low", 1, json!({"interval": 60, "mode": "eco"}));
        let high = config("z-high", 5, json!({"interval": 15}));
        let p = plan(&[&low, &high]);
        assert_eq!(
            p["z-high"],
            json!({"interval": 15})
                .as_object()
                .cloned()
                .expect("object")
        );
        assert_eq!(
            p["a-low"],
            json!({"mode": "eco"}).as_object().cloned().expect("object")
        );
    }

    #[test]
    fn equal_priority_resolves_by_name_whatever_the_order() {
        let a = config("alpha", 3, json!({"k": 1}));
        let b = config("beta", 3, json!({"k": 2}));
        for input in [[&a, &b], [&b, &a]] {
            let p = plan(&input);
            assert_eq!(p["alpha"].get("k"), Some(&json!(1)));
            assert!(p["beta"].is_empty(), "beta owns nothing: {p:?}");
        }
    }

    #[test]
    fn a_lone_configuration_owns_all_its_keys() {
        let a = config("only", -4, json!({"x": {"y": 1}, "z": null}));
        let p = plan(&[&a]);
        assert_eq!(p.len(), 1);
        assert_eq!(p["only"].len(), 2);
    }
}
