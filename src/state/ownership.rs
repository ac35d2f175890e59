//! Who may read the files the agent writes, as MicroK8s arranges it: everything under
//! `credentials/`, `certs/`, `args/` and the backend directory is mode 0660 with the snap's
//! group (`microk8s`, or `snap_microk8s` under strict confinement), so members of that group
//! can run the snap's commands without root. With no such group on the machine, or with the
//! CIS-hardening marker, files keep the agent's private modes (0600 for secrets) and root's
//! group.
//!
//! Invariant: a shared file has its group and mode from the moment it exists (see
//! [`super::atomic::write_atomic_owned`]); nothing is created narrower and widened later.

use std::path::Path;

use super::layout::Layout;
use super::Environment;

/// The mode of every shared file.
pub const SHARED_MODE: u32 = 0o660;

/// The group of the classic snap, and of the strictly confined one.
pub const CLASSIC_GROUP: &str = "microk8s";
pub const STRICT_GROUP: &str = "snap_microk8s";

/// The marker with which MicroK8s's CIS-hardening keeps every file root's alone.
pub const CIS_HARDENING: &str = "cis-hardening";

/// How files in the shared directories are owned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The group that shares them; `None`: private modes, root's group.
    pub group: Option<u32>,
}

impl Ownership {
    /// Private modes only (no shared group).
    pub fn private() -> Self {
        Ownership { group: None }
    }

    /// Resolves the group as MicroK8s does: `snap_microk8s` when `$SNAP/meta/snapcraft.yaml`
    /// says `confinement: strict`, else `microk8s`; used only if it exists and the
    /// CIS-hardening marker is absent.
    pub fn resolve(layout: &Layout, env: &Environment) -> Self {
        if layout.marker(CIS_HARDENING).exists() {
            return Self::private();
        }
        let name = group_name(env);
        let group = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        Ownership { group }
    }

    /// The mode and group a file written at `path` with the agent's own `mode` gets.
    pub fn for_path(&self, layout: &Layout, path: &Path, mode: u32) -> (u32, Option<u32>) {
        match self.group {
            Some(gid) if is_shared(layout, path) => (SHARED_MODE, Some(gid)),
            _ => (mode, None),
        }
    }
}

/// The snap's group name for this environment.
pub fn group_name(env: &Environment) -> &'static str {
    let strict = env
        .snap
        .as_ref()
        .and_then(|snap| std::fs::read_to_string(snap.join("meta/snapcraft.yaml")).ok())
        .is_some_and(|text| is_strict(&text));
    if strict {
        STRICT_GROUP
    } else {
        CLASSIC_GROUP
    }
}

/// Does a snapcraft.yaml say `confinement: strict`?
fn is_strict(snapcraft_yaml: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Meta {
        confinement: Option<String>,
    }
    serde_yaml::from_str::<Meta>(snapcraft_yaml)
        .ok()
        .and_then(|m| m.confinement)
        .is_some_and(|c| c.trim() == "strict")
}

/// Is `path` in one of the directories MicroK8s shares with its group?
fn is_shared(layout: &Layout, path: &Path) -> bool {
    [
        layout.credentials_dir(),
        layout.certs_dir(),
        layout.args_dir(),
        layout.backend_dir(),
    ]
    .iter()
    .any(|dir| path.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_directories_get_the_group() {
        let layout = Layout::new("/s".into());
        let shared = Ownership { group: Some(997) };
        for path in [
            "/s/credentials/cluster-tokens.txt",
            "/s/certs/ca.key",
            "/s/args/kubelet",
            "/s/args/certs.d/docker.io/hosts.toml",
            "/s/var/kubernetes/backend/cluster.key",
        ] {
            assert_eq!(
                shared.for_path(&layout, Path::new(path), 0o600),
                (0o660, Some(997)),
                "{path}"
            );
        }
        for path in [
            "/s/var/cluster-agent/journal.json",
            "/s/var/lock/ha-cluster",
        ] {
            assert_eq!(
                shared.for_path(&layout, Path::new(path), 0o600),
                (0o600, None),
                "{path}"
            );
        }
        assert_eq!(
            Ownership::private().for_path(&layout, Path::new("/s/certs/ca.key"), 0o600),
            (0o600, None)
        );
    }

    #[test]
    fn strict_confinement_picks_the_strict_group() {
        assert!(is_strict("name: microk8s\nconfinement: strict\n"));
        assert!(!is_strict("name: microk8s\nconfinement: classic\n"));
        assert!(!is_strict("not: [yaml"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("meta")).unwrap();
        std::fs::write(
            dir.path().join("meta/snapcraft.yaml"),
            "confinement: strict\n",
        )
        .unwrap();
        let env = Environment {
            snap: Some(dir.path().to_path_buf()),
            ..Environment::default()
        };
        assert_eq!(group_name(&env), STRICT_GROUP);
        assert_eq!(group_name(&Environment::default()), CLASSIC_GROUP);
    }

    #[test]
    fn cis_hardening_keeps_files_private() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_path_buf());
        std::fs::create_dir_all(layout.marker("x").parent().unwrap()).unwrap();
        std::fs::write(layout.marker(CIS_HARDENING), "").unwrap();
        assert_eq!(
            Ownership::resolve(&layout, &Environment::default()),
            Ownership::private()
        );
    }
}
