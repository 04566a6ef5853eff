//! The report as text: the human table printed at the end of a run, and CSV.

use std::fmt::Write as _;

use super::{EMPTY, Report};

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut line = |name: &str, value: String| {
            let _ = writeln!(s, "{name:<18}{value}");
        };
        line("versions", self.versions.describe());
        line("scenario", self.scenario_line());
        if self.shards.len() > 1 || self.shards.iter().any(|p| !p.shard.is_whole()) {
            let parts: Vec<String> = self
                .shards
                .iter()
                .map(|p| {
                    let sim = p.simulator.as_ref().map_or(String::new(), |u| {
                        format!(
                            " (pid {}, cpu {:.1} s, peak rss {:.0} MiB)",
                            u.pid,
                            u.cpu_s,
                            u.peak_rss_bytes as f64 / (1024.0 * 1024.0)
                        )
                    });
                    format!(
                        "{}: {} things, {} connected, {} accepted{sim}",
                        p.shard, p.things, p.connected, p.accepted
                    )
                })
                .collect();
            line("shards", parts.join("; "));
        }
        line(
            "things",
            format!(
                "{} ({} connected, {} failed; {} reconnects, {} churned, {} lost)",
                self.things,
                self.connected,
                self.connect_failures,
                self.reconnects,
                self.churned,
                self.lost
            ),
        );
        if self.provisioning.things > 0 {
            line("provisioning", self.provisioning_line());
        }
        line(
            "updates",
            format!(
                "{} sent, {} accepted ({:.0}/s over {:.1} s), {} unanswered, {} aborted",
                self.sent,
                self.accepted,
                self.accepted_per_sec,
                self.duration_s,
                self.unanswered,
                self.aborted
            ),
        );
        line("rejected", format!("{:?}", self.rejected));
        line("out of order", self.out_of_order.to_string());
        line("throttled ticks", self.throttled.to_string());
        line(
            "desired changes",
            format!(
                "{} sent, {} converged, {} unconverged, errors {:?}",
                self.desired_sent, self.converged, self.unconverged, self.desired_errors
            ),
        );
        line(
            "method calls",
            format!(
                "{} made, {} ok, device codes {:?}, errors {:?}",
                self.method_calls, self.method_ok, self.method_device_codes, self.method_errors
            ),
        );
        line(
            "ntp",
            format!(
                "{} started, {} done, {} timed out",
                self.ntp_started, self.ntp_done, self.ntp_timed_out
            ),
        );
        line(
            "telemetry",
            format!(
                "{} sent, {} acked (QoS 1), {} unacked",
                self.telemetry_sent, self.telemetry_acked, self.telemetry_unacked
            ),
        );
        line(
            "ota",
            format!(
                "{} jobs, {} ended, tasks {:?}, {} tasks received, results sent {:?}, errors {:?}",
                self.ota_jobs,
                self.ota_jobs_ended,
                self.ota_task_states,
                self.ota_tasks,
                self.ota_results,
                self.ota_job_errors
            ),
        );
        if self.rollout.is_some() {
            line("rollout", self.rollout_line());
        }
        if self.method_job.is_some() {
            line("method job", self.method_job_line());
        }
        line("connect errors", format!("{:?}", self.connect_errors));
        line("protocol errors", format!("{:?}", self.protocol_errors));
        line("ignored", format!("{:?}", self.ignored));
        for (name, value) in self.resources.lines() {
            line(name, value);
        }
        let _ = writeln!(
            s,
            "{:<22}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "interaction (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in self.rows() {
            let _ = write!(s, "{:<22}{:>9}", name, p.count);
            for v in [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms] {
                if p.count == 0 {
                    let _ = write!(s, "{EMPTY:>10}");
                } else {
                    // Up to 600,000.00 ms (the histograms' bound): always a space between.
                    let _ = write!(s, "{v:>10.2}");
                }
            }
            s.push('\n');
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(s, "thresholds");
            for c in &self.thresholds {
                let _ = writeln!(s, "  {c}");
            }
        }
        s
    }

    /// The first-boot figures in one line (the table's and the HTML page's).
    pub fn provisioning_line(&self) -> String {
        let p = &self.provisioning;
        format!(
            "{} first-boot things: {} provisioned in {} attempts ({} retries), rejected {:?}, \
             errors {:?}, gave up {:?}; {} first reports, failed {:?}",
            p.things,
            p.accepted,
            p.attempts,
            p.retries,
            p.rejected,
            p.errors,
            p.failed,
            p.first_reports,
            p.first_report_errors
        )
    }

    /// The configuration rollout in one line (the table's and the HTML page's; empty without
    /// one): things converged, times to all applied and succeeded, the hub's counts and CPU.
    pub fn rollout_line(&self) -> String {
        let Some(r) = &self.rollout else {
            return String::new();
        };
        let l = &self.latency.rollout;
        format!(
            "{} {}={}: {} of {} things converged (p50 {} / p99 {} / max {}), all applied in {}, \
             all succeeded in {}; hub counts {:?}; hub cpu {} over {:.1} s; errors {:?}",
            r.configuration,
            crate::fleet_ops::ROLLOUT_KEY,
            r.value,
            r.converged,
            r.things,
            ms_or_empty(l.count, l.p50_ms),
            ms_or_empty(l.count, l.p99_ms),
            ms_or_empty(l.count, l.max_ms),
            secs_or_empty(r.all_applied_s),
            secs_or_empty(r.all_succeeded_s),
            r.counts,
            secs_or_empty(r.hub_cpu_s),
            r.elapsed_s,
            r.errors
        )
    }

    /// The method job in one line (the table's and the HTML page's; empty without one): its
    /// duration, pacing, counts and per-thing latency.
    pub fn method_job_line(&self) -> String {
        let Some(j) = &self.method_job else {
            return String::new();
        };
        let l = &self.latency.job_thing;
        format!(
            "{} ({}, {} things at {}/min): {}, created->ended {} (pacing alone {:.1} s, \
             achieved {}/min); counts {:?}, {} records; start->succeeded p50 {} / p99 {} / max {}; \
             hub cpu {} over {:.1} s; errors {:?}",
            j.job_id,
            j.method,
            j.things,
            j.max_per_minute,
            if j.status.is_empty() {
                EMPTY
            } else {
                &j.status
            },
            secs_or_empty(j.duration_s),
            j.nominal_s,
            j.achieved_per_minute
                .map_or(EMPTY.to_owned(), |r| format!("{r:.0}")),
            j.counts,
            j.records,
            ms_or_empty(l.count, l.p50_ms),
            ms_or_empty(l.count, l.p99_ms),
            ms_or_empty(l.count, l.max_ms),
            secs_or_empty(j.hub_cpu_s),
            j.elapsed_s,
            j.errors
        )
    }

    /// The scenario in one line: things, duration, rates, fleet operations.
    pub fn scenario_line(&self) -> String {
        let sc = &self.scenario;
        let mut ops = String::new();
        if sc.business.configuration_rollout {
            ops.push_str(", configuration rollout");
        }
        if sc.business.method_job {
            let _ = write!(
                ops,
                ", method job at {}/min",
                sc.business.method_job_per_minute
            );
        }
        format!(
            "{} things ({}), {:.0} s measured, {} updates/s per thing of {} B, ramp {}/s, \
             desired {}/s, methods {}/s, churn {}/s, mqtt5 {:.0}%, seed {}{ops}",
            sc.population.count,
            if sc.population.first_boot {
                format!(
                    "{}, first boot under {}",
                    sc.population.id_pattern, sc.population.enrollment
                )
            } else {
                sc.population.id_pattern.clone()
            },
            sc.duration_s,
            sc.profile.reported_changes_per_s,
            sc.profile.reported_bytes,
            sc.ramp.connects_per_s,
            sc.business.desired_per_s,
            sc.business.methods_per_s,
            sc.profile.churn_per_s,
            sc.population.mqtt5_share * 100.0,
            sc.seed
        )
    }

    /// The report as CSV, one row per figure with its kind:
    /// `kind,name,value,count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms`. `latency` rows fill `count`
    /// and the percentiles (empty without samples), `counter` and `resource` rows `value`.
    pub fn csv(&self) -> String {
        let mut s = String::from("kind,name,value,count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms\n");
        for (name, p) in self.latency_fields() {
            let _ = write!(s, "latency,{name},,{}", p.count);
            for v in [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms] {
                if p.count == 0 {
                    s.push(',');
                } else {
                    let _ = write!(s, ",{v:.3}");
                }
            }
            s.push('\n');
        }
        let counters = [
            ("things", self.things as u64),
            ("connected", self.connected),
            ("connect_failures", self.connect_failures),
            ("reconnects", self.reconnects),
            ("churned", self.churned),
            ("lost", self.lost),
            ("updates_sent", self.sent),
            ("updates_accepted", self.accepted),
            ("updates_rejected", self.rejected.values().sum()),
            ("updates_unanswered", self.unanswered),
            ("updates_aborted", self.aborted),
            ("out_of_order", self.out_of_order),
            ("desired_sent", self.desired_sent),
            ("converged", self.converged),
            ("unconverged", self.unconverged),
            ("method_calls", self.method_calls),
            ("method_ok", self.method_ok),
            ("method_errors", self.method_errors.values().sum()),
            ("ntp_done", self.ntp_done),
            ("ntp_timed_out", self.ntp_timed_out),
            ("telemetry_sent", self.telemetry_sent),
            ("telemetry_acked", self.telemetry_acked),
            ("telemetry_unacked", self.telemetry_unacked),
            ("ota_jobs", self.ota_jobs),
            ("ota_jobs_ended", self.ota_jobs_ended),
            ("provision_things", self.provisioning.things),
            ("provision_attempts", self.provisioning.attempts),
            ("provisioned", self.provisioning.accepted),
            (
                "provision_rejected",
                self.provisioning.rejected.values().sum(),
            ),
            ("provision_retries", self.provisioning.retries),
            (
                "provision_failures",
                self.provisioning.failed.values().sum(),
            ),
            ("first_reports", self.provisioning.first_reports),
            (
                "rollout_things",
                self.rollout.as_ref().map_or(0, |r| r.things),
            ),
            (
                "rollout_converged",
                self.rollout.as_ref().map_or(0, |r| r.converged),
            ),
            (
                "method_job_things",
                self.method_job.as_ref().map_or(0, |j| j.things),
            ),
            (
                "method_job_succeeded",
                self.method_job.as_ref().map_or(0, |j| j.count("succeeded")),
            ),
            (
                "method_job_failed",
                self.method_job.as_ref().map_or(0, |j| j.count("failed")),
            ),
            (
                "method_job_timed_out",
                self.method_job.as_ref().map_or(0, |j| j.count("timed_out")),
            ),
            ("protocol_errors", self.protocol_errors.values().sum()),
            ("errors", self.errors()),
        ];
        for (name, v) in counters {
            let _ = writeln!(s, "counter,{name},{v},,,,,,");
        }
        // Times of the fleet operations, seconds (empty when not reached or not run).
        let seconds = [
            (
                "rollout_all_applied_s",
                self.rollout.as_ref().and_then(|r| r.all_applied_s),
            ),
            (
                "rollout_all_succeeded_s",
                self.rollout.as_ref().and_then(|r| r.all_succeeded_s),
            ),
            (
                "method_job_duration_s",
                self.method_job.as_ref().and_then(|j| j.duration_s),
            ),
        ];
        for (name, v) in seconds {
            let v = v.map_or(String::new(), |v| format!("{v:.3}"));
            let _ = writeln!(s, "counter,{name},{v},,,,,,");
        }
        for (name, v) in self.resources.counters() {
            let _ = writeln!(s, "resource,{name},{v},,,,,,");
        }
        s
    }
}

/// `v` ms with two decimals, or [`EMPTY`] without samples.
fn ms_or_empty(count: u64, v: f64) -> String {
    if count == 0 {
        EMPTY.to_owned()
    } else {
        format!("{v:.2} ms")
    }
}

/// `v` seconds with one decimal, or [`EMPTY`].
fn secs_or_empty(v: Option<f64>) -> String {
    v.map_or(EMPTY.to_owned(), |s| format!("{s:.1} s"))
}
