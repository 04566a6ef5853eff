//! The bounded JSON scanner on arbitrary bytes: `split` of the envelope fields, `skip_value`
//! and the scalar helpers must return (an error or values inside the input), never panic.
#![no_main]

use iothub_sdk_nostd::json;
use iothub_sdk_nostd::spec::payload::field;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (depth, bytes) = match data.split_first() {
        Some((d, rest)) => (usize::from(*d % 40), rest),
        None => (8, data),
    };
    if let Ok(fields) = json::split(
        bytes,
        [
            field::STATE,
            field::VERSION,
            field::CLIENT_TOKEN,
            field::CODE,
        ],
        depth,
    ) {
        for raw in fields.into_iter().flatten() {
            let _ = json::as_u64(raw);
            let _ = json::as_plain_str(raw);
            let _ = json::is_null(raw);
            let _ = json::is_object(raw);
            let _ = json::skip_value(raw, 0, depth);
        }
    }
    let _ = json::skip_value(bytes, 0, depth);
});
