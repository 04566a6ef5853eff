//! clientToken generation and recognition (S-4).
//!
//! A token is `{seed:08x}-{id}`: the seed (from [`crate::Config::token_seed`], different on every
//! boot) tells this device's tokens from any other client's and from a previous boot's; the id is
//! the [`crate::RequestId`], unique for the device's lifetime. At most 19 bytes, well within the
//! 64 of S-4.1.

use crate::json::writer::JsonWriter;

/// Writes the token of `seed` and `id` as a JSON string value, straight into the message being
/// serialized (no intermediate buffer; a token never needs an escape). By hand: `core::fmt` would
/// cost a `no_std` device ~2 KB of flash.
pub(crate) fn write(w: &mut JsonWriter<'_>, seed: u32, id: u32) {
    // `"{seed:08x}-`: a quote, eight lowercase hex digits (most significant first), a dash.
    w.raw(b"\"");
    let mut rest = seed;
    for _ in 0..8 {
        rest = rest.rotate_left(4);
        let nibble = (rest & 0xf) as u8;
        let base = if nibble < 10 { b'0' } else { b'a' - 10 };
        w.raw(&[base + nibble]);
    }
    w.raw(b"-");
    // `{id}"`
    w.u64(u64::from(id));
    w.raw(b"\"");
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
    /// The formatter this module had before tokens were written into the message directly
    /// (kept as the reference for [`super::write`]).
    fn format(seed: u32, id: u32) -> std::string::String {
        std::format!("{seed:08x}-{id}")
    }

    /// What [`super::write`] writes, without its quotes.
    fn written(seed: u32, id: u32) -> std::string::String {
        let mut buf = [0u8; 32];
        let mut w = crate::json::writer::JsonWriter::new(&mut buf);
        super::write(&mut w, seed, id);
        let n = w.finish().unwrap();
        let s = core::str::from_utf8(&buf[..n]).unwrap();
        s.strip_prefix('"')
            .unwrap()
            .strip_suffix('"')
            .unwrap()
            .into()
    }

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

    proptest::proptest! {
        #[test]
        fn write_matches_format(seed: u32, id: u32) {
            let t = written(seed, id);
            proptest::prop_assert_eq!(&t, &format(seed, id));
            proptest::prop_assert!(t.len() <= 19);
            proptest::prop_assert_eq!(super::parse(seed, &t), Some(id));
        }
    }

    #[test]
    fn round_trip() {
        for (seed, id) in [(0, 0), (0xdead_beef, 7), (u32::MAX, u32::MAX)] {
            let t = written(seed, id);
            assert_eq!(super::parse(seed, &t), Some(id));
            assert_eq!(super::parse(seed.wrapping_add(1), &t), None);
        }
        for (seed, id) in [
            (0, 0),
            (0x0a0b_0c0d, 9),
            (0xdead_beef, 10),
            (7, 4_294_967_295),
        ] {
            assert_eq!(written(seed, id), format(seed, id));
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
