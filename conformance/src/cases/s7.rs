//! S-7 cases.

use crate::case::Case;

/// The S-7 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
