//! What a case exchanged with the hub (or, on the device side, with the device): one line per
//! MQTT packet or HTTP call, kept so that a failing case can show the messages behind its
//! reason (`--html`, `--format json`).
//!
//! [`Case::execute`](crate::case::Case::execute) runs each case inside [`scope`] with a fresh
//! [`Transcript`]; the clients ([`crate::mqtt::Conn`], [`crate::raw::Raw`], [`crate::api::Api`],
//! the device side's scripted hub) take [`current`] when they are created or called, so their
//! own tasks record into the case's transcript too. Outside a case nothing is recorded.
//!
//! Bounded: at most [`MAX_LINES`] lines (the first half and the last half are kept, with the
//! number left out between them), each payload cut to [`MAX_PAYLOAD`] bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most lines kept per case.
pub const MAX_LINES: usize = 240;
/// Most bytes of one payload or body shown.
pub const MAX_PAYLOAD: usize = 400;

tokio::task_local! {
    static CURRENT: Transcript;
}

/// The exchange of one case; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Transcript(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    start: Instant,
    head: Vec<String>,
    tail: VecDeque<String>,
    left_out: usize,
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript::new()
    }
}

impl Transcript {
    /// An empty transcript; times are counted from now.
    pub fn new() -> Transcript {
        Transcript(Arc::new(Mutex::new(Inner {
            start: Instant::now(),
            head: Vec::new(),
            tail: VecDeque::new(),
            left_out: 0,
        })))
    }

    /// Records one line: who sent it (`->` from the suite, `<-` to it) and what.
    pub fn push(&self, who: &str, dir: Dir, what: &str) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let line = format!(
            "+{:>7.3}s {who} {} {what}",
            inner.start.elapsed().as_secs_f64(),
            dir.arrow()
        );
        if inner.head.len() < MAX_LINES / 2 {
            inner.head.push(line);
            return;
        }
        if inner.tail.len() == MAX_LINES / 2 {
            inner.tail.pop_front();
            inner.left_out += 1;
        }
        inner.tail.push_back(line);
    }

    /// Every line kept, in order (a marker where lines were left out).
    pub fn lines(&self) -> Vec<String> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = inner.head.clone();
        if inner.left_out > 0 {
            out.push(format!("... {} line(s) left out ...", inner.left_out));
        }
        out.extend(inner.tail.iter().cloned());
        out
    }
}

/// The direction of one recorded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Sent by the suite (or, on the device side, by the scripted hub).
    Out,
    /// Received by the suite (or sent by the device).
    In,
    /// Neither: a connection event.
    Note,
}

impl Dir {
    fn arrow(self) -> &'static str {
        match self {
            Dir::Out => "->",
            Dir::In => "<-",
            Dir::Note => "--",
        }
    }
}

/// Runs `f` with `t` as the current transcript.
pub async fn scope<F: std::future::Future>(t: Transcript, f: F) -> F::Output {
    CURRENT.scope(t, f).await
}

/// The transcript of the case running on this task, if any.
pub fn current() -> Option<Transcript> {
    CURRENT.try_with(|t| t.clone()).ok()
}

/// Records into the current transcript, if any.
pub fn note(who: &str, dir: Dir, what: &str) {
    if let Some(t) = current() {
        t.push(who, dir, what);
    }
}

/// A payload for a transcript line: UTF-8 (lossy) cut to [`MAX_PAYLOAD`] bytes.
pub fn payload(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_PAYLOAD)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX_PAYLOAD {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_only_inside_a_scope_and_stays_bounded() {
        note("a", Dir::Out, "outside");
        let t = Transcript::new();
        scope(t.clone(), async {
            for i in 0..MAX_LINES + 10 {
                note("dev", Dir::Out, &format!("PUBLISH t {i}"));
            }
        })
        .await;
        let lines = t.lines();
        assert_eq!(lines.len(), MAX_LINES + 1);
        assert!(lines[0].ends_with("dev -> PUBLISH t 0"), "{}", lines[0]);
        assert_eq!(lines[MAX_LINES / 2], "... 10 line(s) left out ...");
        assert!(lines[MAX_LINES].ends_with(&format!("PUBLISH t {}", MAX_LINES + 9)));
        assert!(!lines.iter().any(|l| l.contains("outside")));
    }

    #[test]
    fn payloads_are_cut() {
        assert_eq!(payload(b"{}"), "{}");
        let long = vec![b'x'; MAX_PAYLOAD + 5];
        let p = payload(&long);
        assert!(p.ends_with(&format!("... ({} bytes)", MAX_PAYLOAD + 5)));
        assert!(p.len() < MAX_PAYLOAD + 30);
    }
}
