//! Paths of everything in the state directory, laid out like MicroK8s's `$SNAP_DATA`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directories created on first start.
    pub fn directories(&self) -> Vec<PathBuf> {
        vec![
            self.certs_dir(),
            self.credentials_dir(),
            self.args_dir(),
            self.root.join("args/traefik"),
            self.backend_dir(),
            self.root.join("var/lock"),
            self.root.join("var/log"),
        ]
    }

    /// `var/cluster-agent/`: the agent's own bookkeeping (not MicroK8s's).
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("var/cluster-agent")
    }
    /// The lost-quorum recovery this node takes part in, until it is finished.
    pub fn recovery_record(&self) -> PathBuf {
        self.agent_dir().join("recovery.json")
    }
    /// The record of the multi-step change in progress, if any.
    pub fn journal(&self) -> PathBuf {
        self.agent_dir().join("journal.json")
    }
    /// The files the change in progress saved before its first write.
    pub fn saved_files(&self) -> PathBuf {
        self.agent_dir().join("saved")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.certs_dir().join(name)
    }
    pub fn ca_crt(&self) -> PathBuf {
        self.cert("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.cert("ca.key")
    }
    pub fn server_crt(&self) -> PathBuf {
        self.cert("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.cert("server.key")
    }
    pub fn serviceaccount_key(&self) -> PathBuf {
        self.cert("serviceaccount.key")
    }

    pub fn credentials_dir(&self) -> PathBuf {
        self.root.join("credentials")
    }
    pub fn credential(&self, name: &str) -> PathBuf {
        self.credentials_dir().join(name)
    }

    pub fn args_dir(&self) -> PathBuf {
        self.root.join("args")
    }
    /// `args/<service>`. Service names come from code or are validated by the caller.
    pub fn args(&self, service: &str) -> PathBuf {
        self.args_dir().join(service)
    }
    pub fn traefik_provider(&self) -> PathBuf {
        self.root.join("args/traefik/provider.yaml")
    }

    pub fn backend_dir(&self) -> PathBuf {
        self.root.join("var/kubernetes/backend")
    }
    pub fn backend(&self, name: &str) -> PathBuf {
        self.backend_dir().join(name)
    }

    /// `var/lock/<name>`: MicroK8s's marker files (`ha-cluster`, `clustered.lock`, …).
    pub fn marker(&self, name: &str) -> PathBuf {
        self.root.join("var/lock").join(name)
    }

    pub fn audit_log(&self) -> PathBuf {
        self.root.join("var/log/cluster-agent-audit.jsonl")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join("cluster-agent.sock")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.run_dir().join("cluster-agent.lock")
    }
    /// `run/held-at-<point>`: a multi-step change waits here while this file exists (crash
    /// tests only, see `Environment::test_holds`).
    pub fn hold_file(&self, point: &str) -> PathBuf {
        self.run_dir().join(format!("held-at-{point}"))
    }
}
