//! S-2 cases.

use crate::case::Case;

/// The S-2 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
