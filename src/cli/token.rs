//! `cluster-agent token list [--format pretty|json|yaml]` and
//! `cluster-agent token revoke <id|token>...`: the join tokens an operator can see and take
//! back (ids only; a secret is never printed).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::cluster::tokens::{TokenInfo, TokenKind};
use crate::control::wire::{self, RevokeRequest, RevokeResponse, TokenList};
use crate::state::Environment;

#[derive(Debug, Clone, Args)]
#[command(after_help = super::exit::TOKEN_HELP)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Every token that can still be used: join tokens (single-use, TTL, persistent) and the
    /// certificate-request tokens workers' joins made. Expired ones are pruned.
    List {
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// Revoke tokens by id (`token list`) or by the token itself, with the
    /// certificate-request tokens their joins made. Nothing is revoked unless every one is
    /// known.
    #[command(after_help = super::exit::TOKEN_HELP)]
    Revoke {
        #[arg(required = true, value_name = "ID|TOKEN")]
        tokens: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(alias = "text")]
    Pretty,
    Json,
    Yaml,
}

pub fn run(args: TokenArgs, state_dir: Option<PathBuf>, env: Environment) -> anyhow::Result<()> {
    let client = super::control_client(state_dir, &env);
    match args.command {
        TokenCommand::List { format } => {
            let list: TokenList = super::block_on(client.get(wire::TOKENS))??;
            super::say(&render(&list.tokens, format)?)
        }
        TokenCommand::Revoke { tokens } => {
            let resp: RevokeResponse =
                super::block_on(client.post(wire::TOKENS_REVOKE, &RevokeRequest { tokens }))??;
            let lines: Vec<String> = resp
                .revoked
                .iter()
                .map(|id| format!("Revoked {id}."))
                .collect();
            super::say_lines(&lines)
        }
    }
}

fn when(unix: Option<i64>, none: &str) -> String {
    unix.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| none.to_string())
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::SingleUse => "single-use",
        TokenKind::Ttl => "ttl",
        TokenKind::Persistent => "persistent",
        TokenKind::CertificateRequest => "cert-request",
    }
}

/// The list in `format`.
pub fn render(tokens: &[TokenInfo], format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(tokens)?),
        Format::Yaml => serde_yaml::to_string(tokens)?,
        Format::Pretty => {
            if tokens.is_empty() {
                return Ok("No usable tokens.\n".into());
            }
            let rows: Vec<[String; 7]> = tokens
                .iter()
                .map(|t| {
                    let (role, uses, description) = match t.kind {
                        TokenKind::CertificateRequest => (
                            "-".to_string(),
                            format!("{} left", t.uses),
                            t.derived_from
                                .as_ref()
                                .map(|p| format!("made by the join with {p}"))
                                .unwrap_or_default(),
                        ),
                        _ => (
                            t.scope.map_or("any (unscoped)", |s| s.name()).to_string(),
                            t.uses.to_string(),
                            t.description.clone(),
                        ),
                    };
                    [
                        t.id.clone(),
                        kind_name(t.kind).to_string(),
                        role,
                        when(t.created, "-"),
                        when(t.expires, "never"),
                        uses,
                        description,
                    ]
                })
                .collect();
            let header = [
                "ID",
                "KIND",
                "ROLE",
                "CREATED",
                "EXPIRES",
                "USES",
                "DESCRIPTION",
            ];
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row.iter()) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut out = String::new();
                for (i, cell) in cells.iter().enumerate() {
                    if i + 1 == cells.len() {
                        out.push_str(cell);
                    } else {
                        out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                    }
                }
                format!("{}\n", out.trim_end())
            };
            let mut out = line(header.to_vec());
            for row in &rows {
                out.push_str(&line(row.iter().map(String::as_str).collect()));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tokens::Scope;

    #[test]
    fn pretty_table_and_machine_formats() {
        let tokens = vec![
            TokenInfo {
                id: "0123456789ab".into(),
                kind: TokenKind::Ttl,
                scope: Some(Scope::Worker),
                created: Some(0),
                expires: Some(3600),
                uses: 2,
                description: "rack 4".into(),
                derived_from: None,
            },
            TokenInfo {
                id: "ba9876543210".into(),
                kind: TokenKind::CertificateRequest,
                scope: None,
                created: None,
                expires: None,
                uses: 1,
                description: String::new(),
                derived_from: Some("0123456789ab".into()),
            },
        ];
        let pretty = render(&tokens, Format::Pretty).unwrap();
        let lines: Vec<&str> = pretty.lines().collect();
        assert!(lines[0].starts_with("ID            KIND"), "{pretty}");
        assert!(lines[1].contains("worker") && lines[1].contains("1970-01-01T01:00:00Z"));
        assert!(lines[1].ends_with("rack 4"));
        assert!(lines[2].contains("1 left") && lines[2].contains("never"));
        let json: Vec<TokenInfo> =
            serde_json::from_str(&render(&tokens, Format::Json).unwrap()).unwrap();
        assert_eq!(json, tokens);
        let yaml: Vec<TokenInfo> =
            serde_yaml::from_str(&render(&tokens, Format::Yaml).unwrap()).unwrap();
        assert_eq!(yaml, tokens);
        assert_eq!(render(&[], Format::Pretty).unwrap(), "No usable tokens.\n");
    }
}
