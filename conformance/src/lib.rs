//! `iothub-conformance`: checks a hub, and a device, against SPEC.md.
//!
//! Not built yet: tracked by issue 5. It will read the golden vectors in `spec/vectors/`.

pub use iothub_spec as spec;
