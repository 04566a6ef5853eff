//! Logging shim: routes the crate's diagnostics to `defmt` (feature `defmt`), to `log` (feature
//! `log`), or to nothing (the arguments are still type-checked, never evaluated).
//!
//! Messages use only `{}` with integers and `&str` so that one format string suits both
//! backends (defmt has its own format syntax; `{}` of primitives is the common subset).
#![allow(unused_macros)]

macro_rules! log_at {
    ($defmt:ident, $log:ident, $($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$defmt!($($arg)*);
        #[cfg(all(feature = "log", not(feature = "defmt")))]
        ::log::$log!($($arg)*);
        #[cfg(not(any(feature = "log", feature = "defmt")))]
        if false {
            let _ = ::core::format_args!($($arg)*);
        }
    }};
}

macro_rules! debug {
    ($($arg:tt)*) => { $crate::fmt::log_at!(debug, debug, $($arg)*) };
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::fmt::log_at!(info, info, $($arg)*) };
}

macro_rules! warning {
    ($($arg:tt)*) => { $crate::fmt::log_at!(warn, warn, $($arg)*) };
}

// Not every macro is used in every feature set (`info` only by the minimq adapter).
#[allow(unused_imports)]
pub(crate) use {debug, info, log_at, warning};
