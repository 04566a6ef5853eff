//! S-6 cases.

use crate::case::Case;

/// The S-6 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
