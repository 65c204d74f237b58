//! Pure pieces of the LXC driver: spec validation, the config block appended to a
//! container's `config`, and parsers for what the LXC tools print.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use diplo_api::container::{ContainerSpec, Protocol, validate_container_name};
use diplo_api::registry::Reference;

use crate::runtime::{RuntimeError, RuntimeResult};

/// Marks the start of what the driver appends to a container's config.
pub(super) const BLOCK_MARKER: &str = "# --- managed by the Diplo agent (diplo-lxc) ---";

/// Which cgroup hierarchy the host runs; decides the `lxc.cgroup*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy or hybrid hierarchy: `lxc.cgroup.*` keys, per-controller directories.
    V1,
    /// Unified hierarchy: `lxc.cgroup2.*` keys.
    V2,
}

impl CgroupVersion {
    /// V2 when `<root>/cgroup.controllers` exists (a pure unified mount), else V1.
    pub fn detect(cgroup_root: &Path) -> Self {
        if cgroup_root.join("cgroup.controllers").exists() { CgroupVersion::V2 } else { CgroupVersion::V1 }
    }
}

/// The bridge network containers join, with the static range the driver allocates from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcNetwork {
    /// Host bridge (`lxcbr0`).
    pub bridge: String,
    /// The bridge's address, the containers' default gateway (`10.0.3.1`).
    pub gateway: Ipv4Addr,
    /// Prefix length of the bridge network (`24`).
    pub prefix: u8,
    /// First address handed out (`10.0.3.100`).
    pub first: Ipv4Addr,
    /// Last address handed out (`10.0.3.250`).
    pub last: Ipv4Addr,
}

impl Default for LxcNetwork {
    /// `lxc-net`'s defaults: `lxcbr0`, `10.0.3.1/24`; static addresses 10.0.3.100-250.
    fn default() -> Self {
        LxcNetwork {
            bridge: super::DEFAULT_BRIDGE.to_owned(),
            gateway: Ipv4Addr::new(10, 0, 3, 1),
            prefix: 24,
            first: Ipv4Addr::new(10, 0, 3, 100),
            last: Ipv4Addr::new(10, 0, 3, 250),
        }
    }
}

impl LxcNetwork {
    /// The first address of the range not in `used`, starting after `last` (the previous
    /// pick) and wrapping around: a freed address is handed out again as late as possible,
    /// when the host's neighbour cache has long forgotten its old MAC address.
    pub(super) fn pick(&self, used: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, end) = (u32::from(self.first), u32::from(self.last));
        let start = last.map(u32::from).filter(|l| (first..end).contains(l)).map_or(first, |l| l + 1);
        (start..=end).chain(first..start).map(Ipv4Addr::from).find(|ip| !used.contains(ip) && *ip != self.gateway)
    }
}

/// A mount as it goes into the config: host source, target relative to the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvedMount {
    /// The target as the spec gave it (for messages).
    pub requested: String,
    /// Host path (bind source or volume directory).
    pub source: PathBuf,
    /// Target relative to the rootfs, no leading `/`.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
    /// The source is a file (bind a file onto a file).
    pub is_file: bool,
}

/// Everything besides the spec that goes into the config block.
#[derive(Debug, Clone)]
pub(super) struct BlockInputs<'a> {
    pub cgroup: CgroupVersion,
    pub network: &'a LxcNetwork,
    pub ip: Ipv4Addr,
    pub console_log: &'a Path,
    pub mounts: &'a [ResolvedMount],
    /// tmpfs targets: as the spec gave them, and relative to the rootfs.
    pub tmpfs: &'a [(String, String)],
    /// What the image asks for.
    pub image: &'a ImageLines<'a>,
}

/// The image-derived part of the config (what LXC's `oci` template would write).
#[derive(Debug, Clone)]
pub(super) struct ImageLines<'a> {
    /// The container's root filesystem (a directory on the host).
    pub rootfs: &'a Path,
    /// Config files included before Diplo's lines (LXC's `common.conf`, `oci.common.conf`).
    pub includes: &'a [PathBuf],
    /// The image's `Env` entries (`NAME=value`).
    pub env: &'a [String],
    /// uid and gid of PID 1 (the image's `User`, resolved in the rootfs).
    pub uid: u32,
    pub gid: u32,
    /// PID 1's working directory (the image's `WorkingDir`, `/` when unset).
    pub cwd: &'a str,
}

/// A config value and what it may hold; checked by [`check_value`] before any line is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConfigValue<'a> {
    /// Fields joined by single spaces, each non-empty and free of whitespace, control
    /// characters, `#` and `\` (fstab escapes): the fields of an `lxc.mount.entry`, a
    /// path, a name, a number. No fields resets a list key (`lxc.net =`).
    Words(&'a [&'a str]),
    /// Free text read whole (an environment entry, a working directory): no control
    /// character but tab, no leading or trailing blank (LXC trims them).
    Text(&'a str),
}

/// Whether `value` can be written as it is (see [`ConfigValue`]); the reason when not.
pub(super) fn check_value(value: ConfigValue<'_>) -> Result<(), String> {
    match value {
        ConfigValue::Words(words) => {
            for word in words {
                check_fstab_word(word)?;
            }
        }
        ConfigValue::Text(text) => {
            if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
                return Err(format!("{text:?} holds the control character {c:?}, which an LXC config line cannot carry"));
            }
            if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
                return Err(format!("{text:?} starts or ends with a blank, which LXC would drop"));
            }
        }
    }
    Ok(())
}

/// The lines Diplo appends to a container's config. [`ConfigLines::push`] is the only
/// way a line gets in: its value is checked against its format first.
#[derive(Debug)]
pub(super) struct ConfigLines {
    text: String,
}

impl ConfigLines {
    /// An empty block, headed by [`BLOCK_MARKER`].
    pub(super) fn new() -> Self {
        ConfigLines { text: format!("\n{BLOCK_MARKER}\n") }
    }

    /// Appends `key = value` after checking the key (an `lxc.*` name) and the value
    /// (see [`check_value`]).
    pub(super) fn push(&mut self, key: &str, value: ConfigValue<'_>) -> Result<(), String> {
        let key_ok = key.starts_with("lxc.") && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_'));
        if !key_ok {
            return Err(format!("{key:?} is not an LXC config key"));
        }
        check_value(value).map_err(|reason| format!("{key}: {reason}"))?;
        let text = match value {
            ConfigValue::Words(words) => words.join(" "),
            ConfigValue::Text(text) => text.to_owned(),
        };
        if text.is_empty() {
            let _ = writeln!(self.text, "{key} =");
        } else {
            let _ = writeln!(self.text, "{key} = {text}");
        }
        Ok(())
    }

    /// [`Self::push`], blaming `field` of the spec (with `what` in the message) when the
    /// value does not fit.
    fn put(&mut self, field: &'static str, what: &str, key: &str, value: ConfigValue<'_>) -> RuntimeResult<()> {
        self.push(key, value).map_err(|reason| invalid(field, format!("{what}: {reason}")))
    }

    /// The block.
    pub(super) fn finish(self) -> String {
        self.text
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument { field, message: message.into() }
}

/// An image reference the tools may be given (`docker://REF` for skopeo): one word that
/// parses as a reference (see [`Reference::parse`]) with a registry host of letters,
/// digits, `.`, `-` and a port, never starting with `-`.
pub(super) fn check_reference(reference: &str) -> RuntimeResult<()> {
    if reference.trim().is_empty() {
        return Err(invalid("image", "an image reference is required"));
    }
    if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("image", format!("{reference:?} is not an image reference")));
    }
    // The parser admits only well-formed registry hosts and repository names, so nothing
    // that reaches skopeo can start with `-`.
    Reference::parse(reference).map_err(|message| invalid("image", message))?;
    if reference.starts_with('-') {
        return Err(invalid("image", format!("{reference:?} is not an image reference")));
    }
    Ok(())
}

/// Checks everything the LXC driver can check about `spec` before touching the host.
pub(super) fn validate(spec: &ContainerSpec) -> RuntimeResult<()> {
    validate_container_name(&spec.name).map_err(|message| invalid("name", message))?;
    check_reference(&spec.image)?;
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("env", format!("{key:?} is not a valid variable name")));
        }
        check_value(ConfigValue::Text(&format!("{key}={value}")))
            .map_err(|reason| invalid("env", format!("the value of {key}: {reason}")))?;
    }
    let mut seen = std::collections::HashSet::new();
    for port in &spec.ports {
        if port.host_port == 0 {
            return Err(invalid(
                "ports",
                format!("host port 0 (for container port {}): the LXC driver needs an explicit host port", port.container_port),
            ));
        }
        if port.container_port == 0 {
            return Err(invalid("ports", format!("container port 0 (for host port {})", port.host_port)));
        }
        if !seen.insert((port.host_port, port.protocol)) {
            return Err(invalid("ports", format!("host port {}/{} is published twice", port.host_port, protocol_name(port.protocol))));
        }
    }
    for mount in &spec.mounts {
        relative_target(&mount.target).map_err(|m| invalid("mounts", m))?;
        if mount.is_bind() {
            check_fstab_word(&mount.source).map_err(|m| invalid("mounts", m))?;
            if Path::new(&mount.source).components().any(|c| c == Component::ParentDir) {
                return Err(invalid("mounts", format!("bind source {:?} must not contain ..", mount.source)));
            }
        } else {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if mount.source.is_empty() || !mount.source.chars().all(ok) || !mount.source.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                return Err(invalid("mounts", format!("{:?} is neither an absolute host path nor a volume name", mount.source)));
            }
        }
    }
    if spec.memory_bytes == Some(0) {
        return Err(invalid("memory_bytes", "must be positive"));
    }
    spec.check_options().map_err(|refusal| invalid(refusal.field, refusal.message))?;
    for entry in &spec.tmpfs {
        relative_target(diplo_api::options::split_tmpfs(entry).0).map_err(|m| invalid("tmpfs", m))?;
    }
    capabilities(spec)?;
    if !spec.working_dir.is_empty() {
        check_value(ConfigValue::Text(&spec.working_dir)).map_err(|m| invalid("working_dir", m))?;
    }
    Ok(())
}

/// `tcp` / `udp`.
pub(super) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A word of an fstab line (and of any one-word config value): not empty, no whitespace,
/// no control character, no `#` (a comment) and no `\` (fstab's octal escapes).
fn check_fstab_word(word: &str) -> Result<(), String> {
    if word.is_empty() {
        return Err("an empty field".to_owned());
    }
    if let Some(c) = word.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | '\\')) {
        return Err(format!("{word:?} holds {c:?}, which an LXC config line cannot carry there"));
    }
    Ok(())
}

/// An absolute container path as a normalised path relative to the rootfs
/// (`/var/data/` → `var/data`). Rejects relative paths, `..`, `/` itself and paths
/// LXC's fstab-style mount entries cannot carry.
pub(super) fn relative_target(target: &str) -> Result<String, String> {
    check_fstab_word(target)?;
    if !target.starts_with('/') {
        return Err(format!("{target:?} must be an absolute path"));
    }
    let mut parts = Vec::new();
    for component in Path::new(target).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir | Component::Prefix(_) => return Err(format!("{target:?} must not contain ..")),
        }
    }
    if parts.is_empty() {
        return Err(format!("{target:?}: cannot mount over the root"));
    }
    Ok(parts.join("/"))
}

/// What `cap_drop` and `cap_add` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Capabilities {
    /// Nothing: LXC's defaults.
    Default,
    /// Exactly these (lower case, no `cap_` prefix, as LXC wants them); none when empty.
    Keep(Vec<String>),
}

/// The capability set `cap_drop` and `cap_add` give: Docker's default set with both
/// applied ([`diplo_api::options::effective_capabilities`]), so a container has the same
/// capabilities on LXC as on the other runtimes.
pub(super) fn capabilities(spec: &ContainerSpec) -> RuntimeResult<Capabilities> {
    if spec.cap_drop.is_empty() && spec.cap_add.is_empty() {
        return Ok(Capabilities::Default);
    }
    let caps = diplo_api::options::effective_capabilities(&spec.cap_drop, &spec.cap_add).map_err(|m| invalid("cap_add", m))?;
    Ok(Capabilities::Keep(caps.iter().map(|cap| cap.trim_start_matches("CAP_").to_ascii_lowercase()).collect()))
}

/// The block appended to the config `lxc-create -t none` wrote: the image's settings,
/// then the spec's. Later keys win (the network is reset with `lxc.net =` and defined
/// again). Every line goes through [`ConfigLines::push`].
pub(super) fn config_block(spec: &ContainerSpec, inputs: &BlockInputs<'_>) -> RuntimeResult<String> {
    use ConfigValue::{Text, Words};
    let mut out = ConfigLines::new();
    let image = inputs.image;
    let rootfs = image.rootfs.to_str().ok_or_else(|| invalid("name", format!("{} is not UTF-8", image.rootfs.display())))?;
    out.put("name", "root filesystem", "lxc.rootfs.path", Words(&[&format!("dir:{rootfs}")]))?;
    out.put("name", "console log", "lxc.console.logfile", Words(&[&inputs.console_log.to_string_lossy()]))?;
    out.put("name", "mounts", "lxc.mount.auto", Words(&["proc:mixed", "sys:mixed", "cgroup:mixed"]))?;
    for entry in image.env {
        // `lxc.environment = NAME` without a value would hand PID 1 the host's variable.
        let Some((name, _)) = entry.split_once('=').filter(|(name, _)| !name.is_empty() && !name.contains(char::is_whitespace)) else {
            return Err(invalid("image", format!("image {} Env entry {entry:?} is not NAME=value", spec.image)));
        };
        out.put("image", &format!("image {} Env {name}", spec.image), "lxc.environment", Text(entry))?;
    }
    for include in image.includes {
        out.put("name", "included config", "lxc.include", Words(&[&include.to_string_lossy()]))?;
    }
    out.put("name", "name", "lxc.uts.name", Words(&[&spec.name]))?;
    out.put("image", "uid", "lxc.init.uid", Words(&[&image.uid.to_string()]))?;
    out.put("image", "gid", "lxc.init.gid", Words(&[&image.gid.to_string()]))?;
    out.put("image", &format!("image {} WorkingDir", spec.image), "lxc.init.cwd", Text(image.cwd))?;
    // PID 1 gets its stop signal (SIGTERM unless `stop_signal` says otherwise) on
    // lxc-stop (LXC's default is SIGPWR, which an application ignores); lxc-stop -t GRACE
    // sends SIGKILL when it has not exited by then.
    let (signal, _) = diplo_api::options::stop_signal(spec).map_err(|m| invalid("stop_signal", m))?;
    out.put("stop_signal", "halt signal", "lxc.signal.halt", Words(&[signal]))?;
    let net = inputs.network;
    out.put("name", "network", "lxc.net", Words(&[]))?;
    out.put("name", "network", "lxc.net.0.type", Words(&["veth"]))?;
    out.put("name", "bridge", "lxc.net.0.link", Words(&[&net.bridge]))?;
    out.put("name", "network", "lxc.net.0.flags", Words(&["up"]))?;
    out.put("name", "network", "lxc.net.0.name", Words(&["eth0"]))?;
    out.put("name", "address", "lxc.net.0.ipv4.address", Words(&[&format!("{}/{}", inputs.ip, net.prefix)]))?;
    out.put("name", "gateway", "lxc.net.0.ipv4.gateway", Words(&[&net.gateway.to_string()]))?;
    for (key, value) in &spec.env {
        out.put("env", &format!("variable {key}"), "lxc.environment", Text(&format!("{key}={value}")))?;
    }
    if let Some(bytes) = spec.memory_bytes {
        match inputs.cgroup {
            CgroupVersion::V1 => out.put("memory_bytes", "limit", "lxc.cgroup.memory.limit_in_bytes", Words(&[&bytes.to_string()]))?,
            CgroupVersion::V2 => out.put("memory_bytes", "limit", "lxc.cgroup2.memory.max", Words(&[&bytes.to_string()]))?,
        }
    }
    if let Some(bytes) = spec.memory_reservation {
        match inputs.cgroup {
            CgroupVersion::V1 => {
                out.put("memory_reservation", "reservation", "lxc.cgroup.memory.soft_limit_in_bytes", Words(&[&bytes.to_string()]))?
            }
            CgroupVersion::V2 => out.put("memory_reservation", "reservation", "lxc.cgroup2.memory.low", Words(&[&bytes.to_string()]))?,
        }
    }
    if let Some(limit) = spec.pids_limit {
        match inputs.cgroup {
            CgroupVersion::V1 => out.put("pids_limit", "limit", "lxc.cgroup.pids.max", Words(&[&limit.to_string()]))?,
            CgroupVersion::V2 => out.put("pids_limit", "limit", "lxc.cgroup2.pids.max", Words(&[&limit.to_string()]))?,
        }
    }
    if let Some(millis) = spec.cpu_millis {
        let period: u64 = 100_000;
        let quota = (u64::from(millis) * period / 1000).max(1000);
        match inputs.cgroup {
            CgroupVersion::V1 => {
                out.put("cpu_millis", "period", "lxc.cgroup.cpu.cfs_period_us", Words(&[&period.to_string()]))?;
                out.put("cpu_millis", "quota", "lxc.cgroup.cpu.cfs_quota_us", Words(&[&quota.to_string()]))?;
            }
            CgroupVersion::V2 => {
                out.put("cpu_millis", "quota", "lxc.cgroup2.cpu.max", Words(&[&quota.to_string(), &period.to_string()]))?
            }
        }
    }
    if spec.read_only {
        out.put("read_only", "rootfs options", "lxc.rootfs.options", Words(&["ro"]))?;
    }
    for (requested, target) in inputs.tmpfs {
        let what = format!("tmpfs {requested} (resolved in the image to {:?})", format!("/{target}"));
        let mut options: Vec<String> = ["rw", "nosuid", "nodev", "mode=1777"].map(str::to_owned).to_vec();
        for option in diplo_api::options::tmpfs_options(requested) {
            let key = option.split('=').next().unwrap_or_default().to_owned();
            let opposite = match key.as_str() {
                "ro" => "rw",
                "suid" => "nosuid",
                "dev" => "nodev",
                _ => "",
            };
            options.retain(|o| o.split('=').next() != Some(key.as_str()) && o != opposite);
            options.push(option);
        }
        options.push("create=dir".to_owned());
        out.put("tmpfs", &what, "lxc.mount.entry", Words(&["tmpfs", target, "tmpfs", &options.join(","), "0", "0"]))?;
    }
    for mount in inputs.mounts {
        let source = mount.source.to_str().ok_or_else(|| invalid("mounts", format!("{} is not UTF-8", mount.source.display())))?;
        let create = if mount.is_file { "create=file" } else { "create=dir" };
        let ro = if mount.read_only { ",ro" } else { "" };
        let what = format!("mount {source} on {} (resolved in the image to {:?})", mount.requested, format!("/{}", mount.target));
        out.put("mounts", &what, "lxc.mount.entry", Words(&[source, &mount.target, "none", &format!("rbind,{create}{ro}"), "0", "0"]))?;
    }
    if let Capabilities::Keep(names) = capabilities(spec)? {
        // Keep and drop are exclusive; the included common.conf sets a drop list.
        out.put("cap_drop", "capabilities", "lxc.cap.drop", Words(&[]))?;
        let keep: Vec<&str> = if names.is_empty() { vec!["none"] } else { names.iter().map(String::as_str).collect() };
        out.put("cap_add", "capabilities", "lxc.cap.keep", Words(&keep))?;
    }
    if spec.no_new_privileges {
        out.put("no_new_privileges", "no_new_privs", "lxc.no_new_privs", Words(&["1"]))?;
    }
    Ok(out.finish())
}

/// Every `lxc.net.N.ipv4.address` (and pre-3.0 `lxc.network.ipv4`) in a config.
pub(super) fn config_ipv4_addresses(config: &str) -> Vec<Ipv4Addr> {
    config
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            let is_address = (key.starts_with("lxc.net.") && key.ends_with(".ipv4.address")) || key == "lxc.network.ipv4";
            if !is_address || line.trim_start().starts_with('#') {
                return None;
            }
            let value = value.trim();
            let address = value.split(['/', ' ']).next()?;
            address.parse().ok()
        })
        .collect()
}

/// The `PATH` PID 1 gets: the last `lxc.environment = PATH=...`, else the usual default.
pub(super) fn config_path_variable(config: &str) -> String {
    config
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == "lxc.environment")
        .filter_map(|(_, v)| v.trim().strip_prefix("PATH=").map(str::to_owned))
        .next_back()
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned())
}

/// What `lxc-info -s -p -i` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct InfoOutput {
    /// `RUNNING`, `STOPPED`, `FROZEN`, `STARTING`, `STOPPING`, `ABORTING`, ...
    pub state: String,
    /// Init's pid on the host.
    pub pid: Option<u32>,
    /// First IPv4 address.
    pub ip: Option<String>,
}

/// Parses `lxc-info` output (`State:  RUNNING`, `PID:  123`, `IP:  10.0.3.5`).
pub(super) fn parse_info(text: &str) -> InfoOutput {
    let mut info = InfoOutput::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key.trim() {
            "State" => info.state = value.to_owned(),
            "PID" => info.pid = value.parse().ok(),
            "IP" if info.ip.is_none() && value.parse::<Ipv4Addr>().is_ok() => info.ip = Some(value.to_owned()),
            _ => {}
        }
    }
    info
}

/// The exit code of the last run, from the log `lxc-start -o FILE -l INFO` wrote:
/// `Child <pid> ended on error (N)` → N, `... ended on signal Killed(9)` → 128 + 9, a
/// logged `Container init process ... exited` without either → 0. `None` when the log
/// says nothing about an exit.
pub(super) fn parse_exit_code(log: &str) -> Option<i64> {
    let mut code = None;
    for line in log.lines() {
        if let Some(at) = line.find("ended on error (") {
            let rest = &line[at + "ended on error (".len()..];
            if let Some(n) = rest.split(')').next().and_then(|n| n.trim().parse::<i64>().ok()) {
                code = Some(n);
            }
        } else if let Some(at) = line.find("ended on signal") {
            let rest = &line[at..];
            let number = rest.rsplit_once('(').and_then(|(_, tail)| tail.split(')').next()).and_then(|n| n.trim().parse::<i64>().ok());
            if let Some(n) = number {
                code = Some(128 + n);
            }
        } else if line.contains("Container init process") && line.contains("exited") && code.is_none() {
            code = Some(0);
        }
    }
    code
}

/// The most telling `ERROR` message of an lxc-start log (`Failed to exec "/x"` rather than
/// the generic "The container failed to start").
pub(super) fn start_error(log: &str) -> Option<String> {
    let messages: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .map(|line| line.split_once(" - ").map_or(line, |(_, rest)| rest.split_once(" - ").map_or(rest, |(_, m)| m)).trim())
        .collect();
    let generic = |m: &&str| {
        m.contains("sync_wait")
            || m.contains("An error occurred in another process")
            || m.contains("failed to start")
            || m.contains("Received container state")
            || m.contains("To get more details")
            || m.contains("Additional information")
            || m.contains("Failed to spawn container")
    };
    messages.iter().find(|m| !generic(m)).or_else(|| messages.first()).map(|m| (*m).to_owned())
}

/// The last meaningful line of an LXC tool's stderr, without the
/// `lxc-start: NAME: file.c: func: 123 ` prefix.
pub(super) fn tool_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    // "lxc-start: c1: ../src/lxc/tools/lxc_start.c: main: 306 The container failed to start"
    let parts: Vec<&str> = line.splitn(5, ": ").collect();
    if parts.len() == 5 && parts[2].ends_with(".c") {
        let message = parts[4];
        return message.split_once(' ').filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit())).map_or(message, |(_, m)| m).to_owned();
    }
    line.to_owned()
}

/// Renders an argv for messages.
pub(super) fn show_argv(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            let _ = write!(out, "{arg:?}");
        } else {
            out.push_str(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::container::{Mount, PortMapping};

    fn spec() -> ContainerSpec {
        ContainerSpec { name: "web".into(), image: "127.0.0.1:5000/diplo/busybox:latest".into(), ..ContainerSpec::default() }
    }

    fn field(result: RuntimeResult<()>) -> &'static str {
        match result {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn specs_are_validated() {
        assert!(validate(&spec()).is_ok());
        assert_eq!(field(validate(&ContainerSpec { name: "bad name".into(), ..spec() })), "name");
        assert_eq!(field(validate(&ContainerSpec { name: String::new(), ..spec() })), "name");
        assert_eq!(field(validate(&ContainerSpec { image: " ".into(), ..spec() })), "image");
        for bad in ["-x", "--help", "--src-creds=a:b", "a.b#c/x", "-a.b/x", "UPPER/case", "x\ny"] {
            assert_eq!(field(validate(&ContainerSpec { image: bad.into(), ..spec() })), "image", "{bad:?}");
        }
        for good in ["busybox", "127.0.0.1:5000/diplo/busybox:latest", "localhost/x:v1", "diplo-lxc/rootfs-a-1:v1"] {
            assert!(check_reference(good).is_ok(), "{good:?}");
        }
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert_eq!(field(validate(&s)), "env");
        let mut s = spec();
        s.env.insert("A".into(), "x\ny".into());
        assert_eq!(field(validate(&s)), "env");
        let port = PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp };
        let s = ContainerSpec { ports: vec![port, port], ..spec() };
        assert_eq!(field(validate(&s)), "ports");
        let s = ContainerSpec { ports: vec![PortMapping { host_port: 0, ..port }], ..spec() };
        assert_eq!(field(validate(&s)), "ports");
        let s = ContainerSpec { ports: vec![port, PortMapping { protocol: Protocol::Udp, ..port }], ..spec() };
        assert!(validate(&s).is_ok());
        let bad_mount = Mount { source: "/srv/x".into(), target: "data".into(), read_only: false };
        assert_eq!(field(validate(&ContainerSpec { mounts: vec![bad_mount], ..spec() })), "mounts");
        let bad_volume = Mount { source: "a/b".into(), target: "/data".into(), read_only: false };
        assert_eq!(field(validate(&ContainerSpec { mounts: vec![bad_volume], ..spec() })), "mounts");
        assert_eq!(field(validate(&ContainerSpec { tmpfs: vec!["/a/../b".into()], ..spec() })), "tmpfs");
        assert_eq!(field(validate(&ContainerSpec { tmpfs: vec!["/".into()], ..spec() })), "tmpfs");
        assert_eq!(field(validate(&ContainerSpec { cap_drop: vec!["NET RAW".into()], ..spec() })), "cap_drop");
        assert_eq!(field(validate(&ContainerSpec { memory_bytes: Some(0), ..spec() })), "memory_bytes");
        assert_eq!(field(validate(&ContainerSpec { cpu_millis: Some(0), ..spec() })), "cpu_millis");
        assert_eq!(field(validate(&ContainerSpec { user: "root\nlxc.init.uid = 0".into(), ..spec() })), "user");
        assert_eq!(field(validate(&ContainerSpec { working_dir: "/srv\nlxc.hook.start = /x".into(), ..spec() })), "working_dir");
        assert_eq!(field(validate(&ContainerSpec { stop_signal: "SIGTERM\nlxc.x = 1".into(), ..spec() })), "stop_signal");
        assert_eq!(field(validate(&ContainerSpec { tmpfs: vec!["/tmp:size=1m 0 0\nlxc.x".into()], ..spec() })), "tmpfs");
        assert_eq!(field(validate(&ContainerSpec { cap_add: vec!["sys_admin\nlxc.x".into()], ..spec() })), "cap_add");
    }

    #[test]
    fn targets_become_relative() {
        assert_eq!(relative_target("/var/data/").as_deref(), Ok("var/data"));
        assert_eq!(relative_target("/tmp").as_deref(), Ok("tmp"));
        assert!(relative_target("/a b").is_err());
        assert!(relative_target("tmp").is_err());
    }

    #[test]
    fn capability_names_are_normalised() {
        let with = |drop: &[&str], add: &[&str]| {
            capabilities(&ContainerSpec {
                cap_drop: drop.iter().map(|s| (*s).to_owned()).collect(),
                cap_add: add.iter().map(|s| (*s).to_owned()).collect(),
                ..spec()
            })
        };
        assert_eq!(with(&[], &[]).ok(), Some(Capabilities::Default));
        assert_eq!(with(&["all"], &[]).ok(), Some(Capabilities::Keep(vec![])));
        assert_eq!(
            with(&["ALL"], &["CAP_NET_BIND_SERVICE", "chown"]).ok(),
            Some(Capabilities::Keep(vec!["net_bind_service".into(), "chown".into()]))
        );
        let Ok(Capabilities::Keep(without_raw)) = with(&["CAP_NET_RAW", "net_raw"], &[]) else { panic!("a keep list") };
        assert!(!without_raw.contains(&"net_raw".to_owned()) && without_raw.contains(&"chown".to_owned()));
        assert_eq!(without_raw.len(), diplo_api::options::DEFAULT_CAPABILITIES.len() - 1);
    }

    #[test]
    fn config_block_carries_the_spec() {
        let mut s = spec();
        s.env.insert("GREETING".into(), "hello world".into());
        s.memory_bytes = Some(64 << 20);
        s.cpu_millis = Some(500);
        s.read_only = true;
        s.cap_drop = vec!["ALL".into()];
        s.no_new_privileges = true;
        let network = LxcNetwork::default();
        let mounts = [ResolvedMount {
            requested: "/data".into(),
            source: "/srv/data".into(),
            target: "data".into(),
            read_only: true,
            is_file: false,
        }];
        let tmpfs = [("/tmp".to_owned(), "tmp".to_owned())];
        let console = PathBuf::from("/var/lib/lxc/web/console.log");
        let rootfs = PathBuf::from("/var/lib/lxc/web/rootfs");
        let includes = [PathBuf::from("/usr/share/lxc/config/common.conf")];
        let env = ["PATH=/usr/bin:/bin".to_owned()];
        let image = ImageLines { rootfs: &rootfs, includes: &includes, env: &env, uid: 33, gid: 34, cwd: "/srv/app" };
        let inputs = BlockInputs {
            cgroup: CgroupVersion::V1,
            network: &network,
            ip: Ipv4Addr::new(10, 0, 3, 100),
            console_log: &console,
            mounts: &mounts,
            tmpfs: &tmpfs,
            image: &image,
        };
        let block = config_block(&s, &inputs).expect("block");
        for expected in [
            BLOCK_MARKER,
            "lxc.rootfs.path = dir:/var/lib/lxc/web/rootfs",
            "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed",
            "lxc.environment = PATH=/usr/bin:/bin",
            "lxc.include = /usr/share/lxc/config/common.conf",
            "lxc.uts.name = web",
            "lxc.init.uid = 33\nlxc.init.gid = 34\nlxc.init.cwd = /srv/app",
            "lxc.console.logfile = /var/lib/lxc/web/console.log",
            "lxc.signal.halt = SIGTERM",
            "lxc.net =\n",
            "lxc.net.0.link = lxcbr0",
            "lxc.net.0.ipv4.address = 10.0.3.100/24",
            "lxc.net.0.ipv4.gateway = 10.0.3.1",
            "lxc.environment = GREETING=hello world",
            "lxc.cgroup.memory.limit_in_bytes = 67108864",
            "lxc.cgroup.cpu.cfs_quota_us = 50000",
            "lxc.rootfs.options = ro",
            "lxc.mount.entry = tmpfs tmp tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
            "lxc.mount.entry = /srv/data data none rbind,create=dir,ro 0 0",
            "lxc.cap.drop =\nlxc.cap.keep = none",
            "lxc.no_new_privs = 1",
        ] {
            assert!(block.contains(expected), "{expected:?} missing from\n{block}");
        }
        let mut options = s.clone();
        options.cap_drop = vec!["ALL".into()];
        options.cap_add = vec!["NET_BIND_SERVICE".into()];
        options.pids_limit = Some(50);
        options.memory_reservation = Some(32 << 20);
        options.stop_signal = "int".into();
        let sized = [("/run:size=1m,noexec".to_owned(), "run".to_owned())];
        let v2_options =
            config_block(&options, &BlockInputs { cgroup: CgroupVersion::V2, tmpfs: &sized, ..inputs.clone() }).expect("block");
        for expected in [
            "lxc.cgroup2.pids.max = 50",
            "lxc.cgroup2.memory.low = 33554432",
            "lxc.signal.halt = SIGINT",
            "lxc.cap.drop =\nlxc.cap.keep = net_bind_service",
            "lxc.mount.entry = tmpfs run tmpfs rw,nosuid,nodev,mode=1777,size=1048576,noexec,create=dir 0 0",
        ] {
            assert!(v2_options.contains(expected), "{expected:?} missing from\n{v2_options}");
        }
        let v1_options = config_block(&options, &inputs).expect("block");
        assert!(v1_options.contains("lxc.cgroup.pids.max = 50") && v1_options.contains("lxc.cgroup.memory.soft_limit_in_bytes = 33554432"));
        let v2 = config_block(&s, &BlockInputs { cgroup: CgroupVersion::V2, ..inputs }).expect("block");
        assert!(v2.contains("lxc.cgroup2.memory.max = 67108864"), "{v2}");
        assert!(v2.contains("lxc.cgroup2.cpu.max = 50000 100000"), "{v2}");
        assert_eq!(config_ipv4_addresses(&block), vec![Ipv4Addr::new(10, 0, 3, 100)]);
        // Nothing but `key = value` lines under the marker.
        assert!(block.lines().skip(2).all(|l| l.starts_with("lxc.") && l.contains(" =")), "{block}");

        // A value that would break out of its line refuses the container, naming the path.
        let hostile = "x\nlxc.hook.pre-start = /bin/touch /tmp/pwned";
        let bad_tmpfs = [("/data".to_owned(), hostile.to_owned())];
        let error = config_block(&s, &BlockInputs { tmpfs: &bad_tmpfs, ..inputs.clone() }).expect_err("newline in a tmpfs target");
        match error {
            RuntimeError::InvalidArgument { field: "tmpfs", message } => {
                assert!(message.contains("tmpfs /data") && message.contains("\\n"), "{message}")
            }
            other => panic!("expected InvalidArgument tmpfs, got {other:?}"),
        }
        let bad_mounts = [ResolvedMount { target: "a b".into(), ..mounts[0].clone() }];
        assert!(matches!(
            config_block(&s, &BlockInputs { mounts: &bad_mounts, ..inputs.clone() }),
            Err(RuntimeError::InvalidArgument { field: "mounts", message }) if message.contains("on /data")
        ));
        let bad_env = ["A=1\nlxc.hook.start-host = /bin/true".to_owned()];
        let bad_image = ImageLines { env: &bad_env, ..image.clone() };
        assert!(matches!(
            config_block(&s, &BlockInputs { image: &bad_image, ..inputs.clone() }),
            Err(RuntimeError::InvalidArgument { field: "image", .. })
        ));
        let bad_image = ImageLines { cwd: "/\nlxc.hook.pre-start = /bin/true", ..image.clone() };
        assert!(matches!(
            config_block(&s, &BlockInputs { image: &bad_image, ..inputs.clone() }),
            Err(RuntimeError::InvalidArgument { field: "image", message }) if message.contains("WorkingDir")
        ));
        let mut hostile_env = spec();
        hostile_env.env.insert("A".into(), "1\rlxc.hook.pre-start = /bin/true".into());
        assert!(matches!(config_block(&hostile_env, &inputs), Err(RuntimeError::InvalidArgument { field: "env", .. })));
    }

    #[test]
    fn config_values_are_checked_against_their_format() {
        use ConfigValue::{Text, Words};
        let table: &[(ConfigValue<'_>, bool)] = &[
            (Words(&["/var/lib/lxc/web/rootfs"]), true),
            (Words(&["tmpfs", "tmp", "tmpfs", "rw,nosuid,nodev,mode=1777,create=dir", "0", "0"]), true),
            (Words(&["dir:/var/lib/lxc/web/rootfs"]), true),
            (Words(&["ü/ß"]), true),
            (Words(&[]), true),
            (Words(&[""]), false),
            (Words(&["a", ""]), false),
            (Words(&["x\nlxc.hook.pre-start = /bin/true"]), false),
            (Words(&["a b"]), false),
            (Words(&["a\rb"]), false),
            (Words(&["a\0b"]), false),
            (Words(&["a\tb"]), false),
            (Words(&[" a"]), false),
            (Words(&["a "]), false),
            (Words(&["a#b"]), false),
            (Words(&["a\\040b"]), false),
            (Words(&["a\u{85}b"]), false),
            (Words(&["a\u{2028}b"]), false),
            (Text("GREETING=hello world"), true),
            (Text("COLOR=#fff"), true),
            (Text("TABS=a\tb"), true),
            (Text("/srv/my app"), true),
            (Text(""), true),
            (Text("A=1\nlxc.hook.pre-start = /bin/true"), false),
            (Text("A=1\r"), false),
            (Text("A=\0"), false),
            (Text("A=\u{1b}[0m"), false),
            (Text(" A=1"), false),
            (Text("A=1 "), false),
        ];
        for (value, ok) in table {
            assert_eq!(check_value(*value).is_ok(), *ok, "{value:?}: {:?}", check_value(*value));
        }
        let mut lines = ConfigLines::new();
        assert!(lines.push("lxc.init.cwd", Text("/")).is_ok());
        assert!(lines.push("lxc.net", Words(&[])).is_ok());
        assert!(lines.push("lxc.mount.entry", Words(&["/a", "b", "none", "rbind", "0", "0"])).is_ok());
        assert!(lines.push("lxc.hook.pre-start = /bin/true\nlxc.x", Words(&["y"])).is_err());
        assert!(lines.push("not.lxc", Words(&["y"])).is_err());
        assert!(lines.push("lxc.init.cwd", Text("/\nlxc.hook.pre-start = /bin/true")).is_err());
        assert!(lines.push("lxc.mount.entry", Words(&["/a", "b\nlxc.hook.pre-start = /bin/true", "none"])).is_err());
        assert_eq!(lines.finish(), format!("\n{BLOCK_MARKER}\nlxc.init.cwd = /\nlxc.net =\nlxc.mount.entry = /a b none rbind 0 0\n"));
    }

    #[test]
    fn addresses_are_picked_from_the_range() {
        let network = LxcNetwork::default();
        let mut used = BTreeSet::new();
        let ip = |n| Ipv4Addr::new(10, 0, 3, n);
        assert_eq!(network.pick(&used, None), Some(ip(100)));
        used.insert(ip(100));
        assert_eq!(network.pick(&used, None), Some(ip(101)));
        // Round robin: after the last pick, wrapping around.
        assert_eq!(network.pick(&BTreeSet::new(), Some(ip(100))), Some(ip(101)));
        assert_eq!(network.pick(&BTreeSet::new(), Some(ip(250))), Some(ip(100)));
        assert_eq!(network.pick(&BTreeSet::from([ip(100)]), Some(ip(250))), Some(ip(101)));
        assert_eq!(network.pick(&BTreeSet::new(), Some(ip(7))), Some(ip(100)));
        let full: BTreeSet<_> = (100..=250).map(ip).collect();
        assert_eq!(network.pick(&full, Some(ip(120))), None);
        let config = "lxc.net.0.type = veth\n# lxc.net.0.ipv4.address = 10.0.3.9/24\nlxc.net.1.ipv4.address = 10.0.3.7/24\nlxc.network.ipv4 = 10.0.3.8/24 10.0.3.255\n";
        assert_eq!(config_ipv4_addresses(config), vec![Ipv4Addr::new(10, 0, 3, 7), Ipv4Addr::new(10, 0, 3, 8)]);
    }

    #[test]
    fn path_comes_from_the_config() {
        let config = "lxc.environment = PATH=/bin\nlxc.init.uid = 1000\nlxc.init.gid = 100\nlxc.environment = PATH=/usr/bin:/bin\n# lxc.environment = PATH=/x\n";
        assert_eq!(config_path_variable(config), "/usr/bin:/bin");
        assert!(config_path_variable("").contains("/usr/bin"));
    }

    #[test]
    fn lxc_info_is_parsed() {
        let info = parse_info(
            "Name:           c1\nState:          RUNNING\nPID:            7066\nIP:             fe80::1\nIP:             10.0.3.200\n",
        );
        assert_eq!(info, InfoOutput { state: "RUNNING".into(), pid: Some(7066), ip: Some("10.0.3.200".into()) });
        assert_eq!(parse_info("State:          STOPPED\n").pid, None);
    }

    #[test]
    fn exit_codes_come_from_the_start_log() {
        let error = "lxc-start c 2026 DEBUG    start - ../src/lxc/start.c:signal_handler:464 - Container init process 5903 exited\n\
                     lxc-start c 2026 INFO     error - ../src/lxc/error.c:lxc_error_set_and_log:31 - Child <5903> ended on error (2)\n";
        assert_eq!(parse_exit_code(error), Some(2));
        let killed =
            "lxc-start c 2026 INFO     error - ../src/lxc/error.c:lxc_error_set_and_log:34 - Child <10075> ended on signal Killed(9)\n";
        assert_eq!(parse_exit_code(killed), Some(137));
        assert_eq!(parse_exit_code("lxc-start c 2026 INFO start - x - Container init process 5 exited\n"), Some(0));
        assert_eq!(parse_exit_code("nothing\n"), None);
    }

    #[test]
    fn start_errors_are_found() {
        let log = "lxc-start c 1 ERROR    start - ../src/lxc/start.c:start:2197 - No such file or directory - Failed to exec \"/nonexistent\"\n\
                   lxc-start c 1 ERROR    sync - ../src/lxc/sync.c:sync_wait:34 - An error occurred in another process (expected sequence number 7)\n\
                   lxc-start c 1 ERROR    lxc_start - ../src/lxc/tools/lxc_start.c:main:306 - The container failed to start\n";
        assert_eq!(start_error(log).as_deref(), Some("No such file or directory - Failed to exec \"/nonexistent\""));
        assert_eq!(start_error("INFO only\n"), None);
        assert_eq!(
            tool_error(b"lxc-start: c1: ../src/lxc/tools/lxc_start.c: main: 306 The container failed to start\n"),
            "The container failed to start"
        );
        assert_eq!(tool_error(b"plain message\n\n"), "plain message");
    }
}
