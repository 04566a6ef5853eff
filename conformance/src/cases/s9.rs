//! S-9 cases.

use crate::case::Case;

/// The S-9 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
