//! Callbacks between nodes, authenticated with this node's callback token (or the Cluster API
//! token): `v1.0/configure`, `v1.0/upgrade`, `v2.0/image/import`, `v2.0/dqlite/remove`.
//!
//! Fixes over MicroK8s: service, addon and upgrade names are checked before they become path
//! components (MicroK8s lets `../x` escape `args/`); an empty or whitespace CAPI token never
//! authenticates and the 401 text does not echo the presented token.

use std::path::PathBuf;

use super::GrantError;
use crate::cluster::node::Node;
use crate::format::wire::{ConfigureRequest, DqliteRemoveRequest, ResultOk, UpgradeRequest};
use crate::state::StateError;
use crate::sys::blocking::{blocking, TaskFailed};
use crate::sys::runner::{Input, ServiceError};

/// A name that becomes a file name or an argv element: letters, digits, `.`, `_`, `-`, not
/// starting with a dot.
pub fn check_name(kind: &str, name: &str) -> Result<(), GrantError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(GrantError::BadRequest(format!(
            "Invalid {kind} name {name:?}"
        )))
    }
}

/// An addon as `microk8s enable` names it: `name` or `repository/name`, each part a
/// [`check_name`] name.
pub fn check_addon_name(name: &str) -> Result<(), GrantError> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| check_name("addon", p).is_err()) {
        return Err(GrantError::BadRequest(format!(
            "Invalid addon name {name:?}"
        )));
    }
    Ok(())
}

/// A flag and value for an args file: one line each, so no control characters (a newline
/// would inject another flag into a file the snap's wrappers evaluate), and a flag that
/// looks like one.
pub fn check_argument(service: &str, flag: &str, value: Option<&str>) -> Result<(), GrantError> {
    let flag_ok = flag
        .trim_start_matches('-')
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && flag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let value_ok = !value.is_some_and(|v| v.chars().any(char::is_control));
    if flag_ok && value_ok {
        Ok(())
    } else {
        Err(GrantError::BadRequest(format!(
            "Invalid argument {flag:?} for service \"{service}\": flags are letters, digits, '-', '_' or '.', and values hold no control characters"
        )))
    }
}

fn check_callback(node: &Node, token: &str) -> Result<(), GrantError> {
    if node.tokens().check_callback_token(token)? {
        Ok(())
    } else {
        Err(GrantError::InvalidToken)
    }
}

pub async fn configure(node: &Node, req: ConfigureRequest) -> Result<ResultOk, GrantError> {
    let node = node.clone();
    blocking(move || -> Result<_, GrantError> {
        check_callback(&node, &req.callback)?;
        // Validate everything before changing anything.
        for s in &req.service {
            check_name("service", &s.name)?;
            for (flag, value) in s.arguments_update.iter().flat_map(|m| m.iter()) {
                check_argument(&s.name, flag, Some(value))?;
            }
            for flag in &s.arguments_remove {
                check_argument(&s.name, flag, None)?;
            }
        }
        for a in &req.addon {
            check_addon_name(&a.name)?;
        }
        for s in &req.service {
            let updates: Vec<(String, String)> = s
                .arguments_update
                .iter()
                .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
                .collect();
            node.state()
                .update_args(&s.name, |f| f.update(&updates, &s.arguments_remove))
                .map_err(|e| {
                    GrantError::Refused(format!(
                        "Failed to update arguments of service \"{}\": {e}",
                        s.name
                    ))
                })?;
            if s.restarts() {
                node.services().restart(&s.name).map_err(|e| {
                    GrantError::Refused(format!("Failed to restart service \"{}\": {e}", s.name))
                })?;
            }
        }
        for a in &req.addon {
            let verb = if a.enable {
                "enable"
            } else if a.disable {
                "disable"
            } else {
                continue;
            };
            let wrapper = snap_path(&node, &format!("microk8s-{verb}.wrapper")).map_err(|e| {
                GrantError::Refused(format!("Failed to {verb} addon \"{}\": {e}", a.name))
            })?;
            run(&node, &[wrapper.display().to_string(), a.name.clone()]).map_err(|e| {
                GrantError::Refused(format!("Failed to {verb} addon \"{}\": {e}", a.name))
            })?;
        }
        Ok(ResultOk::ok())
    })
    .await
}

pub async fn upgrade(node: &Node, req: UpgradeRequest) -> Result<ResultOk, GrantError> {
    let node = node.clone();
    blocking(move || -> Result<_, GrantError> {
        check_callback(&node, &req.callback)?;
        let fail = |inner: String| {
            GrantError::Refused(format!(
                "Failed to run upgrade \"{}\" phase \"{}\": {inner}",
                req.upgrade, req.phase
            ))
        };
        if !matches!(req.phase.as_str(), "prepare" | "commit" | "rollback") {
            return Err(fail(format!("unknown upgrade phase \"{}\"", req.phase)));
        }
        check_name("upgrade", &req.upgrade).map_err(|e| fail(e.to_string()))?;
        let script = snap_path(
            &node,
            &format!("upgrade-scripts/{}/{}-node.sh", req.upgrade, req.phase),
        )
        .map_err(fail)?;
        if !crate::state::is_file(&script) {
            return Err(fail(format!("could not find script {}", script.display())));
        }
        run(&node, &[script.display().to_string()])
            .map_err(|e| fail(format!("failed to execute {}: \"{e}\"", script.display())))?;
        Ok(ResultOk::ok())
    })
    .await
}

/// Authorises an image import before its body is read (the token file is read off the
/// runtime).
pub async fn check_image_import_token(node: &Node, token: Option<&str>) -> Result<(), GrantError> {
    let (node, token) = (node.clone(), token.map(str::to_string));
    blocking(move || match token {
        Some(t) if node.tokens().check_callback_token(&t)? => Ok(()),
        _ => Err(GrantError::Unauthorized("Invalid token".into())),
    })
    .await
}

/// The `ctr` invocation that imports an image tarball from stdin.
pub fn ctr_import_argv(node: &Node) -> Result<Vec<String>, GrantError> {
    let ctr = snap_path(node, "bin/ctr")
        .map_err(|e| GrantError::Refused(format!("Failed to import the image: {e}")))?;
    let common = node
        .settings()
        .env
        .snap_common
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/snap/microk8s/common"));
    Ok(vec![
        ctr.display().to_string(),
        "--namespace".into(),
        "k8s.io".into(),
        "--address".into(),
        common.join("run/containerd.sock").display().to_string(),
        "image".into(),
        "import".into(),
        "--platform".into(),
        go_arch().into(),
        "-".into(),
    ])
}

/// Streams an image tarball (`input`, the request body) into `ctr image import`. The
/// caller has checked the token with [`check_image_import_token`] before reading the body.
pub async fn import_image(node: &Node, input: Input) -> Result<(), GrantError> {
    let argv = ctr_import_argv(node)?;
    node.runner().run_piped(argv, input).await.map_err(|e| {
        GrantError::Refused(match e {
            ServiceError::Command { reason, .. } => {
                format!("Failed to import the image: microk8s.ctr command failed: {reason}")
            }
            ServiceError::Input { reason, .. } => {
                format!("Failed to import the image: reading the request body: {reason}")
            }
        })
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `v2.0/dqlite/remove` with the Cluster API token from the `capi-auth-token` header.
pub async fn dqlite_remove(
    node: &Node,
    token: Option<&str>,
    req: DqliteRemoveRequest,
) -> Result<(), GrantError> {
    let path = node.settings().capi_token_file.clone();
    let file = path.clone();
    let read = blocking(move || Ok::<_, TaskFailed>(crate::state::read_string(&file))).await;
    let expected = read
        .map_err(|task| task.to_string())
        .and_then(|text| {
            text.map_err(|e| match e {
                StateError::Read { source, .. } => source.to_string(),
                other => other.to_string(),
            })
        })
        .map_err(|reason| {
            GrantError::Refused(format!(
                "Failed to remove from dqlite: failed to validate CAPI auth token: failed to read token file: failed to read {}: {reason}",
                path.display()
            ))
        })?;
    let expected = expected.trim();
    let presented = token.unwrap_or("").trim();
    if expected.is_empty()
        || presented.is_empty()
        || !crate::util::secret::secret_eq(expected, presented)
    {
        return Err(GrantError::Unauthorized(
            "Failed to remove from dqlite: invalid CAPI auth token".into(),
        ));
    }
    node.datastore()
        .remove_by_address(&req.remove_endpoint)
        .await
        .map_err(|e| {
            GrantError::Refused(format!(
                "Failed to remove from dqlite: failed to remove node from dqlite: {e}"
            ))
        })
}

fn snap_path(node: &Node, rel: &str) -> Result<PathBuf, String> {
    node.snap_dir()
        .map(|s| s.join(rel))
        .ok_or_else(|| format!("{rel} needs the MicroK8s snap ($SNAP is not set)"))
}

fn run(node: &Node, argv: &[String]) -> Result<(), String> {
    node.runner().run(argv).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        for bad in ["", "../x", "a/b", ".hidden", "x y", "a\nb"] {
            assert!(check_name("service", bad).is_err(), "{bad:?}");
        }
        for good in [
            "kube-apiserver",
            "k8s-dqlite",
            "cni-env",
            "001-custom-upgrade",
            "dns",
        ] {
            assert!(check_name("service", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn addons_may_name_their_repository() {
        for good in ["dns", "core/dns", "community/linkerd"] {
            assert!(check_addon_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/dns", "core/", "a/b/c", "../dns", "core/../x", "x y"] {
            assert!(check_addon_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arguments_stay_on_one_line() {
        for (flag, value) in [
            ("--v", Some("4")),
            (
                "--kubelet-preferred-address-types",
                Some("InternalIP,Hostname"),
            ),
            ("--node-labels", Some("a=b,c=d")),
            (
                "--token-auth-file",
                Some("${SNAP_DATA}/credentials/known_tokens.csv"),
            ),
            ("--cluster-cidr", None),
        ] {
            assert!(check_argument("kubelet", flag, value).is_ok(), "{flag}");
        }
        for (flag, value) in [
            ("--v", Some("4\n--authorization-mode=AlwaysAllow")),
            ("--v", Some("4\r")),
            ("--a\nb", None),
            ("", None),
            ("--", Some("x")),
            ("--x=y", None),
            ("--x y", None),
        ] {
            assert!(
                check_argument("kubelet", flag, value).is_err(),
                "{flag:?} {value:?}"
            );
        }
    }
}
