//! A tiny JSON writer for the device's own message envelopes.
//!
//! The device writes the few fixed-shape bodies it sends itself (get and update envelopes,
//! method responses, NTP requests, OTA results) with this writer instead of `serde-json-core`:
//! one small non-generic function per body instead of a serde monomorphisation per struct, and
//! integers written without 64-bit division (which would link `compiler_builtins`' ~1 KB
//! `u64` divider on 32-bit targets). Application values (state, method data, telemetry) still go
//! through `serde-json-core` ([`JsonWriter::value`]). The output is byte for byte what
//! `serde-json-core` writes for the same `iothub_spec::payload` struct (tested in
//! `device::wire`).

use serde::Serialize;

/// Writes JSON into a caller buffer; once something does not fit, every later write is dropped
/// and [`JsonWriter::finish`] returns `None`.
pub(crate) struct JsonWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    full: bool,
}

impl<'b> JsonWriter<'b> {
    /// A writer filling `buf` from its start.
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        JsonWriter {
            buf,
            len: 0,
            full: false,
        }
    }

    /// The bytes written, `None` when the buffer was too small.
    pub(crate) fn finish(self) -> Option<usize> {
        (!self.full).then_some(self.len)
    }

    /// Appends `bytes` as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        if self.full {
            return;
        }
        let end = self.len.saturating_add(bytes.len());
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                // Equal lengths; a zip has no length-mismatch panic path.
                dst.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
                self.len = end;
            }
            None => self.full = true,
        }
    }

    /// `"name":`, preceded by a comma unless it is the first member of the object.
    pub(crate) fn key(&mut self, name: &str) {
        let first = self
            .len
            .checked_sub(1)
            .and_then(|i| self.buf.get(i))
            .is_none_or(|b| *b == b'{');
        if !first {
            self.raw(b",");
        }
        self.raw(b"\"");
        self.raw(name.as_bytes());
        self.raw(b"\":");
    }

    /// A JSON string, escaped as `serde-json-core` does: `\"`, `\\`, `\b`, `\t`, `\n`, `\f`,
    /// `\r`, other control characters as `\u00XX` (uppercase hex), everything else as is.
    /// (Only method responses and OTA results carry strings other than the device's tokens.)
    #[cfg(any(feature = "methods", feature = "ota", test))]
    pub(crate) fn str(&mut self, s: &str) {
        self.raw(b"\"");
        for &b in s.as_bytes() {
            let short = match b {
                b'"' | b'\\' => b,
                _ => match CONTROL_ESCAPES.get(usize::from(b)) {
                    Some(&c) => c,
                    None => {
                        self.raw(&[b]);
                        continue;
                    }
                },
            };
            self.raw(&[b'\\', short]);
            if short == b'u' {
                self.raw(&[b'0', b'0', hex_digit(b >> 4), hex_digit(b & 0xf)]);
            }
        }
        self.raw(b"\"");
    }

    /// A non-negative integer in decimal.
    pub(crate) fn u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        for d in digits.iter_mut().rev() {
            let (q, r) = div10(v);
            *d = b'0' + r;
            start -= 1;
            v = q;
            if v == 0 {
                break;
            }
        }
        self.raw(digits.get(start..).unwrap_or_default());
    }

    /// Any serializable value, written by `serde-json-core`.
    pub(crate) fn value<V: Serialize + ?Sized>(&mut self, v: &V) {
        if self.full {
            return;
        }
        let written = self
            .buf
            .get_mut(self.len..)
            .and_then(|rest| serde_json_core::to_slice(v, rest).ok());
        match written {
            Some(n) => self.len = self.len.saturating_add(n),
            None => self.full = true,
        }
    }
}

/// The escape letter of each control character (`\b`, `\t`, `\n`, `\f`, `\r`, else `\u00XX`):
/// one table lookup instead of a `match` arm per character.
#[cfg(any(feature = "methods", feature = "ota", test))]
const CONTROL_ESCAPES: &[u8; 32] = b"uuuuuuuubtnufruuuuuuuuuuuuuuuuuu";

#[cfg(any(feature = "methods", feature = "ota", test))]
fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'A' + n - 10 }
}

/// `(v / 10, v % 10)` with 32-bit divisions only (a `u64` division by a variable or constant
/// links `compiler_builtins`' 64-bit divider on 32-bit targets at opt-level "z").
fn div10(v: u64) -> (u64, u8) {
    let hi = (v >> 32) as u32;
    let lo = v as u32;
    let (q_hi, r) = (hi / 10, hi % 10);
    // r < 10, so (r << 16 | 16 bits) < 10 * 2^16 + 2^16: fits u32, and each quotient < 2^16.
    let mid = (r << 16) | (lo >> 16);
    let (q_mid, r) = (mid / 10, mid % 10);
    let low = (r << 16) | (lo & 0xffff);
    let (q_low, r) = (low / 10, low % 10);
    let q = (u64::from(q_hi) << 32) | (u64::from(q_mid) << 16) | u64::from(q_low);
    (q, r as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl Fn(&mut JsonWriter<'_>)) -> std::string::String {
        let mut buf = [0u8; 1024];
        let mut w = JsonWriter::new(&mut buf);
        f(&mut w);
        let n = w.finish().unwrap();
        std::string::String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn serde(v: &impl Serialize) -> std::string::String {
        let mut buf = [0u8; 1024];
        let n = serde_json_core::to_slice(v, &mut buf).unwrap();
        std::string::String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn integers_as_serde_json_core() {
        for v in [
            0,
            9,
            10,
            99,
            4_294_967_295,
            4_294_967_296,
            1_700_000_000_123,
            10_000_000_000_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(written(|w| w.u64(v)), serde(&v), "{v}");
        }
    }

    #[test]
    fn strings_as_serde_json_core() {
        let all_ascii: std::string::String = (0u8..0x80).map(char::from).collect();
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\u{7f}é€😀",
            "\n\r\t\u{8}\u{c}\u{1}\u{1f}",
            &all_ascii,
        ] {
            assert_eq!(written(|w| w.str(s)), serde(&s), "{s:?}");
        }
    }

    #[test]
    fn full_buffer_is_reported() {
        let mut buf = [0u8; 4];
        let mut w = JsonWriter::new(&mut buf);
        w.raw(b"{}");
        w.str("abc");
        w.raw(b"}");
        assert_eq!(w.finish(), None);
        let mut buf = [0u8; 4];
        let mut w = JsonWriter::new(&mut buf);
        w.value(&12345u32);
        assert_eq!(w.finish(), None);
    }

    #[test]
    fn keys_separate_members() {
        let s = written(|w| {
            w.raw(b"{");
            w.key("a");
            w.u64(1);
            w.key("b");
            w.raw(b"{");
            w.key("c");
            w.str("d");
            w.raw(b"}");
            w.raw(b"}");
        });
        assert_eq!(s, r#"{"a":1,"b":{"c":"d"}}"#);
    }
}
