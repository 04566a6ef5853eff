//! clientToken generation and recognition (S-4).
//!
//! A token is `{seed:08x}-{id}`: the seed (from [`crate::Config::token_seed`], different on every
//! boot) tells this device's tokens from any other client's and from a previous boot's; the id is
//! the [`crate::RequestId`], unique for the device's lifetime. At most 19 bytes, well within the
//! 64 of S-4.1.

/// Longest token: 8 hex digits, `-`, 10 decimal digits.
const MAX_LEN: usize = 19;

/// A formatted token (written by hand: `core::fmt` would cost a `no_std` device ~2 KB of flash).
pub(crate) struct Token {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Token {
    pub(crate) fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

pub(crate) fn format(seed: u32, id: u32) -> Token {
    let mut buf = [0u8; MAX_LEN];
    // `{seed:08x}`: eight lowercase hex digits, most significant first.
    for (i, d) in buf.iter_mut().take(8).enumerate() {
        let nibble = ((seed >> (28 - 4 * i as u32)) & 0xf) as u8;
        *d = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    buf[8] = b'-';
    // `{id}`: decimal, written backwards into a scratch then moved after the dash.
    let mut digits = [0u8; 10];
    let mut n = id;
    let mut count = 0;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
        count += 1;
        if n == 0 {
            break;
        }
    }
    let start = digits.len() - count;
    for (d, s) in buf.iter_mut().skip(9).zip(digits.iter().skip(start)) {
        *d = *s;
    }
    Token {
        buf,
        len: 9 + count,
    }
}

/// The id of a token this device generated with `seed`, or `None`.
///
/// Read by hand (no `from_str_radix`/`parse`), accepting exactly what
/// `u32::from_str_radix(prefix, 16)` and `id.parse::<u32>()` accept after splitting at the first
/// `-`: an 8-byte hex prefix (either case, or a `+` and 7 digits) and 1 to 10 decimal digits.
pub(crate) fn parse(seed: u32, token: &str) -> Option<u32> {
    let bytes = token.as_bytes();
    if bytes.get(8) != Some(&b'-') {
        return None;
    }
    let prefix = bytes.get(..8)?;
    let hex = prefix.strip_prefix(b"+").unwrap_or(prefix);
    let mut value: u32 = 0;
    for &c in hex {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u32::from(digit);
    }
    if value != seed {
        return None;
    }
    let id = bytes.get(9..)?;
    if id.is_empty() || id.len() > 10 {
        return None;
    }
    let mut n: u32 = 0;
    for &c in id {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    /// The parser this module had before it was written by hand (kept as the reference).
    fn reference(seed: u32, token: &str) -> Option<u32> {
        let (prefix, id) = token.split_once('-')?;
        if prefix.len() != 8 || u32::from_str_radix(prefix, 16).ok()? != seed {
            return None;
        }
        if id.is_empty() || id.len() > 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok()
    }

    use proptest::strategy::Strategy as _;
    use std::borrow::ToOwned as _;

    proptest::proptest! {
        #[test]
        fn parse_matches_reference(
            prefix in proptest::prop_oneof![
                proptest::sample::select(&["0000000a", "0000000A", "+000000a", "+00000a", "a"][..])
                    .prop_map(str::to_owned),
                "[+0]{0,2}[0-9a-fA-F]{5,8}",
            ],
            rest in "[-+]{0,2}[0-9-]{0,12}",
        ) {
            let t = std::format!("{prefix}{rest}");
            proptest::prop_assert_eq!(super::parse(10, &t), reference(10, &t));
        }
    }

    #[test]
    fn round_trip() {
        for (seed, id) in [(0, 0), (0xdead_beef, 7), (u32::MAX, u32::MAX)] {
            let t = super::format(seed, id);
            assert_eq!(super::parse(seed, t.as_str()), Some(id));
            assert_eq!(super::parse(seed.wrapping_add(1), t.as_str()), None);
        }
        for (seed, id) in [
            (0, 0),
            (0x0a0b_0c0d, 9),
            (0xdead_beef, 10),
            (7, 4_294_967_295),
        ] {
            let want = std::format!("{seed:08x}-{id}");
            assert_eq!(super::format(seed, id).as_str(), want);
        }
        // The same answers as splitting at the first `-` and using the standard parsers.
        for t in [
            "0000000a-1",
            "0000000A-1",
            "+000000a-1",
            "+00000a-1",
            "++00000a-1",
            "0000000a-4294967295",
            "0000000a-4294967296",
            "0000000a-01",
            "0000000a-1-2",
            "00-0000a-1",
            "0000000a--1",
            "0000000a-",
            "0000000g-1",
            "0000000a-12345678901",
            "é000000a-1",
        ] {
            assert_eq!(super::parse(10, t), reference(10, t), "{t}");
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
