//! Live progress: on a terminal, one line redrawn every second and cut to the terminal's width
//! (indicatif); elsewhere (CI logs, pipes), one plain status line every few seconds. Both show,
//! most important first: the phase with elapsed and remaining time, connected things, accepted
//! updates per second, the live p99 of updates, errors; the bar adds the processes' memory.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::fleet::{Fleet, Phase};
use crate::{resources, series};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A bar on a terminal, plain lines elsewhere.
    #[default]
    Auto,
    /// A line redrawn in place (needs a terminal).
    Bar,
    /// A status line every interval, for logs.
    Plain,
    /// Nothing until the report.
    None,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "bar" => Ok(Mode::Bar),
            "plain" => Ok(Mode::Plain),
            "none" => Ok(Mode::None),
            _ => Err(format!("{s:?}: expected auto, bar, plain or none")),
        }
    }
}

impl Mode {
    /// `Auto` resolved for this process's stderr.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Bar,
            Mode::Auto => Mode::Plain,
            m => m,
        }
    }
}

/// The status text: phase and times, provisioned while a first-boot fleet ramps, connected,
/// accepted/s, live update p99, errors.
/// `label` prefixes it (the shard of a worker).
pub fn status(fleet: &Fleet, began: Instant, label: &str) -> String {
    let mut s = String::new();
    if !label.is_empty() {
        let _ = write!(s, "{label} ");
    }
    let now = Instant::now();
    match *fleet.phase.borrow() {
        Phase::Ramp => {
            let _ = write!(s, "ramp {:.0}s", (now - began).as_secs_f64());
        }
        Phase::Measure { start, end } => {
            let total = (end - start).as_secs_f64();
            let done = now
                .saturating_duration_since(start)
                .as_secs_f64()
                .min(total);
            let _ = write!(s, "measure {done:.0}/{total:.0}s");
        }
        Phase::Stop => s.push_str("stopping"),
    }
    let st = &fleet.stats;
    if fleet.claim.is_some() && *fleet.phase.borrow() == Phase::Ramp {
        // First boot: how far provisioning is, and how hard the hub pushes back.
        let _ = write!(
            s,
            " | prov {}/{} ({} retries)",
            st.provision_accepted.get(),
            fleet.slots.len(),
            st.provision_retries.get()
        );
    }
    let _ = write!(s, " | conn {}/{}", st.connected.get(), fleet.slots.len());
    let point = series::latest(fleet);
    let accepted = point.as_ref().map_or(0, |p| p.accepted);
    let _ = write!(s, " | {accepted} acc/s");
    match point.and_then(|p| p.update_p99_ms) {
        Some(p99) => {
            let _ = write!(s, " | p99 {p99:.1}ms");
        }
        None => s.push_str(" | p99 —"),
    }
    let _ = write!(s, " | err {}", st.errors());
    s
}

/// Shows progress in `mode` (resolved) until the task is aborted; `hub_pid` adds the hub's
/// memory to the bar, `every` is the plain mode's interval.
pub async fn run(
    fleet: Arc<Fleet>,
    began: Instant,
    mode: Mode,
    every: Duration,
    label: String,
    hub_pid: Option<u32>,
) {
    match mode.resolve() {
        Mode::Bar => bar(fleet, began, label, hub_pid).await,
        Mode::Plain => {
            let mut tick = tokio::time::interval_at(began + every, every);
            loop {
                tick.tick().await;
                eprintln!("{}", status(&fleet, began, &label));
            }
        }
        Mode::None | Mode::Auto => {}
    }
}

async fn bar(fleet: Arc<Fleet>, began: Instant, label: String, hub_pid: Option<u32>) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    // `wide_msg` takes the rest of the line and is cut at the terminal's width, so the least
    // important figures (last) go first when the terminal is narrow.
    bar.set_style(
        ProgressStyle::with_template("{spinner} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let _clear = Finish(bar.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mib = |s: Option<resources::Sample>| match s {
            Some(s) => format!("{:.0}MiB", s.rss_bytes as f64 / (1024.0 * 1024.0)),
            None => "?".to_owned(),
        };
        let mut msg = status(&fleet, began, &label);
        let _ = write!(msg, " | rss sim {}", mib(resources::sample(None)));
        if let Some(pid) = hub_pid {
            let _ = write!(msg, " hub {}", mib(resources::sample(Some(pid))));
        }
        bar.set_message(msg);
        bar.tick();
    }
}

/// Clears the line when the task ends (it is aborted at the end of the run).
struct Finish(ProgressBar);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
