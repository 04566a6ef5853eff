//! The iothub wire contract (placeholder while the crate is written).
#![no_std]
