//! Every case, grouped by the docs/spec.md clause it mainly checks (one module per clause).

use crate::case::Case;

pub mod s1;
pub mod s10;
pub mod s11;
pub mod s12;
pub mod s2;
pub mod s2_mqtt5;
pub mod s3;
pub mod s4;
pub mod s5;
pub mod s6;
pub mod s7;
pub mod s8;
pub mod s9;

/// The whole suite, in run order.
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(s1::cases());
    v.extend(s2::cases());
    v.extend(s2_mqtt5::cases());
    v.extend(s3::cases());
    v.extend(s4::cases());
    v.extend(s5::cases());
    v.extend(s6::cases());
    v.extend(s7::cases());
    v.extend(s8::cases());
    v.extend(s9::cases());
    v.extend(s10::cases());
    v.extend(s11::cases());
    v.extend(s12::cases());
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn ids_unique_and_every_clause_covered() {
        let all = super::all();
        let ids: BTreeSet<_> = all.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids.len(), all.len(), "duplicate case ids");
        for n in 1..=12 {
            let p = format!("S-{n}");
            assert!(
                all.iter().any(|c| c.selected(std::slice::from_ref(&p))),
                "no case for {p}"
            );
        }
    }
}
