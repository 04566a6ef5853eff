//! clientToken generation and recognition (S-4).
//!
//! A token is `{seed:08x}-{id}`: the seed (from [`crate::Config::token_seed`], different on every
//! boot) tells this device's tokens from any other client's and from a previous boot's; the id is
//! the [`crate::RequestId`], unique for the device's lifetime. At most 19 bytes, well within the
//! 64 of S-4.1.

use core::fmt::Write as _;

/// A formatted token.
pub(crate) type Token = heapless::String<24>;

pub(crate) fn format(seed: u32, id: u32) -> Token {
    let mut t = Token::new();
    // 8 + 1 + 10 bytes always fit in 24.
    let _ = write!(t, "{seed:08x}-{id}");
    t
}

/// The id of a token this device generated with `seed`, or `None`.
pub(crate) fn parse(seed: u32, token: &str) -> Option<u32> {
    let (prefix, id) = token.split_once('-')?;
    if prefix.len() != 8 || u32::from_str_radix(prefix, 16).ok()? != seed {
        return None;
    }
    if id.is_empty() || id.len() > 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        for (seed, id) in [(0, 0), (0xdead_beef, 7), (u32::MAX, u32::MAX)] {
            let t = super::format(seed, id);
            assert_eq!(super::parse(seed, &t), Some(id));
            assert_eq!(super::parse(seed.wrapping_add(1), &t), None);
        }
        for bad in [
            "",
            "-",
            "0000000-1",
            "00000000-",
            "00000000-+1",
            "00000000-99999999999",
            "x",
        ] {
            assert_eq!(super::parse(0, bad), None, "{bad}");
        }
    }
}
