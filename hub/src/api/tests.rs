//! API tests: real SQLite store in a tempdir, recording fake bus, `tower::ServiceExt::oneshot`.
