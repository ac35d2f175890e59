//! MicroK8s launch configurations (`cluster-agent init -c FILE`, `snap set microk8s
//! config=…`, `$SNAP_COMMON/etc/launcher/*.yaml`): multi-document YAML, each document a part
//! applied in order, schema versions 0.1.0 to 0.2.0.
//!
//! Parsing and validation are one step: a [`LaunchConfig`] exists only when every part is
//! well-formed, so nothing is written for a file with one bad field anywhere. Differences
//! from the Go agent, each a bad input it let through: a file name with `/` or `..` in
//! `extraConfigFiles` (its check is inverted), flags or values
//! with line breaks, flags not starting with `-`, environment names that are not names,
//! registry names that are not `host[:port]`, SANs that are not names or addresses, and
//! persistent tokens shorter than `add-node --token` accepts.
//!
//! Scalars keep their text (`GOFIPS: 1` is `"1"`, `reference: 1.10` is `"1.10"`), as YAML
//! decoding into strings does in Go; `null` (or nothing) as a flag's value removes the flag.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Oldest and newest schema versions understood.
pub const MIN_VERSION: Version = Version::new(0, 1, 0);
pub const MAX_VERSION: Version = Version::new(0, 2, 0);

/// Shortest persistent token accepted (the rule of `add-node --token`).
pub const MIN_TOKEN_LEN: usize = 32;

/// A problem with a launch configuration; `part` counts documents from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("part {part}: not a valid launch configuration: {reason}")]
    Syntax { part: usize, reason: String },
    #[error("part {part}, {field}: {reason}")]
    Field {
        part: usize,
        field: String,
        reason: String,
    },
}

fn field_error(part: usize, field: impl Into<String>, reason: impl Into<String>) -> LaunchError {
    LaunchError::Field {
        part,
        field: field.into(),
        reason: reason.into(),
    }
}

/// A schema version: `MAJOR.MINOR.PATCH`, an optional leading `v`, optional pre-release and
/// build suffixes (a pre-release sorts before its release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre: Option<String>,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version {
            major,
            minor,
            patch,
            pre: None,
        }
    }

    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let text = text.split_once('+').map_or(text, |(v, _build)| v);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre.to_string())),
            Some(_) => return None,
            None => (text, None),
        };
        let mut numbers = core.split('.').map(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        });
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return None;
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => std::cmp::Ordering::Equal,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

/// What a key of an `extra*Args` / `extra*Env` map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A command-line flag (`--cluster-dns`, `-l`).
    Flag,
    /// An environment variable name (`GOFIPS`, `http_proxy`).
    Env,
}

/// One `extra*Args` / `extra*Env` field: the file under `args/` it edits and the services
/// restarted when that file changes.
#[derive(Debug, PartialEq, Eq)]
pub struct ArgsTarget {
    pub field: &'static str,
    pub file: &'static str,
    pub keys: KeyKind,
    pub restarts: &'static [&'static str],
}

const fn target(
    field: &'static str,
    file: &'static str,
    keys: KeyKind,
    restarts: &'static [&'static str],
) -> ArgsTarget {
    ArgsTarget {
        field,
        file,
        keys,
        restarts,
    }
}

/// Every argument and environment field, in the order they are applied.
pub const ARGS_TARGETS: [ArgsTarget; 20] = [
    target(
        "extraKubeAPIServerArgs",
        "kube-apiserver",
        KeyKind::Flag,
        &["kubelite"],
    ),
    target("extraKubeletArgs", "kubelet", KeyKind::Flag, &["kubelite"]),
    target(
        "extraKubeProxyArgs",
        "kube-proxy",
        KeyKind::Flag,
        &["kubelite"],
    ),
    target(
        "extraKubeControllerManagerArgs",
        "kube-controller-manager",
        KeyKind::Flag,
        &["kubelite"],
    ),
    target(
        "extraKubeSchedulerArgs",
        "kube-scheduler",
        KeyKind::Flag,
        &["kubelite"],
    ),
    target(
        "extraKubeliteEnv",
        "kubelite-env",
        KeyKind::Env,
        &["kubelite"],
    ),
    target(
        "extraContainerdArgs",
        "containerd",
        KeyKind::Flag,
        &["containerd"],
    ),
    target(
        "extraContainerdEnv",
        "containerd-env",
        KeyKind::Env,
        &["containerd"],
    ),
    target(
        "extraDqliteArgs",
        "k8s-dqlite",
        KeyKind::Flag,
        &["k8s-dqlite"],
    ),
    target(
        "extraDqliteEnv",
        "k8s-dqlite-env",
        KeyKind::Env,
        &["k8s-dqlite"],
    ),
    target(
        "extraMicroK8sClusterAgentArgs",
        "cluster-agent",
        KeyKind::Flag,
        &["cluster-agent"],
    ),
    target(
        "extraMicroK8sClusterAgentEnv",
        "cluster-agent-env",
        KeyKind::Env,
        &["cluster-agent"],
    ),
    target(
        "extraMicroK8sAPIServerProxyArgs",
        "apiserver-proxy",
        KeyKind::Flag,
        &["apiserver-proxy"],
    ),
    target(
        "extraMicroK8sAPIServerProxyEnv",
        "apiserver-proxy-env",
        KeyKind::Env,
        &["apiserver-proxy"],
    ),
    target("extraEtcdArgs", "etcd", KeyKind::Flag, &["etcd"]),
    target("extraEtcdEnv", "etcd-env", KeyKind::Env, &["etcd"]),
    target(
        "extraFlanneldArgs",
        "flanneld",
        KeyKind::Flag,
        &["flanneld"],
    ),
    target(
        "extraFlanneldEnv",
        "flanneld-env",
        KeyKind::Env,
        &["flanneld"],
    ),
    target("extraCNIEnv", "cni-env", KeyKind::Env, &[]),
    target(
        "extraFIPSEnv",
        "fips-env",
        KeyKind::Env,
        &["kubelite", "k8s-dqlite", "cluster-agent"],
    ),
];

/// The other top-level fields.
const OTHER_FIELDS: [&str; 8] = [
    "version",
    "persistentClusterToken",
    "addonRepositories",
    "addons",
    "extraSANs",
    "containerdRegistryConfigs",
    "extraConfigFiles",
    "join",
];

/// A whole launch configuration: its parts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    pub parts: Vec<Part>,
}

impl LaunchConfig {
    /// Does any part ask to join a cluster?
    pub fn joins(&self) -> bool {
        self.parts.iter().any(|p| p.join.is_some())
    }

    /// Does any part manage addons or addon repositories?
    pub fn has_addons(&self) -> bool {
        self.parts
            .iter()
            .any(|p| !p.addons.is_empty() || !p.addon_repositories.is_empty())
    }

    /// Fields no schema version knows, as `part N: name` (ignored, as the Go agent does).
    pub fn unknown_fields(&self) -> Vec<String> {
        self.parts
            .iter()
            .flat_map(|p| {
                p.unknown_fields
                    .iter()
                    .map(move |f| format!("part {}: {f}", p.number))
            })
            .collect()
    }
}

/// `(flag or variable, Some(value) to set | None to remove)`.
pub type ArgsChange = (String, Option<String>);

/// The changes one part makes to one file under `args/`.
pub type ArgsEdit = (&'static ArgsTarget, Vec<ArgsChange>);

/// One document of a launch configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its position among the file's documents, from 1.
    pub number: usize,
    pub version: Version,
    pub persistent_cluster_token: Option<String>,
    pub addon_repositories: Vec<AddonRepository>,
    pub addons: Vec<Addon>,
    /// Flag and environment edits: a target and its `(key, Some(value) | None = remove)`
    /// pairs in document order, targets in [`ARGS_TARGETS`] order.
    pub args: Vec<ArgsEdit>,
    /// `None`: leave `csr.conf.template` alone; `Some(list)` (even empty): rewrite it.
    pub extra_sans: Option<Vec<String>>,
    pub containerd_registry_configs: Vec<(String, String)>,
    pub extra_config_files: Vec<(String, String)>,
    pub join: Option<JoinSection>,
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddonRepository {
    pub name: String,
    pub url: String,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addon {
    pub name: String,
    pub disable: bool,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSection {
    pub url: String,
    pub worker: bool,
    /// `key=value` labels the node registers with (`join --node-labels`).
    pub node_labels: Vec<String>,
    /// `key[=value]:Effect` taints it registers with (`join --register-with-taints`).
    pub taints: Vec<String>,
}

/// Parses and validates a whole file. Empty documents (comments only) are skipped.
pub fn parse(text: &str) -> Result<LaunchConfig, LaunchError> {
    let mut parts = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let raw = Option::<RawPart>::deserialize(document).map_err(|e| LaunchError::Syntax {
            part: number,
            reason: e.to_string(),
        })?;
        match raw {
            Some(raw) if !raw.is_empty() => parts.push(validate(number, raw)?),
            _ => {}
        }
    }
    Ok(LaunchConfig { parts })
}

/// A scalar's text, whatever YAML would have typed it as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// A YAML mapping in document order; a key given twice is an error (YAML forbids it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OrderedMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<Text>()? {
                    if entries.iter().any(|(k, _)| *k == key.0) {
                        return Err(de::Error::custom(format!("{:?} is given twice", key.0)));
                    }
                    let value = map.next_value::<V>()?;
                    entries.push((key.0, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        d.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
struct RawRepository {
    name: Option<Text>,
    url: Option<Text>,
    reference: Option<Text>,
}

#[derive(Debug, Deserialize)]
struct RawAddon {
    name: Option<Text>,
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    args: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
struct RawJoin {
    url: Option<Text>,
    #[serde(default)]
    worker: bool,
    #[serde(default, rename = "nodeLabels")]
    node_labels: Option<Vec<Text>>,
    #[serde(default, rename = "registerWithTaints")]
    taints: Option<Vec<Text>>,
}

/// A document as written, before validation.
#[derive(Debug, Default)]
struct RawPart {
    version: Option<Text>,
    persistent_cluster_token: Option<Text>,
    addon_repositories: Vec<RawRepository>,
    addons: Vec<RawAddon>,
    args: Vec<(&'static ArgsTarget, OrderedMap<Option<Text>>)>,
    extra_sans: Option<Vec<Text>>,
    containerd_registry_configs: OrderedMap<Option<Text>>,
    extra_config_files: OrderedMap<Option<Text>>,
    join: Option<RawJoin>,
    unknown_fields: Vec<String>,
}

impl RawPart {
    /// Only unknown fields or nothing at all (a comment-only header document).
    fn is_empty(&self) -> bool {
        self.version.is_none()
            && self.persistent_cluster_token.is_none()
            && self.addon_repositories.is_empty()
            && self.addons.is_empty()
            && self.args.is_empty()
            && self.extra_sans.is_none()
            && self.containerd_registry_configs.0.is_empty()
            && self.extra_config_files.0.is_empty()
            && self.join.is_none()
            && self.unknown_fields.is_empty()
    }
}

impl<'de> Deserialize<'de> for RawPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = RawPart;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of launch configuration fields")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPart, E> {
                Ok(RawPart::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPart, A::Error> {
                let mut part = RawPart::default();
                let mut seen: Vec<String> = Vec::new();
                while let Some(Text(key)) = map.next_key::<Text>()? {
                    if seen.contains(&key) {
                        return Err(de::Error::custom(format!("{key:?} is given twice")));
                    }
                    seen.push(key.clone());
                    let named = |e: A::Error| de::Error::custom(format!("{key}: {e}"));
                    match key.as_str() {
                        "version" => part.version = map.next_value().map_err(named)?,
                        "persistentClusterToken" => {
                            part.persistent_cluster_token = map.next_value().map_err(named)?
                        }
                        "addonRepositories" => {
                            part.addon_repositories = map
                                .next_value::<Option<Vec<RawRepository>>>()
                                .map_err(named)?
                                .unwrap_or_default()
                        }
                        "addons" => {
                            part.addons = map
                                .next_value::<Option<Vec<RawAddon>>>()
                                .map_err(named)?
                                .unwrap_or_default()
                        }
                        "extraSANs" => part.extra_sans = map.next_value().map_err(named)?,
                        "containerdRegistryConfigs" => {
                            part.containerd_registry_configs = map.next_value().map_err(named)?
                        }
                        "extraConfigFiles" => {
                            part.extra_config_files = map.next_value().map_err(named)?
                        }
                        "join" => part.join = map.next_value().map_err(named)?,
                        other => match ARGS_TARGETS.iter().find(|t| t.field == other) {
                            Some(target) => {
                                let edits: OrderedMap<Option<Text>> =
                                    map.next_value().map_err(named)?;
                                if !edits.0.is_empty() {
                                    part.args.push((target, edits));
                                }
                            }
                            None => {
                                map.next_value::<de::IgnoredAny>()?;
                                part.unknown_fields.push(key.clone());
                            }
                        },
                    }
                }
                // Apply order is the table's, whatever order the document wrote them in.
                part.args.sort_by_key(|(t, _)| {
                    ARGS_TARGETS
                        .iter()
                        .position(|x| std::ptr::eq(x, *t))
                        .unwrap_or(usize::MAX)
                });
                Ok(part)
            }
        }
        d.deserialize_map(PartVisitor)
    }
}

fn validate(part: usize, raw: RawPart) -> Result<Part, LaunchError> {
    let err = |field: &str, reason: String| field_error(part, field, reason);
    let version_text = raw.version.map(|t| t.0).ok_or_else(|| {
        err(
            "version",
            format!("missing; say which schema the part follows (`version: {MAX_VERSION}`)"),
        )
    })?;
    let version = Version::parse(&version_text).ok_or_else(|| {
        err(
            "version",
            format!("{version_text:?} is not a semantic version (like {MAX_VERSION})"),
        )
    })?;
    if version < MIN_VERSION || version > MAX_VERSION {
        return Err(err(
            "version",
            format!("{version} is not supported; this agent reads {MIN_VERSION} to {MAX_VERSION}"),
        ));
    }

    let persistent_cluster_token = match raw.persistent_cluster_token {
        Some(Text(token)) => {
            check_token(&token).map_err(|r| err("persistentClusterToken", r))?;
            Some(token)
        }
        None => None,
    };

    let mut addon_repositories = Vec::new();
    for (i, repo) in raw.addon_repositories.into_iter().enumerate() {
        let field = |name: &str| format!("addonRepositories[{i}].{name}");
        let name = required_word(repo.name).map_err(|r| err(&field("name"), r))?;
        let url = required_word(repo.url).map_err(|r| err(&field("url"), r))?;
        let reference = match repo.reference {
            Some(t) if !t.0.is_empty() => {
                Some(required_word(Some(t)).map_err(|r| err(&field("reference"), r))?)
            }
            _ => None,
        };
        addon_repositories.push(AddonRepository {
            name,
            url,
            reference,
        });
    }

    let mut addons = Vec::new();
    for (i, addon) in raw.addons.into_iter().enumerate() {
        let name = required_word(addon.name)
            .and_then(|n| {
                if n.contains('/') {
                    Err(format!("{n:?} is not an addon name"))
                } else {
                    Ok(n)
                }
            })
            .map_err(|r| err(&format!("addons[{i}].name"), r))?;
        let mut args = Vec::new();
        for (j, Text(arg)) in addon.args.unwrap_or_default().into_iter().enumerate() {
            one_line(&arg).map_err(|r| err(&format!("addons[{i}].args[{j}]"), r))?;
            args.push(arg);
        }
        addons.push(Addon {
            name,
            disable: addon.disable,
            args,
        });
    }

    let mut args = Vec::new();
    for (target, edits) in raw.args {
        let mut out = Vec::new();
        for (key, value) in edits.0 {
            let field = format!("{}.{key}", target.field);
            check_key(target.keys, &key).map_err(|r| err(&field, r))?;
            let value = value.map(|t| t.0);
            if let Some(v) = &value {
                one_line(v).map_err(|r| err(&field, r))?;
            }
            out.push((key, value));
        }
        args.push((target, out));
    }

    let extra_sans = match raw.extra_sans {
        Some(list) => {
            let mut sans = Vec::new();
            for (i, Text(san)) in list.into_iter().enumerate() {
                check_san(&san).map_err(|r| err(&format!("extraSANs[{i}]"), r))?;
                sans.push(san);
            }
            Some(sans)
        }
        None => None,
    };

    let mut containerd_registry_configs = Vec::new();
    for (registry, hosts_toml) in raw.containerd_registry_configs.0 {
        let field = format!("containerdRegistryConfigs.{registry}");
        check_registry(&registry).map_err(|r| err(&field, r))?;
        let hosts_toml = hosts_toml
            .ok_or_else(|| err(&field, "needs the text of a hosts.toml".into()))?
            .0;
        containerd_registry_configs.push((registry, hosts_toml));
    }

    let mut extra_config_files = Vec::new();
    for (name, content) in raw.extra_config_files.0 {
        let field = format!("extraConfigFiles.{name}");
        check_file_name(&name).map_err(|r| err(&field, r))?;
        let content = content
            .ok_or_else(|| err(&field, "needs the file's content".into()))?
            .0;
        extra_config_files.push((name, content));
    }

    let join = match raw.join {
        Some(RawJoin {
            url: Some(Text(url)),
            worker,
            node_labels,
            taints,
        }) if !url.trim().is_empty() => {
            super::connection::parse(url.trim()).map_err(|e| err("join.url", e.0))?;
            let texts = |list: Option<Vec<Text>>| -> Vec<String> {
                list.unwrap_or_default().into_iter().map(|t| t.0).collect()
            };
            let (node_labels, taints) = (texts(node_labels), texts(taints));
            for label in &node_labels {
                super::labels::check_label(label).map_err(|r| err("join.nodeLabels", r))?;
            }
            for taint in &taints {
                super::labels::check_taint(taint).map_err(|r| err("join.registerWithTaints", r))?;
            }
            Some(JoinSection {
                url: url.trim().to_string(),
                worker,
                node_labels,
                taints,
            })
        }
        Some(RawJoin { worker: true, .. }) => {
            return Err(err(
                "join.url",
                "missing; `worker: true` needs the connection string to join with".into(),
            ))
        }
        _ => None,
    };

    Ok(Part {
        number: part,
        version,
        persistent_cluster_token,
        addon_repositories,
        addons,
        args,
        extra_sans,
        containerd_registry_configs,
        extra_config_files,
        join,
        unknown_fields: raw.unknown_fields,
    })
}

/// Is `field` a top-level field of the schema?
pub fn is_known_field(field: &str) -> bool {
    OTHER_FIELDS.contains(&field) || ARGS_TARGETS.iter().any(|t| t.field == field)
}

fn one_line(value: &str) -> Result<(), String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err("must be one line (no line breaks or NUL)".into());
    }
    Ok(())
}

fn required_word(value: Option<Text>) -> Result<String, String> {
    let value = value.map(|t| t.0).unwrap_or_default();
    if value.trim().is_empty() {
        return Err("missing".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{value:?} must not contain blanks or control characters"
        ));
    }
    Ok(value)
}

fn check_token(token: &str) -> Result<(), String> {
    if token
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '|' || c == '/')
    {
        return Err("a token must not contain blanks, '|' or '/'".into());
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "too short ({} characters); a token that never expires needs at least {MIN_TOKEN_LEN}",
            token.len()
        ));
    }
    Ok(())
}

fn check_key(kind: KeyKind, key: &str) -> Result<(), String> {
    match kind {
        KeyKind::Flag => {
            let ok = key.starts_with('-')
                && key.len() > 1
                && !key.contains(|c: char| c.is_whitespace() || c.is_control() || c == '=');
            if !ok {
                return Err(format!(
                    "{key:?} is not a flag (like --name: one word starting with '-', no '=')"
                ));
            }
        }
        KeyKind::Env => {
            let mut chars = key.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!(
                    "{key:?} is not an environment variable name (letters, digits, '_')"
                ));
            }
        }
    }
    Ok(())
}

/// A DNS name (labels of letters, digits, '-' and '_', an optional leading `*.`).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn check_san(san: &str) -> Result<(), String> {
    if san.parse::<std::net::IpAddr>().is_ok() || is_dns_name(san) {
        Ok(())
    } else {
        Err(format!("{san:?} is neither an IP address nor a DNS name"))
    }
}

/// `host[:port]` as containerd names its `certs.d` directories (`_default` for all).
fn check_registry(registry: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{registry:?} is not a registry host[:port] (like docker.io or 10.0.0.1:5000)"
        ))
    };
    if registry == "_default" {
        return Ok(());
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return bad();
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return bad();
        }
        match after {
            "" => (ip, None),
            p => match p.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => return bad(),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    let host_ok = registry.starts_with('[')
        || host.parse::<std::net::Ipv4Addr>().is_ok()
        || (is_dns_name(host) && !host.starts_with("*."));
    let port_ok = port.map_or(true, |p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        bad()
    }
}

fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(|c| c.is_control())
    {
        return Err(format!(
            "{name:?} must be a plain file name (it is written under args/; no '/', not '.' or '..')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"---
version: 0.2.0
persistentClusterToken: persistent-token-of-thirty-two-chars
extraSANs:
  - 10.10.10.10
  - microk8s.example.com
extraKubeAPIServerArgs:
  --authorization-mode: RBAC,Node
  --event-ttl: null
extraKubeletArgs:
  --cluster-dns: 10.152.183.10
extraContainerdArgs:
  -l: debug
extraContainerdEnv:
  http_proxy: http://squid.internal:3128
extraConfigFiles:
  flannel-network-mgr-config: |
    {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
addons:
  - name: dns
  - name: mayastor
    args: [--default-pool-size, 20GB]
  - name: registry
    disable: true
addonRepositories:
  - name: community
    url: /snap/microk8s/current/addons/community
    reference: 1.10
containerdRegistryConfigs:
  docker.io: server = "http://my.proxy:5000"
join:
  url: 10.0.0.10:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6a7b8
  worker: true
extraCNIEnv:
  IPv4_SUPPORT: true
extraFIPSEnv:
  GOFIPS: 1
"#;

    #[test]
    fn full_document_keeps_scalar_text_and_order() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.parts.len(), 1);
        let p = &config.parts[0];
        assert_eq!(p.version, Version::new(0, 2, 0));
        assert_eq!(
            p.persistent_cluster_token.as_deref(),
            Some("persistent-token-of-thirty-two-chars")
        );
        let files: Vec<&str> = p.args.iter().map(|(t, _)| t.file).collect();
        assert_eq!(
            files,
            [
                "kube-apiserver",
                "kubelet",
                "containerd",
                "containerd-env",
                "cni-env",
                "fips-env"
            ]
        );
        assert_eq!(
            p.args[0].1,
            vec![
                (
                    "--authorization-mode".to_string(),
                    Some("RBAC,Node".to_string())
                ),
                ("--event-ttl".to_string(), None),
            ]
        );
        assert_eq!(
            p.args[4].1,
            vec![("IPv4_SUPPORT".into(), Some("true".into()))]
        );
        assert_eq!(p.args[5].1, vec![("GOFIPS".into(), Some("1".into()))]);
        assert_eq!(p.addon_repositories[0].reference.as_deref(), Some("1.10"));
        assert_eq!(p.addons[1].args, vec!["--default-pool-size", "20GB"]);
        assert!(p.addons[2].disable);
        assert_eq!(
            p.extra_config_files[0].1,
            "{\"Network\": \"10.1.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}\n"
        );
        assert_eq!(
            p.join,
            Some(JoinSection {
                url: "10.0.0.10:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6a7b8".into(),
                worker: true,
                node_labels: vec![],
                taints: vec![],
            })
        );
        assert_eq!(p.extra_sans.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn parts_header_comments_and_unknown_fields() {
        let text = "# header comment\n---\nversion: 0.1.0\naddons:\n  - name: dns\n---\n---\nversion: 0.1.0\nx-unknown-field: test\naddons:\n  - name: rbac\n";
        let config = parse(text).unwrap();
        assert_eq!(config.parts.len(), 2);
        assert_eq!(config.parts[0].addons[0].name, "dns");
        assert_eq!(config.parts[1].addons[0].name, "rbac");
        assert_eq!(
            config.unknown_fields(),
            vec!["part 3: x-unknown-field".to_string()]
        );
        let sans = parse("---\nversion: 0.1.0\n---\nversion: 0.1.0\nextraSANs: []\n").unwrap();
        assert_eq!(sans.parts[0].extra_sans, None);
        assert_eq!(sans.parts[1].extra_sans, Some(vec![]));
    }

    #[test]
    fn versions() {
        for ok in ["0.1.0", "0.2.0", "v0.1.5", "0.2.0-rc.1", "0.1.0+build"] {
            assert!(parse(&format!("version: {ok}\n")).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("0.3.0", "not supported"),
            ("0.0.1", "not supported"),
            ("0.1.0-alpha", "not supported"),
            ("not a semantic version", "not a semantic version"),
            ("0.1", "not a semantic version"),
        ] {
            let e = parse(&format!("version: {bad}\n")).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("part 1, version"),
                "{bad}: {e}"
            );
        }
        let e = parse("addons:\n  - name: dns\n").unwrap_err().to_string();
        assert!(e.contains("version: missing"), "{e}");
    }

    #[test]
    fn bad_input_names_part_and_field() {
        let cases = [
            ("[ test", "part 1: not a valid launch configuration"),
            ("version: 0.1.0\naddons: [addon1, addon2]\n", "addons"),
            (
                "version: 0.1.0\nextraConfigFiles:\n  ../x: y\n",
                "part 1, extraConfigFiles.../x",
            ),
            (
                "version: 0.1.0\nextraConfigFiles:\n  a/b: y\n",
                "plain file name",
            ),
            (
                "version: 0.1.0\nextraConfigFiles:\n  ..: y\n",
                "plain file name",
            ),
            (
                "version: 0.1.0\nextraKubeletArgs:\n  --x: \"a\\nb\"\n",
                "part 1, extraKubeletArgs.--x: must be one line",
            ),
            (
                "version: 0.1.0\nextraKubeletArgs:\n  \"--x\\n--y\": a\n",
                "is not a flag",
            ),
            (
                "version: 0.1.0\nextraKubeletArgs:\n  cluster-dns: a\n",
                "is not a flag",
            ),
            (
                "version: 0.1.0\nextraKubeliteEnv:\n  A-B: a\n",
                "environment variable name",
            ),
            (
                "version: 0.1.0\ncontainerdRegistryConfigs:\n  ../../etc: x\n",
                "is not a registry",
            ),
            (
                "version: 0.1.0\ncontainerdRegistryConfigs:\n  docker.io:99999: x\n",
                "is not a registry",
            ),
            ("version: 0.1.0\nextraSANs: [\"a b\"]\n", "extraSANs[0]"),
            (
                "version: 0.1.0\npersistentClusterToken: short\n",
                "too short",
            ),
            ("version: 0.1.0\njoin:\n  url: nonsense\n", "join.url"),
            (
                "version: 0.1.0\njoin:\n  worker: true\n",
                "join.url: missing",
            ),
            ("version: 0.1.0\nversion: 0.2.0\n", "given twice"),
            (
                "version: 0.1.0\n---\nversion: 0.1.0\naddons:\n  - name: \"\"\n",
                "part 2, addons[0].name: missing",
            ),
        ];
        for (text, says) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn join_section_labels_and_taints() {
        let text = "version: 0.2.0\njoin:\n  url: 10.0.0.10:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6a7b8\n  worker: true\n  nodeLabels: [zone=a, example.com/rack=r4]\n  registerWithTaints: [\"dedicated=gpu:NoSchedule\"]\n";
        let join = parse(text).unwrap().parts[0].join.clone().unwrap();
        assert_eq!(join.node_labels, vec!["zone=a", "example.com/rack=r4"]);
        assert_eq!(join.taints, vec!["dedicated=gpu:NoSchedule"]);
        let bad = text.replace("zone=a", "node-role.kubernetes.io/x=");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("join.nodeLabels"), "{e}");
    }

    #[test]
    fn registry_names() {
        for ok in [
            "docker.io",
            "localhost:32000",
            "10.0.0.1:5000",
            "[fd00::1]:5000",
            "_default",
        ] {
            assert!(check_registry(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "a/b",
            "docker.io:",
            "[::1",
            "*.example.com",
            "a b",
        ] {
            assert!(check_registry(bad).is_err(), "{bad}");
        }
    }
}
