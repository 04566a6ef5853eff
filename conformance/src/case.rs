//! The case registry: what a case is, how it is filtered, run and judged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::transcript::Transcript;

/// The clause name of a profile check: a case checking something docs/spec.md does not require
/// (a habit most devices have, such as reporting state at start-up). Profile checks are listed
/// apart from the spec's clauses in the report and never gate other cases.
pub const PROFILE: &str = "profile";

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A check failed; the text names the clause and what the hub did.
    Fail(String),
    /// Not run; the text says why.
    Skip(String),
}

impl Outcome {
    /// `pass`, `fail` or `skip`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skip(_) => "skip",
        }
    }

    /// The reason (empty for a pass).
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Fail(r) | Outcome::Skip(r) => r,
        }
    }
}

/// An error that turns a case into a skip instead of a failure.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

/// Returns from a case as skipped with `reason`.
pub fn skip<T>(reason: impl Into<String>) -> anyhow::Result<T> {
    Err(Skipped(reason.into()).into())
}

/// The future a case body returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
/// A case body, given the context `C` of its side ([`Ctx`] for the hub side,
/// [`crate::device::DeviceCtx`] for the device side).
pub type CaseFn<C = Ctx> = Arc<dyn Fn(Arc<C>) -> CaseFuture + Send + Sync>;

/// One conformance case, run with the context `C` of its side.
pub struct Case<C = Ctx> {
    /// Unique id, snake_case, starting with the clause group (`s3_vector_null_deletes_key`).
    pub id: String,
    /// The docs/spec.md clauses it checks (`S-3.4`).
    pub clauses: Vec<String>,
    /// One line saying what it checks.
    pub title: String,
    /// Its body; `None` for a case that is always skipped with `pending`.
    pub run: Option<CaseFn<C>>,
    /// Why the case is not run yet (with `run: None`).
    pub pending: Option<String>,
    /// Time limit of the whole case.
    pub limit: Duration,
}

impl<C> Clone for Case<C> {
    fn clone(&self) -> Self {
        Case {
            id: self.id.clone(),
            clauses: self.clauses.clone(),
            title: self.title.clone(),
            run: self.run.clone(),
            pending: self.pending.clone(),
            limit: self.limit,
        }
    }
}

impl<C: Send + Sync + 'static> Case<C> {
    /// A case running `f`.
    pub fn new<F, Fut>(
        id: impl Into<String>,
        clauses: &[&str],
        title: impl Into<String>,
        f: F,
    ) -> Case<C>
    where
        F: Fn(Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Case {
            id: id.into(),
            clauses: clauses.iter().map(|c| c.to_string()).collect(),
            title: title.into(),
            run: Some(Arc::new(move |ctx| Box::pin(f(ctx)))),
            pending: None,
            limit: Duration::from_secs(60),
        }
    }

    /// A case that is listed but always skipped with `reason`.
    pub fn pending(
        id: impl Into<String>,
        clauses: &[&str],
        title: impl Into<String>,
        reason: &str,
    ) -> Case<C> {
        Case {
            id: id.into(),
            clauses: clauses.iter().map(|c| c.to_string()).collect(),
            title: title.into(),
            run: None,
            pending: Some(reason.into()),
            limit: Duration::from_secs(1),
        }
    }

    /// The same case with another time limit.
    pub fn with_limit(mut self, limit: Duration) -> Case<C> {
        self.limit = limit;
        self
    }

    /// Whether any clause of the case starts with one of `prefixes` (`S-3` selects `S-3.4` but
    /// not `S-30`); an empty list selects everything.
    pub fn selected(&self, prefixes: &[String]) -> bool {
        prefixes.is_empty()
            || self.clauses.iter().any(|c| {
                prefixes
                    .iter()
                    .any(|p| c == p || (c.starts_with(p.as_str()) && c[p.len()..].starts_with('.')))
            })
            || prefixes.iter().any(|p| p == &self.id)
    }

    /// Runs the case within its time limit and turns errors into an [`Outcome`]. The messages
    /// the case exchanged ([`crate::transcript`]) are returned with a failure, else empty.
    pub async fn execute(&self, ctx: Arc<C>) -> (Outcome, Duration, Vec<String>) {
        let start = Instant::now();
        let Some(run) = &self.run else {
            return (
                Outcome::Skip(self.pending.clone().unwrap_or_default()),
                start.elapsed(),
                Vec::new(),
            );
        };
        let transcript = Transcript::new();
        // Aborted when this future is dropped too (Ctrl-C ends the run by dropping it): a case
        // left running would create things after the run's clean-up listed them.
        let mut task = AbortOnDrop(tokio::spawn(crate::transcript::scope(
            transcript.clone(),
            run(ctx),
        )));
        let out = match tokio::time::timeout(self.limit, &mut task.0).await {
            Err(_) => {
                task.0.abort();
                Outcome::Fail(format!("case did not finish within {:?}", self.limit))
            }
            Ok(Err(join)) => Outcome::Fail(format!("case panicked: {join}")),
            Ok(Ok(Ok(()))) => Outcome::Pass,
            Ok(Ok(Err(e))) => match e.downcast_ref::<Skipped>() {
                Some(s) => Outcome::Skip(s.0.clone()),
                None => Outcome::Fail(format!("{e:#}")),
            },
        };
        let exchange = match out {
            Outcome::Fail(_) => transcript.lines(),
            _ => Vec::new(),
        };
        (out, start.elapsed(), exchange)
    }
}

/// A spawned case that ends with its owner.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fails the case with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(anyhow::anyhow!($($arg)+));
        }
    };
}
