//! Applying a launch configuration to this node (`cluster-agent init`, the daemon's
//! launcher watcher): the Go agent's order, part by part: addon repositories and addons,
//! the persistent token, extra config files, the argument and environment files, the SANs,
//! the registry configurations, the join; then each service whose files changed is restarted
//! once. `--pre-init` (the snap's install hook) writes the files only.
//!
//! Invariants:
//! - The whole file is parsed and validated before anything happens ([`launch::parse`]), and
//!   the part-by-part plan is computed in memory against the files as they are, so a refusal
//!   leaves the state directory byte for byte as it was.
//! - A file is written only when its content changes; applying the same configuration again
//!   writes nothing and restarts nothing.
//! - `cluster-agent` itself is never restarted here: the caller gets `restart_self` and does
//!   it last (the watcher renames the file first, since the restart ends its own process).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::format::args::ArgsFile;
use crate::format::csr_conf;
use crate::format::launch::{self, JoinSection, LaunchConfig, LaunchError, Part};
use crate::state::{mode, Environment, StateDir, StateError};

/// The agent's own service name (restarting it ends the process that applies).
pub const SELF_SERVICE: &str = "cluster-agent";

/// What applying does besides writing files; the CLI and the daemon each provide it.
pub trait LaunchEffects {
    /// Runs one of the snap's commands (addons, addon repositories).
    fn run(&self, argv: &[String]) -> Result<(), String>;
    /// Restarts a service (MicroK8s's name: `kubelite`, `containerd`, …).
    fn restart(&self, service: &str) -> Result<(), String>;
    /// Joins the cluster of a `join` section; returns the join's messages.
    fn join(&self, join: &JoinSection) -> Result<Vec<String>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(#[from] LaunchError),
    #[error("part {part}, {field}: needs the MicroK8s snap ($SNAP is not set), or apply with --pre-init")]
    NeedsSnap { part: usize, field: &'static str },
    #[error("part {part}: {source}")]
    State {
        part: usize,
        #[source]
        source: StateError,
    },
    #[error("part {part}: {what} failed: {reason}")]
    Command {
        part: usize,
        what: String,
        reason: String,
    },
    #[error("part {part}: the join failed: {reason}")]
    Join { part: usize, reason: String },
    #[error("restarting {service} failed: {reason}")]
    Restart { service: String, reason: String },
}

/// What an apply did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Files written, relative to the state directory, in the order written.
    pub written: Vec<String>,
    /// Commands run (addons), as shown to the operator.
    pub commands: Vec<String>,
    /// Services restarted, in order.
    pub restarted: Vec<String>,
    /// Messages of the join, if there was one.
    pub join_messages: Vec<String>,
    /// `cluster-agent` must be restarted for its changed files to take effect.
    pub restart_self: bool,
}

/// One step of a part, decided before anything happens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Run {
        what: String,
        argv: Vec<String>,
    },
    Write {
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
    Join(JoinSection),
}

/// The steps of every part and the services to restart.
#[derive(Debug, Default)]
struct Plan {
    parts: Vec<(usize, Vec<Step>)>,
    restarts: Vec<String>,
}

/// Parses, validates, plans and applies `text`.
pub fn apply_text(
    state: &StateDir,
    env: &Environment,
    text: &str,
    pre_init: bool,
    effects: &dyn LaunchEffects,
) -> Result<Applied, ApplyError> {
    let config = launch::parse(text)?;
    apply(state, env, &config, pre_init, effects)
}

/// Applies a validated configuration.
pub fn apply(
    state: &StateDir,
    env: &Environment,
    config: &LaunchConfig,
    pre_init: bool,
    effects: &dyn LaunchEffects,
) -> Result<Applied, ApplyError> {
    let plan = plan(state, env, config, pre_init)?;
    let mut applied = Applied::default();
    for (part, steps) in plan.parts {
        for step in steps {
            match step {
                Step::Run { what, argv } => {
                    tracing::info!(part, command = %what, "launch configuration");
                    effects.run(&argv).map_err(|reason| ApplyError::Command {
                        part,
                        what: what.clone(),
                        reason,
                    })?;
                    applied.commands.push(what);
                }
                Step::Write { path, data, mode } => {
                    state
                        .write(&path, &data, mode)
                        .map_err(|source| ApplyError::State { part, source })?;
                    let rel = path
                        .strip_prefix(state.root())
                        .unwrap_or(&path)
                        .display()
                        .to_string();
                    tracing::info!(part, file = %rel, "launch configuration wrote");
                    applied.written.push(rel);
                }
                Step::Join(join) => {
                    let messages = effects
                        .join(&join)
                        .map_err(|reason| ApplyError::Join { part, reason })?;
                    applied.join_messages.extend(messages);
                }
            }
        }
    }
    for service in plan.restarts {
        if service == SELF_SERVICE {
            applied.restart_self = true;
            continue;
        }
        effects
            .restart(&service)
            .map_err(|reason| ApplyError::Restart {
                service: service.clone(),
                reason,
            })?;
        applied.restarted.push(service);
    }
    Ok(applied)
}

/// The files as the plan has them so far: what each part reads is what the parts before it
/// left.
struct Overlay {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl Overlay {
    fn read(&mut self, path: &PathBuf) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(bytes) = self.files.get(path) {
            return Ok(Some(bytes.clone()));
        }
        crate::state::read_bytes_optional(path)
    }

    /// Records `data` for `path`; a step only if it differs from what is there.
    fn write(
        &mut self,
        path: PathBuf,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<Option<Step>, StateError> {
        let current = self.read(&path)?;
        if current.as_deref() == Some(data.as_slice()) {
            return Ok(None);
        }
        self.files.insert(path.clone(), data.clone());
        Ok(Some(Step::Write { path, data, mode }))
    }
}

fn plan(
    state: &StateDir,
    env: &Environment,
    config: &LaunchConfig,
    pre_init: bool,
) -> Result<Plan, ApplyError> {
    let layout = state.layout();
    let mut overlay = Overlay {
        files: BTreeMap::new(),
    };
    let mut plan = Plan::default();
    // Which args files a restart depends on, with their content before the apply.
    let mut touched: Vec<(&'static launch::ArgsTarget, PathBuf, Option<Vec<u8>>)> = Vec::new();
    for part in &config.parts {
        let n = part.number;
        let at = |source: StateError| ApplyError::State { part: n, source };
        let mut steps = Vec::new();
        if !pre_init {
            steps.extend(addon_steps(env, part)?);
        }
        if let Some(token) = &part.persistent_cluster_token {
            let path = layout.credential(crate::cluster::tokens::PERSISTENT_TOKENS);
            let text = overlay.read(&path).map_err(at)?.unwrap_or_default();
            let text = String::from_utf8_lossy(&text).into_owned();
            if !text.lines().any(|line| line.trim() == token) {
                let mut text = text;
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(token);
                text.push('\n');
                steps.extend(
                    overlay
                        .write(path, text.into_bytes(), mode::SECRET)
                        .map_err(at)?,
                );
            }
        }
        for (name, content) in &part.extra_config_files {
            steps.extend(
                overlay
                    .write(layout.args(name), content.clone().into_bytes(), mode::ARGS)
                    .map_err(at)?,
            );
        }
        for (target, changes) in &part.args {
            let path = layout.args(target.file);
            let before = overlay.read(&path).map_err(at)?;
            if !touched.iter().any(|(_, p, _)| *p == path) {
                let original = crate::state::read_bytes_optional(&path).map_err(at)?;
                touched.push((target, path.clone(), original));
            }
            let mut file = ArgsFile::parse(&String::from_utf8_lossy(
                before.as_deref().unwrap_or_default(),
            ));
            for (key, value) in changes {
                match value {
                    Some(value) => file.set(key, value),
                    None => file.remove(key),
                };
            }
            steps.extend(
                overlay
                    .write(path, file.render().into_bytes(), mode::ARGS)
                    .map_err(at)?,
            );
        }
        if let Some(sans) = &part.extra_sans {
            steps.extend(
                overlay
                    .write(
                        layout.cert("csr.conf.template"),
                        csr_conf::render(sans).into_bytes(),
                        mode::ARGS,
                    )
                    .map_err(at)?,
            );
        }
        for (registry, hosts_toml) in &part.containerd_registry_configs {
            let path = layout
                .args_dir()
                .join("certs.d")
                .join(registry)
                .join("hosts.toml");
            steps.extend(
                overlay
                    .write(path, hosts_toml.clone().into_bytes(), mode::PUBLIC)
                    .map_err(at)?,
            );
        }
        if !pre_init {
            if let Some(join) = &part.join {
                steps.push(Step::Join(join.clone()));
            }
        }
        plan.parts.push((n, steps));
    }
    if !pre_init {
        for (target, path, original) in touched {
            let now = overlay.files.get(&path);
            if now.is_some() && now != original.as_ref() {
                for service in target.restarts {
                    if !plan.restarts.iter().any(|s| s == service) {
                        plan.restarts.push(service.to_string());
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// The snap's addon commands for one part (`$SNAP/microk8s-*.wrapper`, as the Go agent).
fn addon_steps(env: &Environment, part: &Part) -> Result<Vec<Step>, ApplyError> {
    let mut steps = Vec::new();
    if part.addon_repositories.is_empty() && part.addons.is_empty() {
        return Ok(steps);
    }
    let Some(snap) = &env.snap else {
        let field = if part.addon_repositories.is_empty() {
            "addons"
        } else {
            "addonRepositories"
        };
        return Err(ApplyError::NeedsSnap {
            part: part.number,
            field,
        });
    };
    let wrapper = |name: &str| snap.join(name).display().to_string();
    for repo in &part.addon_repositories {
        let mut argv = vec![
            wrapper("microk8s-addons.wrapper"),
            "repo".into(),
            "add".into(),
            repo.name.clone(),
            repo.url.clone(),
        ];
        if let Some(reference) = &repo.reference {
            argv.extend(["--reference".into(), reference.clone()]);
        }
        argv.push("--force".into());
        steps.push(Step::Run {
            what: format!("addons repo add {}", repo.name),
            argv,
        });
    }
    for addon in &part.addons {
        let (verb, script) = if addon.disable {
            ("disable", "microk8s-disable.wrapper")
        } else {
            ("enable", "microk8s-enable.wrapper")
        };
        let mut argv = vec![wrapper(script), addon.name.clone()];
        argv.extend(addon.args.iter().cloned());
        steps.push(Step::Run {
            what: format!("{verb} {}", addon.name),
            argv,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded {
        runs: Mutex<Vec<Vec<String>>>,
        restarts: Mutex<Vec<String>>,
        joins: Mutex<Vec<(String, bool)>>,
        fail_run: bool,
    }

    impl LaunchEffects for Recorded {
        fn run(&self, argv: &[String]) -> Result<(), String> {
            self.runs.lock().unwrap().push(argv.to_vec());
            if self.fail_run {
                return Err("exit status 1".into());
            }
            Ok(())
        }
        fn restart(&self, service: &str) -> Result<(), String> {
            self.restarts.lock().unwrap().push(service.to_string());
            Ok(())
        }
        fn join(&self, join: &JoinSection) -> Result<Vec<String>, String> {
            self.joins
                .lock()
                .unwrap()
                .push((join.url.clone(), join.worker));
            Ok(vec!["joined".into()])
        }
    }

    fn node() -> (tempfile::TempDir, StateDir, Environment) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("data"));
        state.ensure_layout().unwrap();
        state
            .write(
                &state.layout().args("kubelet"),
                b"--cluster-domain=cluster.local\n--event-ttl 5m\n",
                mode::ARGS,
            )
            .unwrap();
        let env = Environment {
            snap: Some(dir.path().join("snap")),
            ..Environment::default()
        };
        (dir, state, env)
    }

    const TOKEN: &str = "persistent-token-of-thirty-two-chars";

    fn config() -> String {
        format!(
            "version: 0.2.0\npersistentClusterToken: {TOKEN}\naddons:\n  - name: dns\n  - name: registry\n    disable: true\n    args: [--force]\naddonRepositories:\n  - name: core\n    url: https://example.invalid/addons\n    reference: v1\nextraKubeletArgs:\n  --cluster-dns: 10.152.183.10\n  --event-ttl: null\nextraFIPSEnv:\n  GOFIPS: 1\nextraCNIEnv:\n  IPv4_SUPPORT: true\nextraSANs: [10.10.10.10, k8s.example.com]\ncontainerdRegistryConfigs:\n  docker.io: |\n    server = \"http://my.proxy:5000\"\nextraConfigFiles:\n  encryption.yaml: \"kind: EncryptionConfiguration\\n\"\njoin:\n  url: 10.0.0.10:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6a7b8\n  worker: true\n"
        )
    }

    #[test]
    fn full_apply_in_the_go_agents_order_then_nothing_the_second_time() {
        let (_dir, state, env) = node();
        let effects = Recorded::default();
        let applied = apply_text(&state, &env, &config(), false, &effects).unwrap();
        let l = state.layout();
        assert_eq!(
            state.read_string(&l.args("kubelet")).unwrap(),
            "--cluster-domain=cluster.local\n--cluster-dns=10.152.183.10\n"
        );
        assert_eq!(
            state.read_string(&l.args("fips-env")).unwrap(),
            "GOFIPS=1\n"
        );
        assert_eq!(
            state.read_string(&l.args("cni-env")).unwrap(),
            "IPv4_SUPPORT=true\n"
        );
        assert_eq!(
            state
                .read_string(&l.credential("persistent-cluster-tokens.txt"))
                .unwrap(),
            format!("{TOKEN}\n")
        );
        assert!(state
            .read_string(&l.cert("csr.conf.template"))
            .unwrap()
            .contains("IP.3 = 10.10.10.10\n"));
        assert_eq!(
            state
                .read_string(&l.args_dir().join("certs.d/docker.io/hosts.toml"))
                .unwrap(),
            "server = \"http://my.proxy:5000\"\n"
        );
        assert_eq!(
            state.read_string(&l.args("encryption.yaml")).unwrap(),
            "kind: EncryptionConfiguration\n"
        );
        let snap = env.snap.as_ref().unwrap().display().to_string();
        assert_eq!(
            *effects.runs.lock().unwrap(),
            vec![
                vec![
                    format!("{snap}/microk8s-addons.wrapper"),
                    "repo".into(),
                    "add".into(),
                    "core".into(),
                    "https://example.invalid/addons".into(),
                    "--reference".into(),
                    "v1".into(),
                    "--force".into()
                ],
                vec![format!("{snap}/microk8s-enable.wrapper"), "dns".into()],
                vec![
                    format!("{snap}/microk8s-disable.wrapper"),
                    "registry".into(),
                    "--force".into()
                ],
            ]
        );
        assert_eq!(effects.joins.lock().unwrap().len(), 1);
        assert_eq!(applied.restarted, vec!["kubelite", "k8s-dqlite"]);
        assert!(applied.restart_self, "fips-env restarts the agent too");
        assert_eq!(applied.join_messages, vec!["joined"]);

        let before = crate::state::read_bytes(&l.args("kubelet")).unwrap();
        let again = Recorded::default();
        let second = apply_text(&state, &env, &config(), false, &again).unwrap();
        assert!(second.written.is_empty(), "{:?}", second.written);
        assert!(second.restarted.is_empty() && !second.restart_self);
        assert_eq!(
            crate::state::read_bytes(&l.args("kubelet")).unwrap(),
            before
        );
    }

    #[test]
    fn pre_init_writes_files_only() {
        let (_dir, state, env) = node();
        let effects = Recorded::default();
        let applied = apply_text(&state, &env, &config(), true, &effects).unwrap();
        assert!(effects.runs.lock().unwrap().is_empty());
        assert!(effects.joins.lock().unwrap().is_empty());
        assert!(effects.restarts.lock().unwrap().is_empty());
        assert!(!applied.restart_self);
        assert!(applied.written.contains(&"args/kubelet".to_string()));
    }

    #[test]
    fn later_parts_see_earlier_ones_and_a_reverted_file_restarts_nothing() {
        let (_dir, state, env) = node();
        let text = "version: 0.1.0\nextraKubeletArgs:\n  --v: \"4\"\n---\nversion: 0.1.0\nextraKubeletArgs:\n  --v: null\nextraContainerdEnv:\n  http_proxy: http://proxy:3128\n";
        let effects = Recorded::default();
        let applied = apply_text(&state, &env, text, false, &effects).unwrap();
        assert_eq!(
            state.read_string(&state.layout().args("kubelet")).unwrap(),
            "--cluster-domain=cluster.local\n--event-ttl 5m\n"
        );
        assert_eq!(applied.restarted, vec!["containerd"]);
    }

    #[test]
    fn refused_configurations_change_nothing() {
        let (dir, state, env) = node();
        let snapshot = || crate::state::testing::snapshot(dir.path());
        let before = snapshot();
        let bad_last_part = format!(
            "{}---\nversion: 0.1.0\nextraConfigFiles:\n  ../escape: x\n",
            config()
        );
        let effects = Recorded::default();
        assert!(matches!(
            apply_text(&state, &env, &bad_last_part, false, &effects),
            Err(ApplyError::Invalid(_))
        ));
        let no_snap = Environment::default();
        assert!(matches!(
            apply_text(&state, &no_snap, &config(), false, &effects),
            Err(ApplyError::NeedsSnap { part: 1, .. })
        ));
        assert!(effects.runs.lock().unwrap().is_empty());
        assert_eq!(snapshot(), before);
    }

    #[test]
    fn a_failing_addon_stops_before_the_files_of_its_part() {
        let (_dir, state, env) = node();
        let effects = Recorded {
            fail_run: true,
            ..Recorded::default()
        };
        let err = apply_text(&state, &env, &config(), false, &effects).unwrap_err();
        assert!(
            err.to_string()
                .contains("part 1: addons repo add core failed"),
            "{err}"
        );
        assert!(!state.exists(&state.layout().args("fips-env")));
    }
}
