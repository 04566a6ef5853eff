//! `iothub`: the reference hub binary.
fn main() {}
