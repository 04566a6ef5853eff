//! The live progress line (indicatif), refreshed every second: connected things, rates of the
//! interactions, errors, and the resident memory of the simulator and the hub (when the hub's
//! process is known). Shown only on a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::fleet::Fleet;
use crate::resources;

/// Whether a progress line makes sense here (stderr is a terminal).
pub fn wanted() -> bool {
    std::io::stderr().is_terminal()
}

/// Refreshes the progress line every second until the task is aborted; `hub_pid` is the hub's
/// process when it runs on this machine.
pub async fn run(fleet: Arc<Fleet>, hub_pid: Option<u32>) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let _clear = Finish(bar.clone());
    let s = &fleet.stats;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = [0u64; 5];
    loop {
        tick.tick().await;
        let now = [
            s.updates_accepted.get(),
            s.converged.get(),
            s.rest_calls.get(),
            s.ntp_done.get(),
            s.reconnects.get(),
        ];
        let d: Vec<u64> = now.iter().zip(last).map(|(n, l)| n - l).collect();
        last = now;
        let errors = s.protocol_errors.total()
            + s.updates_rejected.total()
            + s.updates_timed_out.get()
            + s.desired_errors.total()
            + s.rest_call_errors.total();
        let mib = |s: Option<resources::Sample>| match s {
            Some(s) => format!("{:.0} MiB", s.rss_bytes as f64 / (1024.0 * 1024.0)),
            None => "?".to_owned(),
        };
        let mut memory = format!("rss sim {}", mib(resources::sample(None)));
        if let Some(pid) = hub_pid {
            memory = format!("{memory} hub {}", mib(resources::sample(Some(pid))));
        }
        bar.set_message(format!(
            "connected {}/{} | accepted/s {} | converged/s {} | methods/s {} | ntp/s {} | reconnects/s {} | errors {} | connect errors {} | {memory}",
            s.connected.get(),
            fleet.slots.len(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            errors,
            s.connect_errors.total(),
        ));
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
