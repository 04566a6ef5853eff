//! Fault injection into the store's write transactions, for the fault-injection tests.
//!
//! Every write transaction passes named points ([`Step`]): its `BEGIN`, each statement, its
//! `COMMIT`. A test can make any of them fail for one kind of writer ([`Writer`]) and check that
//! the caller gets an error, that nothing acknowledged is lost and that the hub recovers.
//!
//! The injecting code exists only under `cfg(test)` or the `fault-injection` feature, which the
//! hub's own dev-dependency on itself turns on for test builds; a normal build (the shipped
//! binary) has the no-op [`Faults`] below and never reads `IOTHUB_FAULT_FILE`.
//!
//! # Rules
//! One rule per line, `<writer> <step>`: writer is `shadows`, `things`, `presence`, `ota`,
//! `enrollments`, `configurations`, `jobs`, `sync`, `routes`, `probe` or `*`; step is `begin`, `statement N` (the N-th statement of the transaction,
//! counted from one) or `commit`. `#` starts a comment. Example: `shadows statement 2`. A process reads its
//! rules from the file named by `IOTHUB_FAULT_FILE` at every step, so a test changes them while
//! the hub runs by rewriting the file (an absent or empty file injects nothing).

use std::fmt;

/// The writers of the store, so that a fault can target one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Shadow writes of the group committer.
    Shadows,
    /// The thing registry: create, enable, delete, tags.
    Things,
    /// Connect and disconnect times (S-8.2).
    Presence,
    /// OTA jobs and tasks (S-7.3).
    Ota,
    /// Enrollments and provisioning (S-10).
    Enrollments,
    /// The store's own check that writes work again.
    Probe,
    /// Configurations and what they applied (S-11).
    Configurations,
    /// Fleet jobs and their per-thing outcomes (S-12).
    Jobs,
    /// Registry sync tasks and events (S-13).
    Sync,
    /// Routes: their outboxes, dead letters and message history (S-14).
    Routes,
}

impl Writer {
    /// The name used in rules and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Writer::Shadows => "shadows",
            Writer::Things => "things",
            Writer::Presence => "presence",
            Writer::Ota => "ota",
            Writer::Enrollments => "enrollments",
            Writer::Probe => "probe",
            Writer::Configurations => "configurations",
            Writer::Jobs => "jobs",
            Writer::Sync => "sync",
            Writer::Routes => "routes",
        }
    }
}

/// A point of a write transaction where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before `BEGIN IMMEDIATE`.
    Begin,
    /// Before the N-th statement (from 1).
    Statement(u32),
    /// Before `COMMIT`.
    Commit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Begin => f.write_str("begin"),
            Step::Statement(n) => write!(f, "statement {n}"),
            Step::Commit => f.write_str("commit"),
        }
    }
}

pub use imp::Faults;

#[cfg(any(test, feature = "fault-injection"))]
mod imp {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use super::{Step, Writer};
    use crate::store::StoreError;

    /// The environment variable naming the rules file.
    pub const ENV: &str = "IOTHUB_FAULT_FILE";

    /// Injected faults: rules from a file (re-read at every step) or set by a test.
    #[derive(Debug, Default)]
    pub struct Faults {
        file: Option<PathBuf>,
        rules: Mutex<String>,
    }

    impl Faults {
        /// Faults from the file named by `IOTHUB_FAULT_FILE`, if set.
        pub fn from_env() -> Option<Arc<Faults>> {
            let file = PathBuf::from(std::env::var_os(ENV)?);
            tracing::warn!(file = %file.display(), "storage fault injection is on (test build)");
            Some(Arc::new(Faults {
                file: Some(file),
                rules: Mutex::new(String::new()),
            }))
        }

        /// Faults set by the caller with [`Faults::set`].
        pub fn programmed() -> Arc<Faults> {
            Arc::new(Faults::default())
        }

        /// Replaces the rules (see the module docs for their form).
        pub fn set(&self, rules: &str) {
            if let Ok(mut r) = self.rules.lock() {
                *r = rules.to_owned();
            }
        }

        /// `Err` when a rule says `writer` fails at `step`.
        pub fn check(&self, writer: Writer, step: Step) -> Result<(), StoreError> {
            let rules = match &self.file {
                // Blocking read of a small file, in test builds only.
                Some(file) => std::fs::read_to_string(file).unwrap_or_default(),
                None => self.rules.lock().map(|r| r.clone()).unwrap_or_default(),
            };
            if rules.lines().any(|line| matches(line, writer, step)) {
                return Err(StoreError::Unavailable(format!(
                    "injected fault: {} {step}",
                    writer.as_str()
                )));
            }
            Ok(())
        }
    }

    fn matches(line: &str, writer: Writer, step: Step) -> bool {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(who) = words.next() else {
            return false;
        };
        if who != "*" && who != writer.as_str() {
            return false;
        }
        let rest: Vec<&str> = words.collect();
        rest.join(" ") == step.to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rules_select_writer_and_step() {
            let f = Faults::programmed();
            assert!(f.check(Writer::Shadows, Step::Commit).is_ok());
            f.set("shadows statement 2  # the update\n* begin\n");
            assert!(f.check(Writer::Shadows, Step::Statement(2)).is_err());
            assert!(f.check(Writer::Shadows, Step::Statement(1)).is_ok());
            assert!(f.check(Writer::Things, Step::Statement(2)).is_ok());
            assert!(f.check(Writer::Ota, Step::Begin).is_err());
            assert!(f.check(Writer::Shadows, Step::Commit).is_ok());
            f.set("");
            assert!(f.check(Writer::Ota, Step::Begin).is_ok());
        }
    }
}

#[cfg(not(any(test, feature = "fault-injection")))]
mod imp {
    use std::sync::Arc;

    use super::{Step, Writer};
    use crate::store::StoreError;

    /// Fault injection is not compiled into this build: nothing ever fails on purpose.
    #[derive(Debug, Default)]
    pub struct Faults;

    impl Faults {
        /// Always `None`: this build never reads `IOTHUB_FAULT_FILE`.
        pub fn from_env() -> Option<Arc<Faults>> {
            None
        }

        /// Always `Ok`.
        #[inline(always)]
        pub fn check(&self, _writer: Writer, _step: Step) -> Result<(), StoreError> {
            Ok(())
        }
    }
}
