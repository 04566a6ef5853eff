//! S-5 cases.

use crate::case::Case;

/// The S-5 cases.
pub fn cases() -> Vec<Case> {
    vec![]
}
