//! Compose files as stacks: a compose document (YAML, or the same as JSON) parsed into a
//! validated [`StackSpec`], every refusal naming the line and the key it came from.
//!
//! What a stack honours: per service `image`, `command`, `entrypoint`, `container_name`,
//! `environment` (map or list), `env_file` (only where the caller can read files: the
//! CLI), `ports`, `volumes` (named volumes declared at the top level; absolute host
//! paths; relative binds are refused because the file's directory is not on the node),
//! `tmpfs`, `read_only`, `healthcheck`, `depends_on` (list, or map with
//! `condition: service_started|service_healthy`), `deploy.replicas`,
//! `deploy.resources.limits`, `mem_limit`, `cpus`, `restart`, `networks`; top-level
//! `volumes` and `networks` (local driver only), and `build` (`context`, `dockerfile`,
//! `args`; built by the control plane from the stack's git repository, `image` then naming
//! the built image). Anything else is refused: an unknown key, variable interpolation
//! (`${VAR}`; `$$` is a literal `$`), a reservation the model does not keep.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::{ContainerSpec, HealthCheck, Mount, PortMapping, Protocol, RestartPolicy, parse_memory, validate_container_name};
use crate::health::{HealthProbe, parse_duration};

/// Largest compose document accepted.
pub const MAX_COMPOSE_BYTES: usize = 1 << 20;
/// Most services one stack may have.
pub const MAX_SERVICES: usize = 64;
/// Longest service name: a service runs as the deployment `<stack>-<service>`, and
/// deployment names are at most 54 characters.
pub const MAX_SERVICE_NAME: usize = 40;
/// Health check interval and timeout when the file gives none (Docker's defaults).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Health check timeout when the file gives none.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Health check retries when the file gives none.
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// A compose file Diplo refuses: the 1-based line (when known), the key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ComposeError {
    /// 1-based line of the key at fault, when it could be found.
    pub line: Option<usize>,
    /// The key at fault, as a path (`services.web.ports`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.key.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.key, self.message) }
    }
}

/// When a dependent service may start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    /// Once the dependency's containers run.
    #[default]
    ServiceStarted,
    /// Once the dependency's containers report healthy (it must have a health check).
    ServiceHealthy,
}

impl DependsCondition {
    /// The compose spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DependsCondition::ServiceStarted => "service_started",
            DependsCondition::ServiceHealthy => "service_healthy",
        }
    }
}

/// One service of a stack, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Instances to run.
    pub replicas: u32,
    /// The container template (its `name` is left empty: the deployment names instances).
    pub container: ContainerSpec,
    /// Services that must be up first, and how.
    pub depends_on: BTreeMap<String, DependsCondition>,
    /// Stack networks it joins (`default` when the file names none).
    pub networks: Vec<String>,
    /// Extra names other services reach it by (besides the service name), e.g. its
    /// `container_name`.
    pub aliases: Vec<String>,
    /// `container_name` as given (also one of the aliases).
    pub container_name: Option<String>,
    /// Its `build:` section: its image is built from the stack's repository first (the
    /// container's `image`, when given, names the built image; empty otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<ServiceBuild>,
}

/// A service's `build:` section, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBuild {
    /// Build context, relative to the compose file's directory in the repository.
    pub context: String,
    /// Dockerfile, relative to the context (`Dockerfile` when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// `--build-arg`s.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// A compose file, validated: services by name, declared volumes and networks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSpec {
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeSet<String>,
    /// Networks declared at the top level.
    pub networks: BTreeSet<String>,
    /// Where the services with `build:` are built from: given with the deploy, never read
    /// from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<StackRepository>,
}

/// The git repository a stack's `build:` sections refer to, and the builds made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRepository {
    /// Repository URL.
    pub repo_url: String,
    /// Branch or tag; `None`: the default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The compose file's path in the repository (build contexts are relative to its
    /// directory).
    pub compose_file: String,
    /// The latest build of each built service, by service name (set by the control plane).
    #[serde(default)]
    pub builds: BTreeMap<String, String>,
}

/// How `env_file` entries are read: `None` refuses them (a server has no files of the
/// client's); the CLI passes a reader resolving paths relative to the compose file.
pub type EnvFileReader<'a> = Option<&'a dyn Fn(&str) -> Result<String, String>>;

// ---------------------------------------------------------------------------------------
// The document as written (serde, unknown keys refused).

/// A string or a list of strings (`command: a b` or `command: [a, b]`); numbers and
/// booleans are read as their text (`command: [sleep, 10]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    /// One string.
    One(String),
    /// A list.
    List(Vec<String>),
}

/// A scalar read as text (numbers and booleans too).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Text(deserializer.deserialize_any(TextVisitor)?))
    }
}

struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StringOrList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<StringOrList, E> {
                Ok(StringOrList::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StringOrList, A::Error> {
                let mut items = Vec::new();
                while let Some(Text(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(StringOrList::List(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A scalar: string, integer, float or boolean (`cpus: 0.5` or `cpus: "0.5"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(text) => text.clone(),
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// `environment`: a map or a list of `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Environment {
    /// `KEY: value`.
    Map(BTreeMap<String, Option<Scalar>>),
    /// `- KEY=value`.
    List(Vec<String>),
}

/// A `ports` entry: short (`"8080:80/tcp"`) or long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortEntry {
    /// `"8080:80"`, `"80"`, `8080`.
    Short(Scalar),
    /// `{target, published, protocol}`.
    Long(LongPort),
}

/// The long form of a port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPort {
    /// Port in the container.
    pub target: u16,
    /// Port on the node (random when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Scalar>,
    /// `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A `volumes` entry of a service: short (`name:/path:ro`) or long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VolumeEntry {
    /// `source:target[:ro|rw]`.
    Short(String),
    /// `{type, source, target, read_only}`.
    Long(LongVolume),
}

/// The long form of a service volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongVolume {
    /// `volume` or `bind`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume name or host path.
    #[serde(default)]
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `healthcheck`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeHealth {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]`, `["NONE"]` or a shell string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<StringOrList>,
    /// `10s`, `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Grace time after start (refused: the model does not keep it yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    /// No health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<bool>,
}

/// `depends_on`: a list of services, or a map with conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DependsOn {
    /// `[db, cache]` (condition `service_started`).
    List(Vec<String>),
    /// `db: {condition: service_healthy}`.
    Map(BTreeMap<String, DependsEntry>),
}

/// One dependency in the map form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsEntry {
    /// `service_started` or `service_healthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// `deploy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Limits and reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Upper bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSet>,
    /// Guarantees (refused: the model does not keep them yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceSet>,
}

/// CPUs and memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSet {
    /// CPUs (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Scalar>,
    /// Memory (`256m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Scalar>,
}

/// `networks` of a service: a list, or a map with aliases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    /// `[front, back]`.
    List(Vec<String>),
    /// `front: {aliases: [...]}`.
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

/// One network of a service in the map form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    /// Extra names on that network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
}

/// A top-level volume or network declaration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopLevelObject {
    /// Only `local` (volumes) or `bridge` (networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// One service as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ComposeService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A context path, or `context`, `dockerfile` and `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<serde_norway::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<VolumeEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<StringOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<ComposeHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<DependsOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<Scalar>,
    /// Refused (the model does not keep reservations yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<ServiceNetworks>,
}

/// A compose document as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Obsolete; accepted and not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Scalar>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, ComposeService>,
    /// Named volumes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Option<TopLevelObject>>,
    /// Networks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<TopLevelObject>>,
}

// ---------------------------------------------------------------------------------------
// Parsing.

/// Parses and validates a compose document (YAML or JSON). `env_file` entries are read
/// through `read_env_file`, or refused when it is `None`.
pub fn parse(source: &str, read_env_file: EnvFileReader<'_>) -> Result<StackSpec, ComposeError> {
    if source.len() > MAX_COMPOSE_BYTES {
        return Err(ComposeError {
            line: None,
            key: String::new(),
            message: format!("the file is {} bytes, more than the {MAX_COMPOSE_BYTES} accepted", source.len()),
        });
    }
    // A first pass as plain YAML refuses duplicate keys, which typed maps would let the last
    // one win silently.
    serde_norway::from_str::<serde_norway::Value>(source).map_err(|err| {
        let mut error = from_serde(&err);
        // The mark is the first entry's: point at the second one.
        if let (Some(key), Some(location)) =
            (error.message.strip_prefix("duplicate entry with key \"").and_then(|k| k.strip_suffix('"')), err.location())
            && let Some(second) = find_key(source, location.index() + key.len(), key)
        {
            error.line = Some(source[..second].matches('\n').count() + 1);
            error.key = if error.key.is_empty() { key.to_owned() } else { format!("{}.{key}", error.key) };
        }
        error
    })?;
    let file: ComposeFile = serde_norway::from_str(source).map_err(|err| from_serde(&err))?;
    Validator { source }.stack(&file, read_env_file)
}

/// A serde error as a [`ComposeError`]: its line, the unknown field or the path, the message.
fn from_serde(err: &serde_norway::Error) -> ComposeError {
    let line = err.location().map(|location| location.line());
    let mut text = err.to_string();
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    let (path, message) = match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (path.to_owned(), message.to_owned()),
        _ => (String::new(), text.clone()),
    };
    let key = match message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')) {
        Some((field, _)) if path.is_empty() => field.to_owned(),
        Some((field, _)) => format!("{path}.{field}"),
        None => path,
    };
    let message = if message.starts_with("unknown field") { format!("{message} (Diplo does not support this key)") } else { message };
    ComposeError { line, key, message }
}

struct Validator<'s> {
    source: &'s str,
}

impl Validator<'_> {
    fn error(&self, path: &[&str], message: impl Into<String>) -> ComposeError {
        ComposeError { line: locate(self.source, path), key: path.join("."), message: message.into() }
    }

    fn stack(&self, file: &ComposeFile, read_env_file: EnvFileReader<'_>) -> Result<StackSpec, ComposeError> {
        if file.services.is_empty() {
            return Err(self.error(&["services"], "a stack needs at least one service"));
        }
        if file.services.len() > MAX_SERVICES {
            return Err(self.error(&["services"], format!("{} services, more than the {MAX_SERVICES} accepted", file.services.len())));
        }
        let mut stack = StackSpec::default();
        for (name, volume) in &file.volumes {
            validate_container_name(name).map_err(|message| self.error(&["volumes", name], message))?;
            if let Some(driver) = volume.as_ref().and_then(|v| v.driver.as_deref())
                && driver != "local"
            {
                return Err(self.error(&["volumes", name, "driver"], format!("driver {driver:?} is not supported: only local volumes")));
            }
            stack.volumes.insert(name.clone());
        }
        for (name, network) in &file.networks {
            validate_container_name(name).map_err(|message| self.error(&["networks", name], message))?;
            if let Some(driver) = network.as_ref().and_then(|v| v.driver.as_deref())
                && driver != "bridge"
            {
                return Err(self.error(&["networks", name, "driver"], format!("driver {driver:?} is not supported: only bridge networks")));
            }
            stack.networks.insert(name.clone());
        }
        for (name, service) in &file.services {
            let parsed = self.service(name, service, &stack, read_env_file)?;
            stack.services.insert(name.clone(), parsed);
        }
        for (name, service) in &stack.services {
            for (dependency, condition) in &service.depends_on {
                let Some(target) = stack.services.get(dependency) else {
                    return Err(
                        self.error(&["services", name, "depends_on", dependency], format!("no service {dependency:?} in this file"))
                    );
                };
                if *condition == DependsCondition::ServiceHealthy && target.container.healthcheck.is_none() {
                    return Err(self.error(
                        &["services", name, "depends_on", dependency],
                        format!("condition service_healthy needs a healthcheck on {dependency:?}, which has none"),
                    ));
                }
            }
        }
        if let Some(cycle) = dependency_cycle(&stack) {
            return Err(self.error(&["services", &cycle[0], "depends_on"], format!("depends_on forms a cycle: {}", cycle.join(" -> "))));
        }
        Ok(stack)
    }

    fn service(
        &self,
        name: &str,
        raw: &ComposeService,
        stack: &StackSpec,
        read_env_file: EnvFileReader<'_>,
    ) -> Result<ServiceSpec, ComposeError> {
        let at = |key: &'static str| ["services", name, key];
        validate_container_name(name).map_err(|message| self.error(&["services", name], format!("service name {message}")))?;
        if name.len() > MAX_SERVICE_NAME {
            return Err(self.error(&["services", name], format!("service names are at most {MAX_SERVICE_NAME} characters")));
        }
        let mut spec = ServiceSpec { replicas: 1, ..ServiceSpec::default() };
        if let Some(build) = &raw.build {
            spec.build = Some(self.build(name, build)?);
        }
        let container = &mut spec.container;
        container.image = match raw.image.as_deref().map(str::trim) {
            Some(image) if !image.is_empty() => self.literal(&at("image"), image)?,
            _ if spec.build.is_some() => String::new(),
            _ => return Err(self.error(&["services", name], "image (or build) is required")),
        };
        if let Some(command) = &raw.command {
            container.command = self.argv(&at("command"), command)?;
        }
        if let Some(entrypoint) = &raw.entrypoint {
            container.entrypoint = self.argv(&at("entrypoint"), entrypoint)?;
        }
        if let Some(container_name) = &raw.container_name {
            validate_container_name(container_name).map_err(|message| self.error(&at("container_name"), message))?;
            spec.container_name = Some(container_name.clone());
        }
        if let Some(files) = &raw.env_file {
            let Some(read) = read_env_file else {
                return Err(self.error(
                    &at("env_file"),
                    "env_file is read by the CLI (diplo stack deploy -f): put the variables in environment when sending the file over the API",
                ));
            };
            for file in list(files) {
                let text = read(&file).map_err(|message| self.error(&at("env_file"), format!("{file}: {message}")))?;
                for (number, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let Some((key, value)) = line.split_once('=') else {
                        return Err(self.error(&at("env_file"), format!("{file} line {}: expected KEY=VALUE", number + 1)));
                    };
                    container.env.insert(key.trim().to_owned(), value.to_owned());
                }
            }
        }
        if let Some(environment) = &raw.environment {
            let path = at("environment");
            let pairs: Vec<(String, Option<String>)> = match environment {
                Environment::Map(map) => map.iter().map(|(k, v)| (k.clone(), v.as_ref().map(Scalar::text))).collect(),
                Environment::List(items) => items
                    .iter()
                    .map(|item| item.split_once('=').map_or((item.clone(), None), |(k, v)| (k.to_owned(), Some(v.to_owned()))))
                    .collect(),
            };
            for (key, value) in pairs {
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(self.error(&path, format!("{key:?} is not a variable name")));
                }
                let Some(value) = value else {
                    return Err(self.error(&path, format!("{key} has no value: give it one (values are not taken from the host)")));
                };
                container.env.insert(key, self.literal(&path, &value)?);
            }
        }
        for port in raw.ports.iter().flatten() {
            container.ports.push(self.port(&at("ports"), port)?);
        }
        for volume in raw.volumes.iter().flatten() {
            container.mounts.push(self.volume(&at("volumes"), volume, stack)?);
        }
        if let Some(tmpfs) = &raw.tmpfs {
            for path in list(tmpfs) {
                if !path.starts_with('/') || path.contains(':') {
                    return Err(self.error(&at("tmpfs"), format!("{path:?} must be an absolute path (options are not supported)")));
                }
                container.tmpfs.push(path);
            }
        }
        container.read_only = raw.read_only.unwrap_or(false);
        if let Some(health) = &raw.healthcheck {
            container.healthcheck = self.healthcheck(&at("healthcheck"), health)?;
        }
        match &raw.depends_on {
            None => {}
            Some(DependsOn::List(names)) => {
                for dependency in names {
                    spec.depends_on.insert(dependency.clone(), DependsCondition::ServiceStarted);
                }
            }
            Some(DependsOn::Map(map)) => {
                for (dependency, entry) in map {
                    let condition = match entry.condition.as_deref() {
                        None | Some("service_started") => DependsCondition::ServiceStarted,
                        Some("service_healthy") => DependsCondition::ServiceHealthy,
                        Some(other) => {
                            return Err(self.error(
                                &["services", name, "depends_on", dependency, "condition"],
                                format!("condition {other:?} is not supported: service_started or service_healthy"),
                            ));
                        }
                    };
                    spec.depends_on.insert(dependency.clone(), condition);
                }
            }
        }
        if spec.depends_on.contains_key(name) {
            return Err(self.error(&at("depends_on"), format!("depends_on forms a cycle: {name} -> {name}")));
        }
        if let Some(deploy) = &raw.deploy {
            if let Some(replicas) = deploy.replicas {
                spec.replicas = replicas;
            }
            if let Some(resources) = &deploy.resources {
                if let Some(reservations) = &resources.reservations {
                    let path = ["services", name, "deploy", "resources", "reservations"];
                    if reservations.cpus.is_some() {
                        let mut at = path.to_vec();
                        at.push("cpus");
                        return Err(self.error(&at, "CPU reservations are not supported (memory reservations are)"));
                    }
                    if let Some(memory) = &reservations.memory {
                        container.memory_reservation = Some(self.memory(&path, memory)?);
                    }
                }
                if let Some(limits) = &resources.limits {
                    let path = ["services", name, "deploy", "resources", "limits"];
                    if let Some(memory) = &limits.memory {
                        container.memory_bytes = Some(self.memory(&path, memory)?);
                    }
                    if let Some(cpus) = &limits.cpus {
                        container.cpu_millis = Some(self.cpus(&path, cpus)?);
                    }
                }
            }
        }
        if let Some(memory) = &raw.mem_limit {
            let bytes = self.memory(&at("mem_limit"), memory)?;
            if container.memory_bytes.is_some_and(|limit| limit != bytes) {
                return Err(self.error(&at("mem_limit"), "differs from deploy.resources.limits.memory"));
            }
            container.memory_bytes = Some(bytes);
        }
        if let Some(memory) = &raw.mem_reservation {
            let bytes = self.memory(&at("mem_reservation"), memory)?;
            if container.memory_reservation.is_some_and(|reserved| reserved != bytes) {
                return Err(self.error(&at("mem_reservation"), "differs from deploy.resources.reservations.memory"));
            }
            container.memory_reservation = Some(bytes);
        }
        if let Some(cpus) = &raw.cpus {
            let millis = self.cpus(&at("cpus"), cpus)?;
            if container.cpu_millis.is_some_and(|limit| limit != millis) {
                return Err(self.error(&at("cpus"), "differs from deploy.resources.limits.cpus"));
            }
            container.cpu_millis = Some(millis);
        }
        if let Some(restart) = &raw.restart {
            container.restart_policy = restart.parse::<RestartPolicy>().map_err(|message| self.error(&at("restart"), message))?;
        }
        match &raw.networks {
            None => spec.networks.push("default".to_owned()),
            Some(networks) => {
                let named: Vec<(String, Vec<String>)> = match networks {
                    ServiceNetworks::List(names) => names.iter().map(|n| (n.clone(), Vec::new())).collect(),
                    ServiceNetworks::Map(map) => {
                        map.iter().map(|(n, v)| (n.clone(), v.as_ref().and_then(|v| v.aliases.clone()).unwrap_or_default())).collect()
                    }
                };
                for (network, aliases) in named {
                    if network != "default" && !stack.networks.contains(&network) {
                        return Err(
                            self.error(&at("networks"), format!("network {network:?} is not declared under the top-level networks"))
                        );
                    }
                    for alias in aliases {
                        validate_container_name(&alias).map_err(|message| self.error(&at("networks"), format!("alias {message}")))?;
                        if !spec.aliases.contains(&alias) {
                            spec.aliases.push(alias);
                        }
                    }
                    if !spec.networks.contains(&network) {
                        spec.networks.push(network);
                    }
                }
            }
        }
        if let Some(container_name) = &spec.container_name {
            if spec.replicas > 1 {
                return Err(self.error(&at("container_name"), "a container_name names one container: not with more than 1 replica"));
            }
            if !spec.aliases.contains(container_name) {
                spec.aliases.push(container_name.clone());
            }
        }
        Ok(spec)
    }

    /// A `build:` section: a context path, or a map of `context`, `dockerfile` and `args`
    /// (a map or `KEY=VALUE` list); paths stay inside the repository.
    fn build(&self, name: &str, value: &serde_norway::Value) -> Result<ServiceBuild, ComposeError> {
        use serde_norway::Value;
        let at = |key: &'static str| ["services", name, "build", key];
        let text = |path: &[&str], value: &Value| match value {
            Value::String(text) => self.literal(path, text),
            _ => Err(self.error(path, "expected a string")),
        };
        let path = |path: &[&str], value: &Value| -> Result<String, ComposeError> {
            let text = text(path, value)?;
            if text.contains("://") || text.starts_with("git@") {
                return Err(self.error(path, format!("{text:?}: a remote context is not supported: use a path in the stack's repository")));
            }
            crate::build::validate_repo_path(&path.join("."), &text).map_err(|message| self.error(path, message))?;
            Ok(text)
        };
        let mut build = ServiceBuild::default();
        match value {
            Value::String(_) => build.context = path(&["services", name, "build"], value)?,
            Value::Mapping(map) => {
                for (key, value) in map {
                    match key.as_str() {
                        Some("context") => build.context = path(&at("context"), value)?,
                        Some("dockerfile") => build.dockerfile = Some(path(&at("dockerfile"), value)?),
                        Some("args") => {
                            let entries: Vec<(String, String)> = match value {
                                Value::Mapping(args) => args
                                    .iter()
                                    .map(|(k, v)| {
                                        let key = k.as_str().ok_or_else(|| self.error(&at("args"), "names are strings"))?;
                                        let value = match v {
                                            Value::String(text) => self.literal(&at("args"), text)?,
                                            Value::Number(n) => n.to_string(),
                                            Value::Bool(b) => b.to_string(),
                                            _ => return Err(self.error(&at("args"), format!("{key}: expected a value"))),
                                        };
                                        Ok((key.to_owned(), value))
                                    })
                                    .collect::<Result<_, _>>()?,
                                Value::Sequence(items) => items
                                    .iter()
                                    .map(|item| {
                                        let entry = text(&at("args"), item)?;
                                        entry
                                            .split_once('=')
                                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                            .ok_or_else(|| self.error(&at("args"), format!("{entry:?}: expected KEY=VALUE")))
                                    })
                                    .collect::<Result<_, _>>()?,
                                _ => return Err(self.error(&at("args"), "expected a map or a list of KEY=VALUE")),
                            };
                            build.args = entries.into_iter().collect();
                            crate::build::validate_args("args", &build.args).map_err(|message| self.error(&at("args"), message))?;
                        }
                        Some(other) => {
                            let key = ["services", name, "build", other];
                            return Err(self.error(&key, format!("build.{other} is not supported (context, dockerfile and args are)")));
                        }
                        None => return Err(self.error(&["services", name, "build"], "keys are strings")),
                    }
                }
                if build.context.is_empty() {
                    build.context = ".".to_owned();
                }
            }
            _ => return Err(self.error(&["services", name, "build"], "expected a context path or a map")),
        }
        Ok(build)
    }

    /// A string with `$$` read as `$`; any other `$` (variable interpolation) is refused.
    fn literal(&self, path: &[&str], text: &str) -> Result<String, ComposeError> {
        unescape_dollars(text).map_err(|message| self.error(path, message))
    }

    fn argv(&self, path: &[&str], value: &StringOrList) -> Result<Vec<String>, ComposeError> {
        let words = match value {
            StringOrList::One(text) => split_words(text).map_err(|message| self.error(path, message))?,
            StringOrList::List(items) => items.clone(),
        };
        words.iter().map(|word| self.literal(path, word)).collect()
    }

    fn port(&self, path: &[&str], entry: &PortEntry) -> Result<PortMapping, ComposeError> {
        let number = |text: &str| -> Result<u16, ComposeError> {
            text.parse::<u16>()
                .map_err(|_| self.error(path, format!("{text:?} is not a port number (ranges and host addresses are not supported)")))
        };
        let protocol = |text: &str| match text {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(self.error(path, format!("protocol {other:?}: expected tcp or udp"))),
        };
        match entry {
            PortEntry::Short(scalar) => {
                let text = scalar.text();
                let (ports, proto) = text.split_once('/').map_or((text.as_str(), "tcp"), |(p, proto)| (p, proto));
                let protocol = protocol(proto)?;
                let (host, container) = match ports.split(':').collect::<Vec<_>>().as_slice() {
                    [container] => (0, number(container)?),
                    [host, container] => (number(host)?, number(container)?),
                    _ => return Err(self.error(path, format!("{text:?}: host addresses are not supported: HOST:CONTAINER[/PROTOCOL]"))),
                };
                if container == 0 {
                    return Err(self.error(path, format!("{text:?}: the container port must not be 0")));
                }
                Ok(PortMapping { host_port: host, container_port: container, protocol })
            }
            PortEntry::Long(long) => {
                if long.target == 0 {
                    return Err(self.error(path, "target must not be 0"));
                }
                let host = long.published.as_ref().map(|p| number(&p.text())).transpose()?.unwrap_or(0);
                Ok(PortMapping {
                    host_port: host,
                    container_port: long.target,
                    protocol: protocol(long.protocol.as_deref().unwrap_or("tcp"))?,
                })
            }
        }
    }

    fn volume(&self, path: &[&str], entry: &VolumeEntry, stack: &StackSpec) -> Result<Mount, ComposeError> {
        let (source, target, read_only) = match entry {
            VolumeEntry::Short(text) => {
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [source, target] => ((*source).to_owned(), (*target).to_owned(), false),
                    [source, target, mode] => match *mode {
                        "ro" => ((*source).to_owned(), (*target).to_owned(), true),
                        "rw" => ((*source).to_owned(), (*target).to_owned(), false),
                        other => return Err(self.error(path, format!("{text:?}: mode {other:?} is not supported: ro or rw"))),
                    },
                    [_] => {
                        return Err(self.error(path, format!("{text:?}: anonymous volumes are not supported: name the volume (NAME:PATH)")));
                    }
                    _ => return Err(self.error(path, format!("{text:?}: expected SOURCE:TARGET[:ro|rw]"))),
                }
            }
            VolumeEntry::Long(long) => {
                match long.kind.as_str() {
                    "volume" | "bind" => {}
                    other => return Err(self.error(path, format!("type {other:?} is not supported: volume or bind"))),
                }
                (long.source.clone(), long.target.clone(), long.read_only)
            }
        };
        if !target.starts_with('/') {
            return Err(self.error(path, format!("{target:?} must be an absolute path in the container")));
        }
        if source.starts_with('.') || source.starts_with('~') {
            return Err(self.error(
                path,
                format!("{source:?}: relative bind mounts are not supported (the file's directory is not on the node): use a named volume"),
            ));
        }
        if !source.starts_with('/') && !stack.volumes.contains(&source) {
            return Err(self.error(path, format!("volume {source:?} is not declared under the top-level volumes")));
        }
        Ok(Mount { source, target, read_only })
    }

    fn healthcheck(&self, path: &[&str], health: &ComposeHealth) -> Result<Option<HealthCheck>, ComposeError> {
        if health.disable == Some(true) {
            return Ok(None);
        }
        let mut test_path = path.to_vec();
        test_path.push("test");
        // A plain string is compose's shorthand for CMD-SHELL.
        let test: Vec<String> = match &health.test {
            None => return Err(self.error(&test_path, "a health check needs a test")),
            Some(StringOrList::One(shell)) => vec!["CMD-SHELL".to_owned(), self.literal(&test_path, shell)?],
            Some(StringOrList::List(items)) => match items.first().map(String::as_str) {
                Some("CMD" | "CMD-SHELL" | "NONE") => items.iter().map(|word| self.literal(&test_path, word)).collect::<Result<_, _>>()?,
                _ => return Err(self.error(&test_path, "expected [\"CMD\", args...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]")),
            },
        };
        let Some(probe) = HealthProbe::from_test(&test).map_err(|message| self.error(&test_path, message))? else {
            return Ok(None);
        };
        let duration = |key: &str, value: &Option<String>, default: Duration, zero_ok: bool| -> Result<Duration, ComposeError> {
            let mut at = path.to_vec();
            at.push(key);
            match value {
                None => Ok(default),
                Some(text) => match parse_duration(text) {
                    Ok(duration) if zero_ok || !duration.is_zero() => Ok(duration),
                    Ok(_) => Err(self.error(&at, "must be more than 0")),
                    Err(message) => Err(self.error(&at, message)),
                },
            }
        };
        let check = HealthCheck {
            probe,
            interval: duration("interval", &health.interval, DEFAULT_HEALTH_INTERVAL, false)?,
            timeout: duration("timeout", &health.timeout, DEFAULT_HEALTH_TIMEOUT, false)?,
            retries: health.retries.unwrap_or(DEFAULT_HEALTH_RETRIES),
            start_period: duration("start_period", &health.start_period, Duration::ZERO, true)?,
        };
        // The bounds every health check is held to, reported at the key at fault.
        check.validate().map_err(|bad| {
            let key = bad.field.strip_prefix("healthcheck.").unwrap_or("test");
            let mut at = path.to_vec();
            at.push(key);
            self.error(&at, bad.message.clone())
        })?;
        Ok(Some(check))
    }

    fn memory(&self, path: &[&str], value: &Scalar) -> Result<u64, ComposeError> {
        match parse_memory(&value.text()) {
            Ok(0) => Err(self.error(path, "must be more than 0")),
            Ok(bytes) => Ok(bytes),
            Err(message) => Err(self.error(path, message)),
        }
    }

    fn cpus(&self, path: &[&str], value: &Scalar) -> Result<u32, ComposeError> {
        let text = value.text();
        match text.trim().parse::<f64>() {
            Ok(cpus) if cpus > 0.0 && cpus <= 4096.0 => Ok(((cpus * 1000.0).round() as u32).max(1)),
            _ => Err(self.error(path, format!("{text:?} is not a CPU count like 0.5 or 2"))),
        }
    }
}

fn list(value: &StringOrList) -> Vec<String> {
    match value {
        StringOrList::One(one) => vec![one.clone()],
        StringOrList::List(items) => items.clone(),
    }
}

/// `$$` → `$`; a lone `$` (variable interpolation) is refused.
fn unescape_dollars(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            if chars.peek() == Some(&'$') {
                chars.next();
            } else {
                return Err(format!("{text:?}: variable interpolation ($VAR) is not supported: give the value (write $$ for a literal $)"));
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// Splits a command line into words as compose does: whitespace separates, single and
/// double quotes group, a backslash escapes the next character (not inside single quotes).
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(format!("{text:?}: unterminated single quote")),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(format!("{text:?}: unterminated double quote")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(format!("{text:?}: unterminated double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("{text:?}: ends with a backslash")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The first cycle in `depends_on`, as the services along it ending where it started.
pub fn dependency_cycle(stack: &StackSpec) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(stack: &StackSpec, name: &str, marks: &mut BTreeMap<String, Mark>, trail: &mut Vec<String>) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = trail.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle = trail[start..].to_vec();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name.to_owned(), Mark::Visiting);
        trail.push(name.to_owned());
        for dependency in stack.services.get(name).map(|s| s.depends_on.keys()).into_iter().flatten() {
            if let Some(cycle) = visit(stack, dependency, marks, trail) {
                return Some(cycle);
            }
        }
        trail.pop();
        marks.insert(name.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    stack.services.keys().find_map(|name| visit(stack, name, &mut marks, &mut Vec::new()))
}

/// Services in an order where each comes after those it depends on (ties by name).
pub fn start_order(stack: &StackSpec) -> Vec<String> {
    let mut placed: Vec<String> = Vec::new();
    while placed.len() < stack.services.len() {
        let before = placed.len();
        for (name, service) in &stack.services {
            if !placed.contains(name) && service.depends_on.keys().all(|d| placed.contains(d) || !stack.services.contains_key(d)) {
                placed.push(name.clone());
            }
        }
        if placed.len() == before {
            // A cycle (refused by `parse`): the rest in name order.
            placed.extend(stack.services.keys().filter(|n| !placed.contains(n)).cloned().collect::<Vec<_>>());
        }
    }
    placed
}

/// The 1-based line of the key at `path` (`services`, `web`, `ports`): each key is looked
/// for after the previous one, as a block mapping key (`key:` at a line's start) or a
/// quoted JSON/flow key (`"key":`). A key that is not there (a missing one) gives the
/// line of the deepest key found; `None` when not even the first is there.
pub fn locate(source: &str, path: &[&str]) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    for key in path {
        let Some(at) = find_key(source, from, key) else { break };
        found = Some(at);
        from = at + key.len();
    }
    found.map(|offset| source[..offset].matches('\n').count() + 1)
}

fn find_key(source: &str, from: usize, key: &str) -> Option<usize> {
    let mut start = from;
    while let Some(relative) = source.get(start..)?.find(key) {
        let at = start + relative;
        let before = source[..at].chars().next_back();
        let after = &source[at + key.len()..];
        let quoted = matches!(before, Some('"' | '\'')) && after.starts_with(before.unwrap_or('"'));
        let tail = if quoted { &after[1..] } else { after };
        let colon = tail.trim_start_matches([' ', '\t']).starts_with(':');
        let line_start =
            source[..at - usize::from(quoted)].chars().rev().take_while(|c| *c != '\n').all(|c| c == ' ' || c == '-' || c == '\t');
        let json_key = quoted && matches!(source[..at - 1].trim_end().chars().next_back(), Some('{' | ',') | None);
        if colon && (line_start || json_key) {
            return Some(at - usize::from(quoted));
        }
        start = at + key.len().max(1);
    }
    None
}

// ---------------------------------------------------------------------------------------
// Back to a compose document.

impl StackSpec {
    /// This spec as a compose document that [`parse`] reads back to the same spec (the
    /// CLI sends this after reading `env_file`s, so the server needs no files).
    pub fn to_compose(&self) -> ComposeFile {
        let escape = |text: &str| text.replace('$', "$$");
        let services = self
            .services
            .iter()
            .map(|(name, service)| {
                let c = &service.container;
                let networks: Vec<String> = service.networks.clone();
                let extra_aliases: Vec<String> =
                    service.aliases.iter().filter(|a| Some(*a) != service.container_name.as_ref()).cloned().collect();
                let networks = if extra_aliases.is_empty() {
                    if networks == ["default"] { None } else { Some(ServiceNetworks::List(networks)) }
                } else {
                    let mut map: BTreeMap<String, Option<ServiceNetwork>> = networks.into_iter().map(|n| (n, None)).collect();
                    if let Some(first) = map.values_mut().next() {
                        *first = Some(ServiceNetwork { aliases: Some(extra_aliases) });
                    }
                    Some(ServiceNetworks::Map(map))
                };
                let raw = ComposeService {
                    image: (!c.image.is_empty()).then(|| escape(&c.image)),
                    build: service.build.as_ref().map(|build| {
                        let mut map = serde_norway::Mapping::new();
                        map.insert("context".into(), escape(&build.context).into());
                        if let Some(dockerfile) = &build.dockerfile {
                            map.insert("dockerfile".into(), escape(dockerfile).into());
                        }
                        if !build.args.is_empty() {
                            let args: serde_norway::Mapping =
                                build.args.iter().map(|(k, v)| (k.as_str().into(), escape(v).into())).collect();
                            map.insert("args".into(), args.into());
                        }
                        serde_norway::Value::Mapping(map)
                    }),
                    command: (!c.command.is_empty()).then(|| StringOrList::List(c.command.iter().map(|w| escape(w)).collect())),
                    entrypoint: (!c.entrypoint.is_empty()).then(|| StringOrList::List(c.entrypoint.iter().map(|w| escape(w)).collect())),
                    container_name: service.container_name.clone(),
                    environment: (!c.env.is_empty())
                        .then(|| Environment::Map(c.env.iter().map(|(k, v)| (k.clone(), Some(Scalar::Text(escape(v))))).collect())),
                    ports: (!c.ports.is_empty()).then(|| {
                        c.ports
                            .iter()
                            .map(|p| {
                                PortEntry::Long(LongPort {
                                    target: p.container_port,
                                    published: (p.host_port != 0).then(|| Scalar::Int(i64::from(p.host_port))),
                                    protocol: Some(if p.protocol == Protocol::Udp { "udp" } else { "tcp" }.to_owned()),
                                })
                            })
                            .collect()
                    }),
                    volumes: (!c.mounts.is_empty()).then(|| {
                        c.mounts
                            .iter()
                            .map(|m| {
                                VolumeEntry::Long(LongVolume {
                                    kind: if m.is_bind() { "bind" } else { "volume" }.to_owned(),
                                    source: m.source.clone(),
                                    target: m.target.clone(),
                                    read_only: m.read_only,
                                })
                            })
                            .collect()
                    }),
                    tmpfs: (!c.tmpfs.is_empty()).then(|| StringOrList::List(c.tmpfs.clone())),
                    read_only: c.read_only.then_some(true),
                    // Compose files hold command checks only (HTTP and TCP probes come from the API).
                    healthcheck: c.healthcheck.as_ref().and_then(|h| {
                        Some(ComposeHealth {
                            test: Some(StringOrList::List(h.probe.test()?.iter().map(|w| escape(w)).collect())),
                            interval: Some(format!("{}us", h.interval.as_micros())),
                            timeout: Some(format!("{}us", h.timeout.as_micros())),
                            retries: Some(h.retries),
                            start_period: (!h.start_period.is_zero()).then(|| format!("{}us", h.start_period.as_micros())),
                            ..ComposeHealth::default()
                        })
                    }),
                    depends_on: (!service.depends_on.is_empty()).then(|| {
                        DependsOn::Map(
                            service
                                .depends_on
                                .iter()
                                .map(|(d, c)| (d.clone(), DependsEntry { condition: Some(c.as_str().to_owned()) }))
                                .collect(),
                        )
                    }),
                    deploy: Some(Deploy {
                        replicas: Some(service.replicas),
                        resources: (c.memory_bytes.is_some() || c.cpu_millis.is_some() || c.memory_reservation.is_some()).then(|| {
                            Resources {
                                limits: (c.memory_bytes.is_some() || c.cpu_millis.is_some()).then(|| ResourceSet {
                                    cpus: c.cpu_millis.map(|m| Scalar::Text(format!("{}.{:03}", m / 1000, m % 1000))),
                                    memory: c.memory_bytes.map(|b| Scalar::Text(b.to_string())),
                                }),
                                reservations: c
                                    .memory_reservation
                                    .map(|b| ResourceSet { cpus: None, memory: Some(Scalar::Text(b.to_string())) }),
                            }
                        }),
                    }),
                    restart: (c.restart_policy != RestartPolicy::No).then(|| c.restart_policy.to_string()),
                    networks,
                    ..ComposeService::default()
                };
                (name.clone(), raw)
            })
            .collect();
        ComposeFile {
            version: None,
            services,
            volumes: self.volumes.iter().map(|v| (v.clone(), None)).collect(),
            networks: self.networks.iter().map(|n| (n.clone(), None)).collect(),
        }
    }

    /// [`StackSpec::to_compose`] as YAML text.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(&self.to_compose()).unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "compose_tests.rs"]
mod tests;
