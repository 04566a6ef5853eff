//! S-4 cases.

use crate::case::Case;

/// The S-4 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
