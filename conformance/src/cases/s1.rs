//! S-1 cases.

use crate::case::Case;

/// The S-1 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
