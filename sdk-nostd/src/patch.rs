//! [`Patch`]: a field of a partial state update that can also delete.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One field of a partial shadow state: leave it alone, delete it (`null` on the wire), or set it.
///
/// Shadow updates merge (S-3.4): keys absent from a request are untouched and `null` deletes a
/// key. With `serde-json-core` a plain `Option<T>` field cannot tell "absent" from `null`, so use
/// `Patch<T>` for any key the device may delete, with both attributes below:
///
/// ```
/// use iothub_sdk_nostd::Patch;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Reported<'a> {
///     #[serde(borrow, default, skip_serializing_if = "Patch::is_unchanged")]
///     mode: Patch<&'a str>,
///     #[serde(default, skip_serializing_if = "Patch::is_unchanged")]
///     level: Patch<u8>,
/// }
///
/// let r = Reported { mode: Patch::Delete, level: Patch::Set(3) };
/// let mut buf = [0u8; 64];
/// let n = serde_json_core::to_slice(&r, &mut buf).unwrap();
/// assert_eq!(&buf[..n], br#"{"mode":null,"level":3}"#);
///
/// let (back, _): (Reported, _) = serde_json_core::from_slice(br#"{"level":null}"#).unwrap();
/// assert_eq!((back.mode, back.level), (Patch::Unchanged, Patch::Delete));
/// ```
///
/// Deltas (S-3.6) never carry `null` (a deleted desired key simply leaves the delta), so a delta
/// type can use plain `Option<T>` fields with `#[serde(default)]`: `None` means "no change asked".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Patch<T> {
    /// The key is absent: the shadow keeps its value.
    #[default]
    Unchanged,
    /// The key is `null`: the shadow deletes it.
    Delete,
    /// The key has this value.
    Set(T),
}

impl<T> Patch<T> {
    /// Whether the field is left out of the JSON; use it in `skip_serializing_if`.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, Patch::Unchanged)
    }

    /// The value, when set.
    pub fn as_set(&self) -> Option<&T> {
        match self {
            Patch::Set(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // Only reached without `skip_serializing_if`; `null` is the closest meaning.
            Patch::Unchanged | Patch::Delete => serializer.serialize_none(),
            Patch::Set(v) => serializer.serialize_some(v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(v) => Patch::Set(v),
            None => Patch::Delete,
        })
    }
}
