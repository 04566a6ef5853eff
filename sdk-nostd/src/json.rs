//! A bounded, non-recursive JSON scanner that splits message envelopes.
//!
//! The device never builds a tree: it walks the top-level members of an object, keeps the raw
//! value slices of the few keys it cares about (`clientToken`, `version`, `code`, `state`, ...)
//! and hands the application the raw `state` slice to deserialize with `serde-json-core`
//! ([`crate::RawJson::parse`]).
//!
//! The scanner is iterative: nesting is tracked in a 64-bit stack (one bit per open container), so
//! a hostile payload costs at most one pass and never recursion. It checks the structure
//! (brackets match, strings close, members are `"key": value` separated by commas, scalars are
//! plausible tokens); the exact grammar of numbers and literals inside skipped values is left to
//! `serde-json-core` when the application parses a slice.

pub(crate) mod writer;

/// Why the scanner refused a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    /// The text is not a JSON object where one was required.
    NotAnObject,
    /// Brackets, strings, separators or tokens are malformed, or the text ends early.
    Syntax,
    /// The text nests deeper than the limit given to the scanner.
    TooDeep,
}

impl core::fmt::Display for JsonError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            JsonError::NotAnObject => "json is not an object",
            JsonError::Syntax => "malformed json",
            JsonError::TooDeep => "json nests too deep",
        })
    }
}

impl core::error::Error for JsonError {}

/// The deepest nesting the scanner can track (the width of its bracket stack).
pub const MAX_SCAN_DEPTH: usize = 64;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(&b) = bytes.get(pos) {
        if !is_ws(b) {
            break;
        }
        pos = pos.saturating_add(1);
    }
    pos
}

/// Skips a string whose opening quote is at `pos`; returns the index just past the closing quote.
// Always inlined, as `skip_scalar`: out of line, the scanner's calls (a key, a string value)
// cost more flash than the copies (BENCHMARKS.md, "no_std footprint").
#[inline(always)]
fn skip_string(bytes: &[u8], pos: usize) -> Result<usize, JsonError> {
    if bytes.get(pos) != Some(&b'"') {
        return Err(JsonError::Syntax);
    }
    let mut i = pos.saturating_add(1);
    loop {
        match bytes.get(i) {
            None => return Err(JsonError::Syntax),
            Some(b'"') => return Ok(i.saturating_add(1)),
            Some(b'\\') => {
                // Any escaped byte; `serde-json-core` validates the escape itself.
                if bytes.get(i.saturating_add(1)).is_none() {
                    return Err(JsonError::Syntax);
                }
                i = i.saturating_add(2);
            }
            Some(&b) if b < 0x20 => return Err(JsonError::Syntax),
            Some(_) => i = i.saturating_add(1),
        }
    }
}

fn is_scalar_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// The literal names a JSON scalar may have.
const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// Skips a scalar (`true`, `false`, `null` or a number) starting at `pos`.
// Always inlined: one call in the scanner (BENCHMARKS.md, "no_std footprint").
#[inline(always)]
fn skip_scalar(bytes: &[u8], pos: usize) -> Result<usize, JsonError> {
    let mut end = pos;
    while let Some(&b) = bytes.get(end) {
        if !is_scalar_byte(b) {
            break;
        }
        end = end.saturating_add(1);
    }
    let token = bytes.get(pos..end).ok_or(JsonError::Syntax)?;
    match token {
        [first, ..] if first.is_ascii_digit() || *first == b'-' => Ok(end),
        // One comparison in a loop over a table, not one per literal.
        _ if LITERALS.contains(&token) => Ok(end),
        _ => Err(JsonError::Syntax),
    }
}

/// Skips one JSON value starting at or after `pos` (leading whitespace allowed) that may open at
/// most `max_depth` nested containers; returns `(start, end)` of the value.
///
/// Iterative: containers are tracked in a bit stack, and inside them the member/element grammar
/// (`"key": value`, commas) is checked with a small state machine.
pub fn skip_value(bytes: &[u8], pos: usize, max_depth: usize) -> Result<(usize, usize), JsonError> {
    let start = skip_ws(bytes, pos);
    let max_depth = max_depth.min(MAX_SCAN_DEPTH);
    match bytes.get(start) {
        None => Err(JsonError::Syntax),
        Some(b'"') => Ok((start, skip_string(bytes, start)?)),
        Some(b'{') | Some(b'[') => Ok((start, skip_container(bytes, start, max_depth)?)),
        Some(_) => Ok((start, skip_scalar(bytes, start)?)),
    }
}

/// What the container state machine expects next: a set of these bits.
mod expect {
    /// A value (after `[`, a colon, or a comma in an array).
    pub(super) const VALUE: u8 = 1;
    /// The closing bracket of the container (right after it opened, or after a value).
    pub(super) const CLOSE: u8 = 2;
    /// A key (after `{` or a comma in an object).
    pub(super) const KEY: u8 = 4;
    /// The colon after a key.
    pub(super) const COLON: u8 = 8;
    /// A comma (after a value).
    pub(super) const COMMA: u8 = 16;
}

fn skip_container(bytes: &[u8], start: usize, max_depth: usize) -> Result<usize, JsonError> {
    scan(bytes, start, max_depth, &mut Wanted::none())
}

/// What the scanner splits: bytes, or a `str` whose members come back as `str` without being
/// checked as UTF-8 a second time (the device checks a payload once, on arrival).
pub(crate) trait Text {
    /// Whether the text is known to be UTF-8 (then keys are not checked again).
    const UTF8: bool;
    /// The text as bytes.
    fn bytes(&self) -> &[u8];
    /// The part of the text between two byte offsets (on a `str`, only char boundaries).
    fn part(&self, start: usize, end: usize) -> Option<&Self>;
}

impl Text for [u8] {
    const UTF8: bool = false;
    fn bytes(&self) -> &[u8] {
        self
    }
    fn part(&self, start: usize, end: usize) -> Option<&Self> {
        self.get(start..end)
    }
}

impl Text for str {
    const UTF8: bool = true;
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn part(&self, start: usize, end: usize) -> Option<&Self> {
        self.get(start..end)
    }
}

/// The members of the outermost object that [`scan`] hands back: the raw values of `keys` in
/// `out`.
struct Wanted<'k, 'o, 'j, T: Text + ?Sized = [u8]> {
    /// Whether the outermost object's members are read at all (by [`split`]): then their keys
    /// must be UTF-8, as [`Members`] requires.
    members: bool,
    keys: &'k [&'k str],
    out: &'o mut [Option<&'j T>],
    /// A repeated wanted key is an error.
    unique: bool,
}

impl<'j, T: Text + ?Sized> Wanted<'_, '_, 'j, T> {
    /// Keeps `value` if `key` is wanted.
    fn record(&mut self, key: &[u8], value: &'j T) -> Result<(), JsonError> {
        for (slot, want) in self.out.iter_mut().zip(self.keys.iter()) {
            if key == want.as_bytes() {
                if self.unique && slot.is_some() {
                    return Err(JsonError::Syntax);
                }
                *slot = Some(value);
            }
        }
        Ok(())
    }

    fn none() -> Self {
        Wanted {
            members: false,
            keys: &[],
            out: &mut [],
            unique: false,
        }
    }
}

/// Skips the container (`{` or `[`) at `start`, which may open at most `max_depth` nested
/// containers itself included (up to [`MAX_SCAN_DEPTH`] + 1); returns the index just past it.
/// When that container is an object, the values of its members named in `wanted` are recorded.
///
/// Iterative: containers are tracked in a bit stack, and inside them the member/element grammar
/// (`"key": value`, commas) is checked with a small state machine.
fn scan<'j, T: Text + ?Sized>(
    text: &'j T,
    start: usize,
    max_depth: usize,
    wanted: &mut Wanted<'_, '_, 'j, T>,
) -> Result<usize, JsonError> {
    let bytes: &'j [u8] = text.bytes();
    // Whether the outermost container is an object, and bit `d` of `stack` for the container
    // at depth `d + 2` (the outermost one is depth 1).
    let mut outer_object = false;
    let mut stack: u64 = 0;
    let mut depth: usize = 0;
    let mut expect = expect::VALUE;
    // The key of the outermost object's member being read, and where its value starts.
    let mut key: &'j [u8] = &[];
    let mut value_start = 0;
    let mut i = start;
    loop {
        i = skip_ws(bytes, i);
        let b = *bytes.get(i).ok_or(JsonError::Syntax)?;
        let in_object = match depth {
            0 => false,
            1 => outer_object,
            d => stack & bit(d - 2) != 0,
        };
        if depth == 1 && expect == expect::VALUE {
            value_start = i;
        }
        // One arm per byte with the states that accept it as guards (a `match` on the bit set
        // and the byte together compiles to a much bigger decision tree).
        match b {
            b'{' | b'[' if expect & expect::VALUE != 0 => {
                if depth >= max_depth {
                    return Err(JsonError::TooDeep);
                }
                let object = b == b'{';
                match depth.checked_sub(1) {
                    None => outer_object = object,
                    Some(d) if object => stack |= bit(d),
                    Some(d) => stack &= !bit(d),
                }
                // `{` is followed by a key or `}`, `[` by a value or `]`.
                expect = expect::CLOSE | if object { expect::KEY } else { expect::VALUE };
                depth += 1;
                i += 1;
                continue;
            }
            b'}' | b']' if expect & expect::CLOSE != 0 => {
                if depth == 0 || (b == b'}') != in_object {
                    return Err(JsonError::Syntax);
                }
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return Ok(i);
                }
                expect = expect::COMMA | expect::CLOSE;
            }
            b',' if expect & expect::COMMA != 0 => {
                expect = if in_object {
                    expect::KEY
                } else {
                    expect::VALUE
                };
                i += 1;
                continue;
            }
            b'"' if expect & expect::KEY != 0 => {
                let end = skip_string(bytes, i)?;
                if depth == 1 && wanted.members {
                    key = bytes
                        .get(i.saturating_add(1)..end.saturating_sub(1))
                        .ok_or(JsonError::Syntax)?;
                    if !T::UTF8 && core::str::from_utf8(key).is_err() {
                        return Err(JsonError::Syntax);
                    }
                }
                i = end;
                expect = expect::COLON;
                continue;
            }
            b':' if expect & expect::COLON != 0 => {
                expect = expect::VALUE;
                i += 1;
                continue;
            }
            b'"' if expect & expect::VALUE != 0 => {
                i = skip_string(bytes, i)?;
                expect = expect::COMMA | expect::CLOSE;
            }
            _ if expect & expect::VALUE != 0 => {
                i = skip_scalar(bytes, i)?;
                expect = expect::COMMA | expect::CLOSE;
            }
            _ => return Err(JsonError::Syntax),
        }
        // A value just ended (a scalar, a string or a container closed): one of the outermost
        // object's when back at depth 1.
        if depth == 1 && outer_object && wanted.members {
            let value = text.part(value_start, i).ok_or(JsonError::Syntax)?;
            wanted.record(key, value)?;
        }
    }
}

/// An iterator over the top-level members of a JSON object: `(raw key, raw value)` pairs.
///
/// Keys are returned as written between the quotes (escapes are not decoded; the keys of this
/// protocol never need any). Values are the exact byte range of the value, whitespace trimmed.
/// Create it with [`Members::new`]; iteration stops at the first error, which it yields once.
#[derive(Debug, Clone)]
pub struct Members<'j> {
    bytes: &'j [u8],
    pos: usize,
    max_depth: usize,
    first: bool,
    done: bool,
}

impl<'j> Members<'j> {
    /// Starts scanning `bytes`, which must hold one JSON object nesting at most `max_depth` levels
    /// (the object itself is level 1, as in [`iothub_spec::limits::json_depth`]).
    pub fn new(bytes: &'j [u8], max_depth: usize) -> Result<Self, JsonError> {
        let pos = skip_ws(bytes, 0);
        if bytes.get(pos) != Some(&b'{') {
            return Err(JsonError::NotAnObject);
        }
        if max_depth == 0 {
            return Err(JsonError::TooDeep);
        }
        Ok(Members {
            bytes,
            pos: pos.saturating_add(1),
            max_depth,
            first: true,
            done: false,
        })
    }

    fn step(&mut self) -> Result<Option<(&'j str, &'j [u8])>, JsonError> {
        let mut i = skip_ws(self.bytes, self.pos);
        match self.bytes.get(i) {
            Some(b'}') => {
                let end = skip_ws(self.bytes, i.saturating_add(1));
                if end != self.bytes.len() {
                    return Err(JsonError::Syntax);
                }
                return Ok(None);
            }
            Some(b',') if !self.first => {
                i = skip_ws(self.bytes, i.saturating_add(1));
            }
            Some(b'"') if self.first => {}
            _ => return Err(JsonError::Syntax),
        }
        self.first = false;
        let key_end = skip_string(self.bytes, i)?;
        let key = self
            .bytes
            .get(i.saturating_add(1)..key_end.saturating_sub(1))
            .ok_or(JsonError::Syntax)?;
        let key = core::str::from_utf8(key).map_err(|_| JsonError::Syntax)?;
        let colon = skip_ws(self.bytes, key_end);
        if self.bytes.get(colon) != Some(&b':') {
            return Err(JsonError::Syntax);
        }
        let (vs, ve) = skip_value(
            self.bytes,
            colon.saturating_add(1),
            self.max_depth.saturating_sub(1),
        )?;
        self.pos = ve;
        let value = self.bytes.get(vs..ve).ok_or(JsonError::Syntax)?;
        Ok(Some((key, value)))
    }
}

impl<'j> Iterator for Members<'j> {
    type Item = Result<(&'j str, &'j [u8]), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Scans the whole object in `bytes` once and returns the raw values of `keys`, in order
/// (`None` for a key that is absent; for a repeated key the last value wins, as in
/// `serde_json`).
///
/// Fails when `bytes` is not one well-formed object within `max_depth`, so a caller never acts on
/// a truncated envelope.
// Always inlined: one out-of-line copy per key count cost more flash than the two arrays built
// at each call site (BENCHMARKS.md, "no_std footprint").
#[inline(always)]
pub fn split<'j, const N: usize>(
    bytes: &'j [u8],
    keys: [&str; N],
    max_depth: usize,
) -> Result<[Option<&'j [u8]>; N], JsonError> {
    let mut out: [Option<&'j [u8]>; N] = [None; N];
    split_into(bytes, &keys, &mut out, max_depth, false)?;
    Ok(out)
}

/// [`split`] over a payload already checked as UTF-8: the values come back as `str`, without a
/// second UTF-8 check (of the keys here, or of the values by the caller).
// Always inlined, as `split`.
#[inline(always)]
pub(crate) fn split_str<'j, const N: usize>(
    text: &'j str,
    keys: &[&str; N],
    max_depth: usize,
) -> Result<[Option<&'j str>; N], JsonError> {
    let mut out: [Option<&'j str>; N] = [None; N];
    split_into(text, keys, &mut out, max_depth, false)?;
    Ok(out)
}

#[cfg(any(feature = "ntp", feature = "ota"))]
/// [`split_str`] for a typed body: a repeated wanted key is an error ([`JsonError::Syntax`]), as
/// it is for a `#[derive(Deserialize)]` struct read by `serde-json-core`.
// Always inlined, as `split`.
#[inline(always)]
pub(crate) fn split_unique<'j, const N: usize>(
    text: &'j str,
    keys: &[&str; N],
    max_depth: usize,
) -> Result<[Option<&'j str>; N], JsonError> {
    let mut out: [Option<&'j str>; N] = [None; N];
    split_into(text, keys, &mut out, max_depth, true)?;
    Ok(out)
}

/// The work of [`split`], not generic over the number of keys (one copy in the binary): one
/// pass of the container state machine over the whole object, which records the wanted members
/// on the way (the same answers as walking [`Members`] and skipping each value, tested against
/// that below).
fn split_into<'j, T: Text + ?Sized>(
    text: &'j T,
    keys: &[&str],
    out: &mut [Option<&'j T>],
    max_depth: usize,
    unique: bool,
) -> Result<(), JsonError> {
    let bytes = text.bytes();
    let start = skip_ws(bytes, 0);
    if bytes.get(start) != Some(&b'{') {
        return Err(JsonError::NotAnObject);
    }
    if max_depth == 0 {
        return Err(JsonError::TooDeep);
    }
    let mut wanted = Wanted {
        members: true,
        keys,
        out,
        unique,
    };
    // The object itself is one level more than `skip_value` allows for the values in it.
    let end = scan(text, start, max_depth.min(MAX_SCAN_DEPTH + 1), &mut wanted)?;
    if skip_ws(bytes, end) != bytes.len() {
        return Err(JsonError::Syntax);
    }
    Ok(())
}

/// The text between the quotes of a raw JSON string value, escapes left as they are (what
/// `serde-json-core` borrows for a `&str`), or `None` when `raw` is not a string.
pub(crate) fn as_raw_str(raw: &str) -> Option<&str> {
    // The quotes are ASCII, so both ends are char boundaries (`get` checks it anyway).
    match raw.as_bytes() {
        [b'"', .., b'"'] => raw.get(1..raw.len().saturating_sub(1)),
        _ => None,
    }
}

/// The contents of a raw JSON string value without escapes, or `None` when `raw` is not a string
/// or holds a backslash (client tokens, ids and names never need escapes).
pub fn as_plain_str(raw: &[u8]) -> Option<&str> {
    core::str::from_utf8(raw).ok().and_then(as_plain)
}

/// [`as_plain_str`] of a value split from a payload already checked as UTF-8.
pub(crate) fn as_plain(raw: &str) -> Option<&str> {
    as_raw_str(raw).filter(|s| !has_backslash(s))
}

/// Whether `s` holds a `\` (a loop: `<[u8]>::contains` would link `memchr`).
pub(crate) fn has_backslash(s: &str) -> bool {
    s.bytes().any(|b| b == b'\\')
}

/// `1 << i` for `i < 64`, 0 for any larger `i`, with 32-bit shifts only: a variable 64-bit shift
/// links `__aeabi_llsl`/`__aeabi_llsr` on 32-bit targets.
pub(crate) fn bit(i: usize) -> u64 {
    let low = u32::try_from(i)
        .ok()
        .and_then(|i| 1u32.checked_shl(i))
        .unwrap_or(0);
    let high = i
        .checked_sub(32)
        .and_then(|i| u32::try_from(i).ok())
        .and_then(|i| 1u32.checked_shl(i))
        .unwrap_or(0);
    (u64::from(high) << 32) | u64::from(low)
}

/// A raw JSON value as a `u64`, or `None` when it is not a plain non-negative integer that fits.
pub fn as_u64(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in raw {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    // JSON forbids leading zeros.
    if raw.len() > 1 && raw.first() == Some(&b'0') {
        return None;
    }
    Some(n)
}

/// Whether a raw JSON value is the literal `null`.
pub fn is_null(raw: &[u8]) -> bool {
    raw == b"null"
}

/// Whether a raw JSON value is an object (starts with `{`).
pub fn is_object(raw: &[u8]) -> bool {
    raw.first() == Some(&b'{')
}

#[cfg(test)]
mod tests;
