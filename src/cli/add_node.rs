//! `cluster-agent add-node`: asks the local daemon for a join token and prints how to join,
//! in MicroK8s's shapes.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::cluster::tokens::Scope;
use crate::control::wire::{self, AddNodeRequest, AddNodeResponse};
use crate::local::add_node::AddNodeError;
use crate::local::error::Failed;
use crate::state::{resolve_state_dir, Environment, StateDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(alias = "text")]
    Pretty,
    Short,
    Token,
    TokenCheck,
    Json,
    Yaml,
}

/// `--role`: which nodes a token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Worker,
    ControlPlane,
}

impl From<Role> for Scope {
    fn from(role: Role) -> Scope {
        match role {
            Role::Worker => Scope::Worker,
            Role::ControlPlane => Scope::ControlPlane,
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::ADD_NODE_HELP)]
pub struct AddNodeArgs {
    /// Use this token (at least 32 characters) instead of a generated one.
    #[arg(long, short = 't')]
    pub token: Option<String>,
    /// Seconds the token stays valid and reusable; -1 (default) = single use, no expiry.
    #[arg(long, short = 'l', default_value_t = -1, allow_negative_numbers = true)]
    pub token_ttl: i64,
    /// A token that never expires and is never consumed (joins any number of nodes until
    /// `token revoke`).
    #[arg(long, conflicts_with = "token_ttl")]
    pub persistent: bool,
    /// Admit only this kind of node (default: either).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Free text shown by `token list` (one line, at most 200 characters).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

/// Renders the answer exactly as MicroK8s's `add-node` does (`join_cmd` is `microk8s join`
/// inside the snap, `cluster-agent join` elsewhere).
pub fn render(resp: &AddNodeResponse, format: Format, join_cmd: &str) -> String {
    let url = |ip: &str| {
        let host = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => ip.to_string(),
        };
        format!("{host}:{}/{}/{}", resp.port, resp.token, resp.check)
    };
    let default = resp
        .default_ip
        .clone()
        .or_else(|| resp.addresses.first().cloned())
        .unwrap_or_else(|| "none".into());
    let urls: Vec<String> = resp.addresses.iter().map(|ip| url(ip)).collect();
    match format {
        Format::Token => format!("{}\n", resp.token),
        Format::TokenCheck => format!("{}/{}\n", resp.token, resp.check),
        Format::Short => {
            let mut out = format!("{join_cmd} {}\n", url(&default));
            for ip in resp.addresses.iter().filter(|ip| **ip != default) {
                out.push_str(&format!("{join_cmd} {}\n", url(ip)));
            }
            out
        }
        Format::Pretty => {
            let mut out = String::from(
                "From the node you wish to join to this cluster, run the following:\n",
            );
            out.push_str(&format!("{join_cmd} {}\n\n", url(&default)));
            if resp.ha {
                out.push_str("Use the '--worker' flag to join a node as a worker not running the control plane, eg:\n");
                out.push_str(&format!("{join_cmd} {} --worker\n\n", url(&default)));
            }
            out.push_str("If the node you are adding is not reachable through the default interface you can use one of the following:\n");
            for u in &urls {
                out.push_str(&format!("{join_cmd} {u}\n"));
            }
            out.push_str("\nOr use the self-contained token, which tries every address above and pins the cluster CA:\n");
            out.push_str(&format!("{join_cmd} {}\n", resp.token_string));
            out
        }
        Format::Json => {
            let v = serde_json::json!({
                "token": format!("{}/{}", resp.token, resp.check),
                "urls": urls,
                "token_string": resp.token_string,
            });
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        Format::Yaml => {
            // PyYAML's dump: keys sorted, list items not indented; print adds a blank line.
            let mut out = format!(
                "token: {}\n",
                yaml_scalar(&format!("{}/{}", resp.token, resp.check))
            );
            out.push_str(&format!(
                "token_string: {}\n",
                yaml_scalar(&resp.token_string)
            ));
            out.push_str("urls:\n");
            for u in &urls {
                out.push_str(&format!("- {}\n", yaml_scalar(u)));
            }
            out.push('\n');
            out
        }
    }
}

/// A plain YAML scalar, single-quoted when YAML would read it as something else (an IPv6
/// URL starts with `[`), as PyYAML does.
fn yaml_scalar(s: &str) -> String {
    let special = s.starts_with(['[', '{', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`'])
        || s.contains(": ")
        || s.contains(" #");
    if special {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        s.to_string()
    }
}

pub fn run(args: AddNodeArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    if let Some(t) = &args.token {
        crate::cluster::tokens::check_new_token(t)
            .map_err(|e| Failed::from_refusal(&AddNodeError::from(e)))?;
    }
    if let Some(d) = &args.description {
        crate::cluster::tokens::check_description(d)
            .map_err(|e| Failed::from_refusal(&AddNodeError::from(e)))?;
    }
    let state = StateDir::for_node(resolve_state_dir(state_dir.as_deref(), &env), &env);
    if state.has_marker("clustered.lock") {
        return Err(Failed::from_refusal(&AddNodeError::OnWorker).into());
    }
    let client = crate::control::client::LocalClient::new(&state.layout().control_socket());
    let req = AddNodeRequest {
        token: args.token,
        ttl: (args.token_ttl != -1).then_some(args.token_ttl),
        persistent: args.persistent,
        role: args.role.map(Scope::from),
        description: args.description,
    };
    let resp: AddNodeResponse = super::block_on(client.post(wire::ADD_NODE, &req))??;
    let join_cmd = if env.in_snap() {
        "microk8s join"
    } else {
        "cluster-agent join"
    };
    super::say(&render(&resp, args.format, join_cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(addresses: &[&str]) -> AddNodeResponse {
        AddNodeResponse {
            token: "t".into(),
            check: "c".into(),
            port: 32,
            default_ip: addresses.first().map(|s| s.to_string()),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            token_string: "ca1.x".into(),
            ha: true,
        }
    }

    #[test]
    fn short_matches_microk8s_unit_tests() {
        assert_eq!(
            render(&resp(&["10.23.53.54"]), Format::Short, "microk8s join"),
            "microk8s join 10.23.53.54:32/t/c\n"
        );
        let mut r = resp(&["d_ip", "ip1", "ip2"]);
        r.port = 4;
        assert_eq!(
            render(&r, Format::Short, "microk8s join"),
            "microk8s join d_ip:4/t/c\nmicrok8s join ip1:4/t/c\nmicrok8s join ip2:4/t/c\n"
        );
    }

    #[test]
    fn token_formats() {
        let r = resp(&["10.0.0.1"]);
        assert_eq!(render(&r, Format::Token, "x"), "t\n");
        assert_eq!(render(&r, Format::TokenCheck, "x"), "t/c\n");
    }

    #[test]
    fn pretty_shape_and_ipv6_brackets() {
        let r = resp(&["10.0.0.1", "fd00::1"]);
        let out = render(&r, Format::Pretty, "microk8s join");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "From the node you wish to join to this cluster, run the following:"
        );
        assert_eq!(lines[1], "microk8s join 10.0.0.1:32/t/c");
        assert_eq!(lines[2], "");
        assert_eq!(lines[4], "microk8s join 10.0.0.1:32/t/c --worker");
        assert_eq!(lines[7], "microk8s join 10.0.0.1:32/t/c");
        assert_eq!(lines[8], "microk8s join [fd00::1]:32/t/c");
    }

    #[test]
    fn json_and_yaml_parse_back() {
        let r = resp(&["10.0.0.1", "fd00::1"]);
        let v: serde_json::Value = serde_json::from_str(&render(&r, Format::Json, "x")).unwrap();
        assert_eq!(v["token"], "t/c");
        assert_eq!(v["urls"][1], "[fd00::1]:32/t/c");
        let y: serde_yaml::Value = serde_yaml::from_str(&render(&r, Format::Yaml, "x")).unwrap();
        assert_eq!(y["token"].as_str(), Some("t/c"));
        assert_eq!(y["urls"][0].as_str(), Some("10.0.0.1:32/t/c"));
    }
}
