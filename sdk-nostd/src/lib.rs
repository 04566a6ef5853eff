//! Sans-IO device core for iothub things on `no_std` targets.
//!
//! Not built yet: the device state machine is tracked by issue 3 ("Device core (sans-IO) and the
//! async std SDK"). This crate exists so the workspace layout is final and so CI proves, from the
//! first commit on, that it builds without `std`. It re-exports the wire contract it will speak.
#![no_std]

pub use iothub_spec as spec;
