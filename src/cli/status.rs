//! `cluster-agent status`: MicroK8s's high-availability section plus a table of every
//! datastore member with its role, failure domain and whether it answers.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::control::wire::{self, ErrorKind, Failed, StatusReport};
use crate::local::status::Condition;
use crate::state::Environment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(alias = "text")]
    Pretty,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::STATUS_HELP)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

fn addresses(report: &StatusReport, role: &str) -> String {
    let list: Vec<&str> = report
        .members
        .iter()
        .filter(|m| m.role == role)
        .map(|m| m.address.as_str())
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(" ")
    }
}

/// `high-availability: yes` only with more than two voters, as MicroK8s; the same value in
/// every format.
pub fn high_availability(report: &StatusReport) -> bool {
    report.high_availability || report.members.iter().filter(|m| m.role == "voter").count() > 2
}

fn condition_word(condition: Condition) -> &'static str {
    match condition {
        Condition::Healthy => "healthy",
        Condition::Degraded => "degraded",
        Condition::Unavailable => "unavailable",
    }
}

pub fn render(report: &StatusReport, format: Format) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(report).unwrap_or_default()
        ),
        Format::Yaml => {
            let py = |b: bool| if b { "True" } else { "False" };
            let mut out = String::from("high-availability:\n");
            out.push_str(&format!("  enabled: {}\n", py(high_availability(report))));
            if !report.members.is_empty() {
                out.push_str("  nodes:\n");
                for m in &report.members {
                    out.push_str(&format!(
                        "    - address: {}\n      role: {}\n",
                        m.address, m.role
                    ));
                    out.push_str(&format!("      id: {}\n", m.id));
                    match m.failure_domain {
                        Some(d) => out.push_str(&format!("      failure-domain: {d}\n")),
                        None => out.push_str("      failure-domain: null\n"),
                    }
                    out.push_str(&format!("      reachable: {}\n", py(m.reachable)));
                    if let Some(index) = m.log_index {
                        out.push_str(&format!("      log-index: {index}\n"));
                    }
                }
            }
            if let Some(e) = &report.error {
                out.push_str(&format!(
                    "  message: {}\n",
                    serde_json::to_string(e).unwrap_or_default()
                ));
            }
            out.push_str(&format!(
                "datastore:\n  condition: {}\n",
                condition_word(report.condition)
            ));
            if !report.reasons.is_empty() {
                out.push_str("  reasons:\n");
                for r in &report.reasons {
                    out.push_str(&format!(
                        "    - {}\n",
                        serde_json::to_string(r).unwrap_or_default()
                    ));
                }
            }
            if let Some(op) = &report.operation {
                let quoted = |t: &str| serde_json::to_string(t).unwrap_or_default();
                out.push_str(&format!(
                    "operation:\n  name: {}\n  step: {}\n  running-for-seconds: {}\n",
                    op.operation,
                    quoted(&op.step),
                    op.running_for_secs
                ));
            }
            out
        }
        Format::Pretty => {
            let mut out = String::new();
            if let Some(op) = &report.operation {
                out.push_str(&format!(
                    "operation in progress: {} ({}, for {} s)\n",
                    op.operation, op.step, op.running_for_secs
                ));
            }
            if report.not_a_member {
                out.push_str("This node is not a member of its cluster any more: it was removed (remove-node --force) or a leave did not finish.\nRun 'cluster-agent leave' to reset it to a fresh single-node cluster; then it can join again.\n");
            }
            if report.worker {
                out.push_str("This MicroK8s deployment is acting as a node in a cluster.\nPlease use the control plane node.\n");
                return out;
            }
            out.push_str(&format!(
                "high-availability: {}\n",
                if high_availability(report) {
                    "yes"
                } else {
                    "no"
                }
            ));
            out.push_str(&format!(
                "  datastore master nodes: {}\n",
                addresses(report, "voter")
            ));
            out.push_str(&format!(
                "  datastore standby nodes: {}\n",
                addresses(report, "standby")
            ));
            if let Some(e) = &report.error {
                out.push_str(&format!("datastore: unavailable ({e})\n"));
                if report.members.is_empty() {
                    return out;
                }
            }
            match report.condition {
                Condition::Healthy => out.push_str("datastore: healthy\n"),
                other => out.push_str(&format!(
                    "datastore: {}: {}\n",
                    condition_word(other),
                    report.reasons.join("; ")
                )),
            }
            if report.last_known {
                out.push_str("datastore members (no leader answers: the last configuration this node saw, roles as of then):\n");
            } else {
                out.push_str("datastore members:\n");
            }
            let width = report
                .members
                .iter()
                .map(|m| m.address.len())
                .max()
                .unwrap_or(7)
                .max(7);
            out.push_str(&format!(
                "  {:<width$}  {:<20}  {:<7}  {:<6}  {:<10}  {}\n",
                "ADDRESS", "ID", "ROLE", "DOMAIN", "LOG", "REACHABLE"
            ));
            for m in &report.members {
                let role = if m.leader {
                    format!("{}*", m.role)
                } else {
                    m.role.clone()
                };
                out.push_str(&format!(
                    "  {:<width$}  {:<20}  {:<7}  {:<6}  {:<10}  {}\n",
                    m.address,
                    m.id,
                    role,
                    m.failure_domain
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "-".into()),
                    m.log_index
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    if m.reachable { "yes" } else { "NO" }
                ));
            }
            out.push_str("  (* = raft leader)\n");
            out
        }
    }
}

pub fn run(args: StatusArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let client = super::control_client(state_dir, &env);
    let report: StatusReport = super::block_on(client.get(wire::STATUS))??;
    super::say(&render(&report, args.format))?;
    let kind = match report.condition {
        Condition::Healthy => return Ok(()),
        Condition::Degraded => ErrorKind::StatusDegraded,
        Condition::Unavailable => ErrorKind::StatusUnavailable,
    };
    Err(Failed {
        kind,
        message: format!(
            "the datastore is {}: {}",
            condition_word(report.condition),
            report.reasons.join("; ")
        ),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::status::MemberStatus;

    #[test]
    fn text_is_another_name_for_pretty() {
        use clap::Parser;
        for command in ["status", "add-node"] {
            let cli =
                crate::cli::Cli::try_parse_from(["cluster-agent", command, "--format", "text"])
                    .unwrap();
            let format = match cli.command {
                crate::cli::Command::Status(args) => format!("{:?}", args.format),
                crate::cli::Command::AddNode(args) => format!("{:?}", args.format),
                _ => unreachable!(),
            };
            assert_eq!(format, "Pretty");
        }
    }

    fn member(addr: &str, role: &str, reachable: bool) -> MemberStatus {
        MemberStatus {
            log_index: None,
            id: 1,
            address: addr.into(),
            role: role.into(),
            failure_domain: reachable.then_some(1),
            reachable,
            leader: false,
        }
    }

    fn report(members: Vec<MemberStatus>) -> StatusReport {
        StatusReport {
            ha_cluster: true,
            high_availability: false,
            condition: Condition::Healthy,
            reasons: Vec::new(),
            last_known: false,
            worker: false,
            members,
            error: None,
            operation: None,
            not_a_member: false,
        }
    }

    #[test]
    fn microk8s_ha_section() {
        let r = report(vec![
            member("10.0.0.1:19001", "voter", true),
            member("10.0.0.2:19001", "voter", true),
            member("10.0.0.3:19001", "voter", false),
            member("10.0.0.4:19001", "spare", true),
        ]);
        let out = render(&r, Format::Pretty);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "high-availability: yes");
        assert_eq!(
            lines[1],
            "  datastore master nodes: 10.0.0.1:19001 10.0.0.2:19001 10.0.0.3:19001"
        );
        assert_eq!(lines[2], "  datastore standby nodes: none");
        assert!(out
            .lines()
            .any(|l| l.contains("10.0.0.3:19001") && l.ends_with("NO")));
        let two = report(vec![
            member("a:1", "voter", true),
            member("b:1", "voter", true),
        ]);
        assert!(render(&two, Format::Pretty).starts_with("high-availability: no\n"));
    }

    #[test]
    fn a_member_far_behind_the_leaders_log_is_degraded() {
        let at = |addr: &str, role: &str, index: u64, leader: bool| MemberStatus {
            log_index: Some(index),
            leader,
            ..member(addr, role, true)
        };
        let r = report(vec![
            at("10.0.0.1:19001", "voter", 10_000, true),
            at("10.0.0.2:19001", "voter", 9_990, false),
            at("10.0.0.3:19001", "voter", 9_999, false),
            at("10.0.0.4:19001", "standby", 100, false),
            at("10.0.0.5:19001", "spare", 1, false),
        ]);
        let (condition, reasons) = crate::local::status::assess(&r);
        assert_eq!(condition, Condition::Degraded);
        assert_eq!(
            reasons,
            ["10.0.0.4:19001 (standby) is 9900 log entries behind the leader"]
        );
        let out = render(&r, Format::Pretty);
        assert!(
            out.lines()
                .any(|l| l.contains("10.0.0.4:19001") && l.contains(" 100 ")),
            "{out}"
        );
        let y: serde_yaml::Value = serde_yaml::from_str(&render(&r, Format::Yaml)).unwrap();
        assert_eq!(
            y["high-availability"]["nodes"][3]["log-index"].as_u64(),
            Some(100)
        );
    }

    #[test]
    fn yaml_and_json_parse() {
        let r = report(vec![member("10.0.0.1:19001", "voter", true)]);
        let y: serde_yaml::Value = serde_yaml::from_str(&render(&r, Format::Yaml)).unwrap();
        assert_eq!(
            y["high-availability"]["nodes"][0]["role"].as_str(),
            Some("voter")
        );
        let j: StatusReport = serde_json::from_str(&render(&r, Format::Json)).unwrap();
        assert_eq!(j, r);
    }
}
