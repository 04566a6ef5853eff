//! CPU time and memory of the simulator's process and of the hub's (the embedded hub child, or
//! `--hub-pid` for a hub on the same machine), read from Linux's `/proc`, so that a report gives
//! the memory per thing of each side separately.
//!
//! Everything here is best effort: where `/proc` cannot be read (another OS, a hub that has
//! exited) the figures are absent (`None`, `null` in JSON) rather than zero.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds used since the process started (all its threads).
    pub cpu_s: f64,
    /// Resident set size now (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Peak resident set size so far (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

/// Reads process `pid` (this process when `None`).
pub fn sample(pid: Option<u32>) -> Option<Sample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    Some(Sample {
        cpu_s: ticks as f64 / clock_ticks_per_second() as f64,
        rss_bytes: parse_status_kib(&status, "VmRSS")? * 1024,
        peak_rss_bytes: parse_status_kib(&status, "VmHWM")? * 1024,
    })
}

#[cfg(unix)]
fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

#[cfg(not(unix))]
fn clock_ticks_per_second() -> u64 {
    100
}

/// `utime + stime` (clock ticks) from the text of `/proc/PID/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value in kB of `key` (e.g. `VmRSS`) in the text of `/proc/PID/status`.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Samples of one process at the points of a run that the report uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings {
    /// Before provisioning (no thing exists yet).
    pub before: Option<Sample>,
    /// When the measured period began.
    pub measure_start: Option<Sample>,
    /// When the measured period ended (every thing still connected).
    pub measure_end: Option<Sample>,
    /// After the things stopped.
    pub end: Option<Sample>,
}

/// CPU and memory of one process over a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessUsage {
    /// Its process id.
    pub pid: u32,
    /// CPU seconds from its start to the end of the run.
    pub cpu_s: f64,
    /// CPU seconds within the measured period.
    pub measured_cpu_s: Option<f64>,
    /// Resident bytes before provisioning.
    pub rss_before_bytes: Option<u64>,
    /// Resident bytes at the end of the measured period (steady state, every thing connected).
    pub rss_measured_bytes: Option<u64>,
    /// Peak resident bytes (`VmHWM`) up to the end of the run.
    pub peak_rss_bytes: u64,
    /// (`rss_measured_bytes` − `rss_before_bytes`) / things.
    pub per_thing_bytes: Option<u64>,
    /// (`peak_rss_bytes` − `rss_before_bytes`) / things.
    pub peak_per_thing_bytes: Option<u64>,
}

impl ProcessUsage {
    /// The usage of process `pid` from `r` (None without a final sample).
    pub fn from_readings(pid: u32, r: &Readings, things: usize) -> Option<ProcessUsage> {
        let end = r.end?;
        let before = r.before.map(|s| s.rss_bytes);
        let per_thing = |bytes: u64| {
            let base = before?;
            (things > 0).then(|| bytes.saturating_sub(base) / things as u64)
        };
        let rss_measured = r.measure_end.map(|s| s.rss_bytes);
        // VmHWM and VmRSS are read from two files at slightly different moments, and a
        // sample's RSS can exceed the final reading's VmHWM by the pages touched in between:
        // the peak is at least every figure seen.
        let peak = [r.before, r.measure_start, r.measure_end, Some(end)]
            .into_iter()
            .flatten()
            .flat_map(|s| [s.rss_bytes, s.peak_rss_bytes])
            .max()
            .unwrap_or(end.peak_rss_bytes);
        Some(ProcessUsage {
            pid,
            cpu_s: end.cpu_s,
            measured_cpu_s: r
                .measure_start
                .zip(r.measure_end)
                .map(|(a, b)| (b.cpu_s - a.cpu_s).max(0.0)),
            rss_before_bytes: before,
            rss_measured_bytes: rss_measured,
            peak_rss_bytes: peak,
            per_thing_bytes: rss_measured.and_then(per_thing),
            peak_per_thing_bytes: per_thing(peak),
        })
    }

    /// One line for the human table.
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let kib = |b: u64| b as f64 / 1024.0;
        let mut s = format!("pid {}: cpu {:.1} s", self.pid, self.cpu_s);
        if let Some(m) = self.measured_cpu_s {
            let _ = write!(s, " ({m:.1} s measured)");
        }
        let _ = write!(s, ", rss");
        if let Some(b) = self.rss_before_bytes {
            let _ = write!(s, " {:.1} MiB before,", mib(b));
        }
        if let Some(b) = self.rss_measured_bytes {
            let _ = write!(s, " {:.1} MiB measuring,", mib(b));
        }
        let _ = write!(s, " peak {:.1} MiB", mib(self.peak_rss_bytes));
        if let (Some(t), Some(p)) = (self.per_thing_bytes, self.peak_per_thing_bytes) {
            let _ = write!(s, "; {:.1} KiB/thing (peak {:.1})", kib(t), kib(p));
        }
        s
    }
}

/// CPU and memory of both sides of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// The simulator's own process.
    pub simulator: Option<ProcessUsage>,
    /// The hub's process: the embedded hub, or `--hub-pid`; `None` for a hub not measured.
    pub hub: Option<ProcessUsage>,
}

impl Resources {
    /// Lines of the human table: `(name, value)`.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let show = |u: &Option<ProcessUsage>| match u {
            Some(u) => u.describe(),
            None => "not measured".to_owned(),
        };
        vec![
            ("simulator", show(&self.simulator)),
            ("hub", show(&self.hub)),
        ]
    }

    /// CSV counter rows: `(name, value)` for the figures that were measured.
    pub fn counters(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for (side, usage) in [("sim", &self.simulator), ("hub", &self.hub)] {
            let Some(u) = usage else { continue };
            let mut row = |name: &str, v: String| rows.push((format!("{side}_{name}"), v));
            row("cpu_s", format!("{:.3}", u.cpu_s));
            if let Some(v) = u.measured_cpu_s {
                row("measured_cpu_s", format!("{v:.3}"));
            }
            if let Some(v) = u.rss_before_bytes {
                row("rss_before_bytes", v.to_string());
            }
            if let Some(v) = u.rss_measured_bytes {
                row("rss_measured_bytes", v.to_string());
            }
            row("peak_rss_bytes", u.peak_rss_bytes.to_string());
            if let Some(v) = u.per_thing_bytes {
                row("per_thing_bytes", v.to_string());
            }
            if let Some(v) = u.peak_per_thing_bytes {
                row("peak_per_thing_bytes", v.to_string());
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis; utime 250, stime 50.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    7 0 123 456789 1024 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_values_in_kib() {
        let status = "Name:\tiothub-sim\nVmHWM:\t  163840 kB\nVmRSS:\t   81920 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(81_920));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(163_840));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib(status, "Threads"), None, "not a kB value");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn samples_this_process() {
        let s = sample(None).expect("/proc/self is readable on Linux");
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes, "{s:?}");
        let me = sample(Some(std::process::id())).expect("own pid");
        assert!(me.peak_rss_bytes > 0);
        assert_eq!(sample(Some(u32::MAX)), None, "no such process");
    }

    #[test]
    fn peak_is_at_least_every_sample() {
        let at = |rss: u64, peak: u64| {
            Some(Sample {
                cpu_s: 1.0,
                rss_bytes: rss,
                peak_rss_bytes: peak,
            })
        };
        // The reading: 12.9 MiB while measuring, a final VmHWM of 12.6 MiB.
        let r = Readings {
            before: at(10 << 20, 10 << 20),
            measure_start: at(12 << 20, 12 << 20),
            measure_end: at(13_526_630, 12_000_000),
            end: at(12 << 20, 13_212_057),
        };
        let u = ProcessUsage::from_readings(7, &r, 10).expect("final sample");
        assert_eq!(u.peak_rss_bytes, 13_526_630);
        assert!(u.peak_rss_bytes >= u.rss_measured_bytes.unwrap_or(0));
    }

    #[test]
    fn usage_per_thing_is_growth_over_the_baseline() {
        let at = |cpu_s: f64, rss: u64, peak: u64| {
            Some(Sample {
                cpu_s,
                rss_bytes: rss,
                peak_rss_bytes: peak,
            })
        };
        let r = Readings {
            before: at(0.5, 20 << 20, 20 << 20),
            measure_start: at(2.0, 28 << 20, 30 << 20),
            measure_end: at(7.0, 28 << 20, 30 << 20),
            end: at(7.5, 22 << 20, 30 << 20),
        };
        let u = ProcessUsage::from_readings(7, &r, 1024).expect("final sample");
        assert_eq!(u.cpu_s, 7.5);
        assert_eq!(u.measured_cpu_s, Some(5.0));
        assert_eq!(u.per_thing_bytes, Some(8 * 1024));
        assert_eq!(u.peak_per_thing_bytes, Some(10 * 1024));
        assert!(
            u.describe().contains("8.0 KiB/thing (peak 10.0)"),
            "{}",
            u.describe()
        );
        let res = Resources {
            simulator: Some(u),
            hub: None,
        };
        assert!(
            res.counters()
                .contains(&("sim_per_thing_bytes".to_owned(), "8192".to_owned()))
        );
        assert_eq!(res.lines()[1].1, "not measured");
        assert_eq!(
            ProcessUsage::from_readings(7, &Readings::default(), 10),
            None
        );
    }
}
