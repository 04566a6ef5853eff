//! S-8 cases.

use crate::case::Case;

/// The S-8 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
