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
        line("connect errors", format!("{:?}", self.connect_errors));
        line("protocol errors", format!("{:?}", self.protocol_errors));
        line("ignored", format!("{:?}", self.ignored));
        for (name, value) in self.resources.lines() {
            line(name, value);
        }
        let _ = writeln!(
            s,
            "{:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "interaction (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in self.rows() {
            let _ = write!(s, "{:<22}{:>9}", name, p.count);
            for v in [p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms] {
                if p.count == 0 {
                    let _ = write!(s, "{EMPTY:>9}");
                } else {
                    let _ = write!(s, "{v:>9.2}");
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

    /// The scenario in one line: things, duration, rates.
    pub fn scenario_line(&self) -> String {
        let sc = &self.scenario;
        format!(
            "{} things ({}), {:.0} s measured, {} updates/s per thing of {} B, ramp {}/s, \
             desired {}/s, methods {}/s, churn {}/s, mqtt5 {:.0}%, seed {}",
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
            ("protocol_errors", self.protocol_errors.values().sum()),
            ("errors", self.errors()),
        ];
        for (name, v) in counters {
            let _ = writeln!(s, "counter,{name},{v},,,,,,");
        }
        for (name, v) in self.resources.counters() {
            let _ = writeln!(s, "resource,{name},{v},,,,,,");
        }
        s
    }
}
