//! Node labels and taints a joining node registers with (`--node-labels k=v,…`,
//! `--register-with-taints k=v:Effect,…`), checked with Kubernetes's syntax rules before
//! anything changes, and merged into a kubelet argument value.
//!
//! The kubelet refuses to start with labels in the `kubernetes.io` and `k8s.io` namespaces
//! other than the few it sets itself, so those are refused here (a node that joins and
//! whose kubelet then never starts is worse than a clear error).

/// Labels in the reserved namespaces the kubelet accepts from `--node-labels`.
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Prefixes under which the kubelet accepts any label.
const KUBELET_PREFIXES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

pub const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A qualified name's name part: at most 63 characters, alphanumerics at both ends, `-`,
/// `_` and `.` between.
fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lower-case labels of alphanumerics and `-`, at most 253 in all.
fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !label.is_empty()
                && label.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A label or taint key: `[prefix/]name`.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_subdomain(prefix) {
            return Err(format!(
                "{key:?}: the prefix must be a DNS subdomain (lower-case, like example.com)"
            ));
        }
    }
    if !is_name(name) {
        return Err(format!(
            "{key:?}: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{key:?}: the value {value:?} must be empty or 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn reserved(prefix: &str) -> bool {
    ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")))
}

/// `key=value`, as `--node-labels` takes it.
pub fn check_label(label: &str) -> Result<(), String> {
    let Some((key, value)) = label.split_once('=') else {
        return Err(format!("{label:?} is not key=value"));
    };
    check_key(key)?;
    check_value(key, value)?;
    if let Some((prefix, _)) = key.split_once('/') {
        let allowed = KUBELET_LABELS.contains(&key)
            || KUBELET_PREFIXES
                .iter()
                .any(|p| prefix == *p || prefix.ends_with(&format!(".{p}")));
        if reserved(prefix) && !allowed {
            return Err(format!(
                "{key:?}: the kubelet does not set labels in {prefix} (set them with kubectl once the node is in; node.kubernetes.io/ and kubelet.kubernetes.io/ are allowed)"
            ));
        }
    }
    Ok(())
}

/// `key[=value]:Effect`, as `--register-with-taints` takes it.
pub fn check_taint(taint: &str) -> Result<(), String> {
    let Some((left, effect)) = taint.rsplit_once(':') else {
        return Err(format!(
            "{taint:?} is not key[=value]:Effect (Effect: {})",
            EFFECTS.join(", ")
        ));
    };
    if !EFFECTS.contains(&effect) {
        return Err(format!(
            "{taint:?}: the effect must be one of {}",
            EFFECTS.join(", ")
        ));
    }
    let (key, value) = left.split_once('=').unwrap_or((left, ""));
    check_key(key)?;
    check_value(key, value)
}

/// Checks every label and taint; the first problem found.
pub fn check(labels: &[String], taints: &[String]) -> Result<(), String> {
    for label in labels {
        check_label(label)?;
    }
    for taint in taints {
        check_taint(taint)?;
    }
    Ok(())
}

/// `current` (a comma-separated list, one level of quotes removed) with `added` merged in:
/// an added entry replaces one with the same identity, others are appended in order.
pub fn merge(current: &str, added: &[String], identity: fn(&str) -> &str) -> String {
    let mut out: Vec<String> = current
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter(|s| !added.iter().any(|a| identity(a) == identity(s)))
        .map(str::to_string)
        .collect();
    out.extend(added.iter().cloned());
    out.join(",")
}

/// A label's identity: its key.
pub fn label_key(label: &str) -> &str {
    label.split_once('=').map_or(label, |(k, _)| k)
}

/// A taint's identity: key and effect (`key=value:Effect` without the value).
pub fn taint_identity(taint: &str) -> &str {
    // Kubernetes identifies a taint by key and effect; the key alone is close enough for
    // replacing what a node registers with (one effect per key is the common case).
    taint.split_once(['=', ':']).map_or(taint, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in [
            "zone=a",
            "example.com/rack=r4",
            "empty=",
            "node.kubernetes.io/pool=gpu",
            "topology.kubernetes.io/zone=eu-1a",
            "a.b_c-d=x.y",
        ] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("zone", "key=value"),
            ("=v", "name"),
            ("-x=v", "name"),
            ("Example.com/x=v", "prefix"),
            ("x=bad value", "value"),
            ("x=-v", "value"),
            (&format!("x={}", "v".repeat(64)), "value"),
            ("node-role.kubernetes.io/worker=", "does not set labels"),
            ("kubernetes.io/role=x", "does not set labels"),
            ("x=a,b", "value"),
        ] {
            let e = check_label(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn taints() {
        for ok in [
            "dedicated=gpu:NoSchedule",
            "spot:PreferNoSchedule",
            "example.com/x=:NoExecute",
        ] {
            assert!(check_taint(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("dedicated=gpu", "Effect"),
            ("dedicated=gpu:Sometimes", "effect must be"),
            ("bad key:NoSchedule", "name"),
            ("k=v v:NoSchedule", "value"),
        ] {
            let e = check_taint(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn merging_replaces_by_identity_and_appends() {
        let current = "microk8s.io/cluster=true,zone=a";
        assert_eq!(
            merge(current, &["zone=b".into(), "rack=4".into()], label_key),
            "microk8s.io/cluster=true,zone=b,rack=4"
        );
        assert_eq!(merge("", &["a=1".into()], label_key), "a=1");
        assert_eq!(
            merge(
                "gpu=yes:NoSchedule",
                &["gpu=no:NoSchedule".into()],
                taint_identity
            ),
            "gpu=no:NoSchedule"
        );
    }
}
