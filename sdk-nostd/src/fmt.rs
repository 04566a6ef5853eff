//! Logging shim: routes the crate's diagnostics to `log` when the `log` feature is on, and to
//! nothing otherwise (the arguments are still type-checked, never evaluated).
#![allow(unused_macros)]

macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "log")]
        ::log::debug!($($arg)*);
        #[cfg(not(feature = "log"))]
        if false {
            let _ = ::core::format_args!($($arg)*);
        }
    }};
}

macro_rules! warning {
    ($($arg:tt)*) => {{
        #[cfg(feature = "log")]
        ::log::warn!($($arg)*);
        #[cfg(not(feature = "log"))]
        if false {
            let _ = ::core::format_args!($($arg)*);
        }
    }};
}

pub(crate) use debug;
pub(crate) use warning;
