//! The iothub reference hub.
