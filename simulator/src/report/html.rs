//! The report as one HTML page.

use super::Report;

/// The page.
pub fn render(r: &Report) -> String {
    format!("<html><body><pre>{}</pre></body></html>", r.table())
}
