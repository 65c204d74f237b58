//! The limits and hardening options of a [`ContainerSpec`]: the one check every spec
//! passes before it reaches a driver (control plane and agent alike), and the
//! normalised forms drivers use (capability and signal names, the user).

use crate::container::ContainerSpec;

/// Every Linux capability a container may be given or denied (kernel 6.x names).
pub const KNOWN_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// The capability bit of each name in [`KNOWN_CAPABILITIES`] (as in `CapEff`).
pub fn capability_bit(name: &str) -> Option<u32> {
    const BITS: &[(&str, u32)] = &[
        ("CAP_CHOWN", 0),
        ("CAP_DAC_OVERRIDE", 1),
        ("CAP_DAC_READ_SEARCH", 2),
        ("CAP_FOWNER", 3),
        ("CAP_FSETID", 4),
        ("CAP_KILL", 5),
        ("CAP_SETGID", 6),
        ("CAP_SETUID", 7),
        ("CAP_SETPCAP", 8),
        ("CAP_LINUX_IMMUTABLE", 9),
        ("CAP_NET_BIND_SERVICE", 10),
        ("CAP_NET_BROADCAST", 11),
        ("CAP_NET_ADMIN", 12),
        ("CAP_NET_RAW", 13),
        ("CAP_IPC_LOCK", 14),
        ("CAP_IPC_OWNER", 15),
        ("CAP_SYS_MODULE", 16),
        ("CAP_SYS_RAWIO", 17),
        ("CAP_SYS_CHROOT", 18),
        ("CAP_SYS_PTRACE", 19),
        ("CAP_SYS_PACCT", 20),
        ("CAP_SYS_ADMIN", 21),
        ("CAP_SYS_BOOT", 22),
        ("CAP_SYS_NICE", 23),
        ("CAP_SYS_RESOURCE", 24),
        ("CAP_SYS_TIME", 25),
        ("CAP_SYS_TTY_CONFIG", 26),
        ("CAP_MKNOD", 27),
        ("CAP_LEASE", 28),
        ("CAP_AUDIT_WRITE", 29),
        ("CAP_AUDIT_CONTROL", 30),
        ("CAP_SETFCAP", 31),
        ("CAP_MAC_OVERRIDE", 32),
        ("CAP_MAC_ADMIN", 33),
        ("CAP_SYSLOG", 34),
        ("CAP_WAKE_ALARM", 35),
        ("CAP_BLOCK_SUSPEND", 36),
        ("CAP_AUDIT_READ", 37),
        ("CAP_PERFMON", 38),
        ("CAP_BPF", 39),
        ("CAP_CHECKPOINT_RESTORE", 40),
    ];
    BITS.iter().find(|(n, _)| *n == name).map(|(_, bit)| *bit)
}

/// Signals a container may be stopped with, by name, with their Linux numbers.
pub const KNOWN_SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

/// The most entries in `cap_add`, `cap_drop`, `tmpfs` or `entrypoint`.
pub const MAX_LIST_ENTRIES: usize = 64;
/// The most bytes of one entrypoint argument, the user or the working directory.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest stop grace period, seconds.
pub const MAX_STOP_GRACE_SECONDS: u32 = 3600;
/// The smallest memory limit or reservation every runtime accepts (6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The largest pids limit (the kernel's `pid_max` ceiling).
pub const MAX_PIDS_LIMIT: u32 = 4_194_304;

/// A capability name normalised: `CAP_NET_RAW` for `net_raw`, `NET_RAW` or `cap_net_raw`;
/// `ALL` for `all`. Unknown names are refused.
pub fn normalize_capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    if KNOWN_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(format!("{name:?} is not a known capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)"))
    }
}

/// A signal name normalised with its number: `SIGINT` for `int`, `INT`, `sigint`.
/// Unknown names are refused.
pub fn normalize_signal(name: &str) -> Result<(&'static str, i32), String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    KNOWN_SIGNALS
        .iter()
        .find(|(known, _)| *known == full)
        .copied()
        .ok_or_else(|| format!("{name:?} is not a known signal name (e.g. SIGTERM, SIGINT, QUIT)"))
}

/// The stop signal of `spec`: its `stop_signal`, `SIGTERM` when empty.
pub fn stop_signal(spec: &ContainerSpec) -> Result<(&'static str, i32), String> {
    if spec.stop_signal.trim().is_empty() { Ok(("SIGTERM", 15)) } else { normalize_signal(&spec.stop_signal) }
}

/// One side of a `user` value: a numeric id or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPart {
    /// A numeric uid or gid.
    Id(u32),
    /// A user or group name, resolved in the image's /etc/passwd or /etc/group.
    Name(String),
}

/// A parsed `user`: `uid[:gid]` or `name[:group]` (either side numeric or a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The user.
    pub user: UserPart,
    /// The group, when given.
    pub group: Option<UserPart>,
}

fn user_part(text: &str) -> Result<UserPart, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(UserPart::Id).map_err(|_| format!("{text:?} is not a valid id (0-4294967295)"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if text.is_empty() || text.len() > 32 || !text.chars().all(ok) || !text.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{text:?} must be a numeric id or a name of 1-32 letters, digits, '_', '.' or '-'"));
    }
    Ok(UserPart::Name(text.to_owned()))
}

/// Parses a `user` value (`1000`, `1000:1000`, `nobody`, `app:staff`).
pub fn parse_user(text: &str) -> Result<UserSpec, String> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    Ok(UserSpec { user: user_part(user)?, group: group.map(user_part).transpose()? })
}

/// The capabilities a container gets unless its spec says otherwise: Docker's default
/// set, given on every runtime that honours `cap_add`/`cap_drop`.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capability set of a container: [`DEFAULT_CAPABILITIES`] without `cap_drop`
/// (`ALL` drops every one), then with `cap_add` (`ALL` adds every known one), as
/// `docker run --cap-drop/--cap-add` combine them. Unknown names are refused.
pub fn effective_capabilities(cap_drop: &[String], cap_add: &[String]) -> Result<Vec<&'static str>, String> {
    let drop = cap_drop.iter().map(|c| normalize_capability(c)).collect::<Result<Vec<_>, _>>()?;
    let add = cap_add.iter().map(|c| normalize_capability(c)).collect::<Result<Vec<_>, _>>()?;
    let mut caps: Vec<&'static str> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES.iter().copied().filter(|c| !drop.iter().any(|d| d == c)).collect()
    };
    for name in &add {
        let more: Vec<&'static str> =
            if name == "ALL" { KNOWN_CAPABILITIES.to_vec() } else { KNOWN_CAPABILITIES.iter().copied().filter(|c| c == name).collect() };
        for cap in more {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
    }
    Ok(caps)
}

/// The argv a container runs, by `docker run`'s rules: a spec `entrypoint` replaces the
/// image's Entrypoint and Cmd (followed by the spec's `command`); otherwise the image's
/// Entrypoint followed by the spec's `command`, or by the image's Cmd when the spec has none.
pub fn process_argv(spec: &ContainerSpec, image_entrypoint: &[String], image_cmd: &[String]) -> Vec<String> {
    if !spec.entrypoint.is_empty() {
        return spec.entrypoint.iter().chain(&spec.command).cloned().collect();
    }
    let rest = if spec.command.is_empty() { image_cmd } else { &spec.command };
    image_entrypoint.iter().chain(rest).cloned().collect()
}

/// The mount options of a tmpfs entry (`PATH[:OPTIONS]`), normalised: sizes in bytes
/// (`size=67108864`), modes in octal, flags as given. Only for entries
/// [`ContainerSpec::check_options`] accepted (anything else is left out).
pub fn tmpfs_options(entry: &str) -> Vec<String> {
    let (_, options) = split_tmpfs(entry);
    options
        .split(',')
        .filter(|o| !o.is_empty())
        .filter_map(|option| match option.split_once('=') {
            Some(("size", size)) => crate::container::parse_memory(size).ok().map(|bytes| format!("size={bytes}")),
            Some(("mode", mode)) if !mode.is_empty() && mode.len() <= 4 && mode.chars().all(|c| ('0'..='7').contains(&c)) => {
                Some(format!("mode={mode}"))
            }
            None if matches!(option, "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" | "ro" | "rw") => Some(option.to_owned()),
            _ => None,
        })
        .collect()
}

/// A spec field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct OptionError {
    /// The spec's field at fault (`cap_add`, `user`, ...).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> OptionError {
    OptionError { field, message: message.into() }
}

fn check_text(field: &'static str, text: &str) -> Result<(), OptionError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(refuse(field, format!("at most {MAX_TEXT_BYTES} bytes")));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(refuse(field, format!("{text:?} holds the control character {c:?}")));
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize) -> Result<(), OptionError> {
    if count > MAX_LIST_ENTRIES {
        return Err(refuse(field, format!("at most {MAX_LIST_ENTRIES} entries")));
    }
    Ok(())
}

fn check_absolute(field: &'static str, path: &str) -> Result<(), OptionError> {
    check_text(field, path)?;
    if !path.starts_with('/') {
        return Err(refuse(field, format!("{path:?} must be an absolute path")));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(refuse(field, format!("{path:?} must not contain ..")));
    }
    Ok(())
}

/// A tmpfs entry: `PATH` or `PATH:OPTIONS` (`/run:size=64m,mode=1777`), as `docker run
/// --tmpfs` spells it. Returns the path and the options (empty when none).
pub fn split_tmpfs(entry: &str) -> (&str, &str) {
    entry.split_once(':').unwrap_or((entry, ""))
}

/// Checks tmpfs options: comma separated `size=N[k|m|g]`, `mode=OCTAL`, `noexec`, `exec`,
/// `nosuid`, `nodev`, `ro`, `rw`.
fn check_tmpfs_options(options: &str) -> Result<(), String> {
    if options.is_empty() {
        return Ok(());
    }
    for option in options.split(',') {
        match option.split_once('=') {
            Some(("size", size)) => {
                crate::container::parse_memory(size)?;
            }
            Some(("mode", mode)) => {
                if mode.is_empty() || mode.len() > 4 || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
                    return Err(format!("mode {mode:?} is not an octal mode like 1777"));
                }
            }
            None if matches!(option, "noexec" | "exec" | "nosuid" | "suid" | "nodev" | "dev" | "ro" | "rw") => {}
            _ => return Err(format!("{option:?} is not a tmpfs option (size=, mode=, noexec, nosuid, nodev, ro, rw)")),
        }
    }
    Ok(())
}

/// An extra hosts entry, `NAME:IP` as `docker run --add-host` spells it: a host name of
/// dot-separated DNS labels (letters, digits and inner hyphens, 1-63 characters each, 253
/// in all) and an IPv4 or IPv6 address. Returns the name and the address.
pub fn parse_extra_host(entry: &str) -> Result<(&str, std::net::IpAddr), String> {
    let (name, ip) = entry.split_once(':').ok_or_else(|| format!("{entry:?} is not NAME:IP"))?;
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{name:?} in {entry:?} is not a host name (DNS labels: letters, digits, inner hyphens)"));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip = ip.parse().map_err(|_| format!("{ip:?} in {entry:?} is not an IP address"))?;
    Ok((name, ip))
}

/// The `/etc/hosts` lines of a container's extra hosts entries (`IP<TAB>NAME`, one a line,
/// in order), refusing an entry that is not `NAME:IP` ([`parse_extra_host`]).
pub fn extra_hosts_lines(entries: &[String]) -> Result<String, OptionError> {
    let mut text = String::new();
    for entry in entries {
        let (name, ip) = parse_extra_host(entry).map_err(|message| refuse("extra_hosts", message))?;
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    Ok(text)
}

impl ContainerSpec {
    /// Checks the limits and hardening options: bounded counts and lengths, known
    /// capability and signal names, a `uid[:gid]` or `name[:group]` user, absolute paths,
    /// no control characters, sizes and limits in range. The error names the field.
    pub fn check_options(&self) -> Result<(), OptionError> {
        check_count("extra_hosts", self.extra_hosts.len())?;
        extra_hosts_lines(&self.extra_hosts)?;
        if let Some(bytes) = self.memory_bytes
            && bytes < MIN_MEMORY_BYTES
        {
            return Err(refuse("memory_bytes", format!("{bytes} bytes is below the minimum of 6 MiB")));
        }
        if let Some(bytes) = self.memory_reservation {
            if bytes < MIN_MEMORY_BYTES {
                return Err(refuse("memory_reservation", format!("{bytes} bytes is below the minimum of 6 MiB")));
            }
            if let Some(limit) = self.memory_bytes
                && bytes > limit
            {
                return Err(refuse("memory_reservation", format!("{bytes} bytes is above the memory limit of {limit} bytes")));
            }
        }
        if self.cpu_millis == Some(0) {
            return Err(refuse("cpu_millis", "must be positive"));
        }
        match self.pids_limit {
            Some(0) => return Err(refuse("pids_limit", "must be positive")),
            Some(limit) if limit > MAX_PIDS_LIMIT => return Err(refuse("pids_limit", format!("at most {MAX_PIDS_LIMIT}"))),
            _ => {}
        }
        check_count("tmpfs", self.tmpfs.len())?;
        for entry in &self.tmpfs {
            let (path, options) = split_tmpfs(entry);
            check_absolute("tmpfs", path)?;
            if path.trim_end_matches('/').is_empty() {
                return Err(refuse("tmpfs", "cannot mount a tmpfs over the root"));
            }
            check_tmpfs_options(options).map_err(|message| refuse("tmpfs", format!("{entry:?}: {message}")))?;
        }
        for (field, caps) in [("cap_drop", &self.cap_drop), ("cap_add", &self.cap_add)] {
            check_count(field, caps.len())?;
            for cap in caps {
                normalize_capability(cap).map_err(|message| refuse(field, message))?;
            }
        }
        if !self.user.is_empty() {
            check_text("user", &self.user)?;
            parse_user(&self.user).map_err(|message| refuse("user", message))?;
        }
        if !self.working_dir.is_empty() {
            check_absolute("working_dir", &self.working_dir)?;
            // The process's leaked descriptors (/proc/self/fd/N) would lead out of the container.
            if self.working_dir.split('/').find(|part| !part.is_empty() && *part != ".") == Some("proc") {
                return Err(refuse("working_dir", format!("{:?} lies under /proc", self.working_dir)));
            }
        }
        if !self.stop_signal.is_empty() {
            normalize_signal(&self.stop_signal).map_err(|message| refuse("stop_signal", message))?;
        }
        if let Some(grace) = self.stop_grace
            && grace > MAX_STOP_GRACE_SECONDS
        {
            return Err(refuse("stop_grace", format!("{grace} seconds is more than the maximum of {MAX_STOP_GRACE_SECONDS}")));
        }
        check_count("entrypoint", self.entrypoint.len())?;
        for arg in &self.entrypoint {
            check_text("entrypoint", arg)?;
        }
        if self.entrypoint.first().is_some_and(|program| program.trim().is_empty()) {
            return Err(refuse("entrypoint", "the program (first word) must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_hosts_are_host_names_with_addresses() {
        let good = [("web:10.89.0.7", "10.89.0.7\tweb\n"), ("db.internal:fd00::3", "fd00::3\tdb.internal\n"), ("x-1:[::1]", "::1\tx-1\n")];
        for (entry, line) in good {
            assert_eq!(extra_hosts_lines(&[entry.to_owned()]).as_deref(), Ok(line), "{entry}");
        }
        for bad in [
            "web",
            "web:",
            ":10.0.0.1",
            "-web:10.0.0.1",
            "we b:10.0.0.1",
            "web:10.0.0.256",
            "web:host",
            "a..b:10.0.0.1",
            "web\n1.2.3.4 evil:10.0.0.1",
        ] {
            let spec = ContainerSpec { extra_hosts: vec![bad.to_owned()], ..ContainerSpec::default() };
            let refusal = spec.check_options().expect_err(bad);
            assert_eq!(refusal.field, "extra_hosts", "{bad}");
        }
        let two = ContainerSpec { extra_hosts: vec!["web:10.0.0.2".into(), "www:10.0.0.2".into()], ..ContainerSpec::default() };
        assert_eq!(two.check_options(), Ok(()));
    }

    fn field(spec: ContainerSpec) -> &'static str {
        spec.check_options().expect_err("refused").field
    }

    #[test]
    fn defaults_pass_and_good_options_pass() {
        assert_eq!(ContainerSpec::default().check_options(), Ok(()));
        let good = ContainerSpec {
            memory_bytes: Some(256 << 20),
            memory_reservation: Some(128 << 20),
            cpu_millis: Some(500),
            pids_limit: Some(100),
            tmpfs: vec!["/tmp".into(), "/run:size=64m,mode=1777,noexec".into()],
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["net_bind_service".into(), "CAP_CHOWN".into()],
            user: "1000:1000".into(),
            working_dir: "/srv/app".into(),
            stop_signal: "int".into(),
            stop_grace: Some(30),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            ..ContainerSpec::default()
        };
        assert_eq!(good.check_options(), Ok(()));
    }

    #[test]
    fn bad_options_are_refused_naming_the_field() {
        let base = ContainerSpec::default;
        let cases: Vec<(ContainerSpec, &str)> = vec![
            (ContainerSpec { memory_bytes: Some(1024), ..base() }, "memory_bytes"),
            (ContainerSpec { memory_reservation: Some(1024), ..base() }, "memory_reservation"),
            (ContainerSpec { memory_bytes: Some(64 << 20), memory_reservation: Some(128 << 20), ..base() }, "memory_reservation"),
            (ContainerSpec { cpu_millis: Some(0), ..base() }, "cpu_millis"),
            (ContainerSpec { pids_limit: Some(0), ..base() }, "pids_limit"),
            (ContainerSpec { pids_limit: Some(MAX_PIDS_LIMIT + 1), ..base() }, "pids_limit"),
            (ContainerSpec { tmpfs: vec!["tmp".into()], ..base() }, "tmpfs"),
            (ContainerSpec { tmpfs: vec!["/".into()], ..base() }, "tmpfs"),
            (ContainerSpec { tmpfs: vec!["/a/../b".into()], ..base() }, "tmpfs"),
            (ContainerSpec { tmpfs: vec!["/tmp:size=lots".into()], ..base() }, "tmpfs"),
            (ContainerSpec { tmpfs: vec!["/tmp:uid=0\nlxc.x=1".into()], ..base() }, "tmpfs"),
            (ContainerSpec { tmpfs: vec!["/tmp".into(); MAX_LIST_ENTRIES + 1], ..base() }, "tmpfs"),
            (ContainerSpec { cap_drop: vec!["NET RAW".into()], ..base() }, "cap_drop"),
            (ContainerSpec { cap_add: vec!["SYS_EVERYTHING".into()], ..base() }, "cap_add"),
            (ContainerSpec { cap_add: vec!["CHOWN".into(); MAX_LIST_ENTRIES + 1], ..base() }, "cap_add"),
            (ContainerSpec { user: "root\nlxc.init.uid = 0".into(), ..base() }, "user"),
            (ContainerSpec { user: "-rf".into(), ..base() }, "user"),
            (ContainerSpec { user: "1000:".into(), ..base() }, "user"),
            (ContainerSpec { user: "99999999999".into(), ..base() }, "user"),
            (ContainerSpec { user: "a b".into(), ..base() }, "user"),
            (ContainerSpec { working_dir: "srv".into(), ..base() }, "working_dir"),
            (ContainerSpec { working_dir: "/srv\0".into(), ..base() }, "working_dir"),
            (ContainerSpec { working_dir: "/a/../../etc".into(), ..base() }, "working_dir"),
            (ContainerSpec { working_dir: "/proc/self/fd/7".into(), ..base() }, "working_dir"),
            (ContainerSpec { stop_signal: "SIGNOPE".into(), ..base() }, "stop_signal"),
            (ContainerSpec { stop_signal: "15".into(), ..base() }, "stop_signal"),
            (ContainerSpec { stop_grace: Some(MAX_STOP_GRACE_SECONDS + 1), ..base() }, "stop_grace"),
            (ContainerSpec { entrypoint: vec![String::new()], ..base() }, "entrypoint"),
            (ContainerSpec { entrypoint: vec!["/bin/sh".into(), "a\u{1b}b".into()], ..base() }, "entrypoint"),
            (ContainerSpec { entrypoint: vec!["x".repeat(MAX_TEXT_BYTES + 1)], ..base() }, "entrypoint"),
        ];
        for (spec, expected) in cases {
            assert_eq!(field(spec.clone()), expected, "{spec:?}");
        }
    }

    #[test]
    fn names_normalise() {
        assert_eq!(normalize_capability("net_raw").as_deref(), Ok("CAP_NET_RAW"));
        assert_eq!(normalize_capability(" Cap_Sys_Admin ").as_deref(), Ok("CAP_SYS_ADMIN"));
        assert_eq!(normalize_capability("all").as_deref(), Ok("ALL"));
        assert!(normalize_capability("cap_").is_err());
        assert_eq!(normalize_signal("int"), Ok(("SIGINT", 2)));
        assert_eq!(normalize_signal("SIGUSR1"), Ok(("SIGUSR1", 10)));
        assert!(normalize_signal("SIG").is_err());
        assert_eq!(stop_signal(&ContainerSpec::default()), Ok(("SIGTERM", 15)));
        for name in KNOWN_CAPABILITIES {
            assert!(capability_bit(name).is_some(), "{name}");
        }
        assert_eq!(parse_user("1000:50"), Ok(UserSpec { user: UserPart::Id(1000), group: Some(UserPart::Id(50)) }));
        assert_eq!(parse_user("nobody"), Ok(UserSpec { user: UserPart::Name("nobody".into()), group: None }));
        assert_eq!(split_tmpfs("/run:size=1m"), ("/run", "size=1m"));
        assert_eq!(split_tmpfs("/run"), ("/run", ""));
        assert_eq!(tmpfs_options("/run:size=1m,mode=700,noexec,evil=1"), vec!["size=1048576", "mode=700", "noexec"]);
        assert!(tmpfs_options("/run").is_empty());
    }

    #[test]
    fn capabilities_combine_as_docker_run_does() {
        let caps = |drop: &[&str], add: &[&str]| {
            effective_capabilities(
                &drop.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &add.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(caps(&[], &[]).unwrap(), DEFAULT_CAPABILITIES.to_vec());
        assert_eq!(caps(&["ALL"], &["net_bind_service"]).unwrap(), vec!["CAP_NET_BIND_SERVICE"]);
        let without_raw = caps(&["NET_RAW"], &["SYS_TIME"]).unwrap();
        assert!(!without_raw.contains(&"CAP_NET_RAW") && without_raw.contains(&"CAP_SYS_TIME") && without_raw.contains(&"CAP_CHOWN"));
        assert_eq!(caps(&["ALL"], &["ALL"]).unwrap().len(), KNOWN_CAPABILITIES.len());
        assert!(caps(&["bogus"], &[]).is_err());
    }

    #[test]
    fn every_runtime_honours_every_limit_and_hardening_option() {
        // The capability table refuses none of these on any runtime: each driver applies
        // them (the conformance suite checks them inside the containers).
        let spec = ContainerSpec {
            memory_bytes: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            cpu_millis: Some(500),
            pids_limit: Some(64),
            read_only: true,
            tmpfs: vec!["/scratch:size=1m".into()],
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["NET_BIND_SERVICE".into()],
            no_new_privileges: true,
            user: "1234:2345".into(),
            working_dir: "/home".into(),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            stop_signal: "SIGUSR1".into(),
            stop_grace: Some(1),
            ..ContainerSpec::default()
        };
        for runtime in crate::runtime::Runtime::ALL {
            assert_eq!(runtime.check_spec(&spec), Ok(()), "{runtime}");
        }
    }

    #[test]
    fn argv_follows_docker_run() {
        let image_entry = vec!["/entry".to_owned()];
        let image_cmd = vec!["serve".to_owned()];
        let spec = |entrypoint: &[&str], command: &[&str]| ContainerSpec {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..ContainerSpec::default()
        };
        assert_eq!(process_argv(&spec(&[], &[]), &image_entry, &image_cmd), ["/entry", "serve"]);
        assert_eq!(process_argv(&spec(&[], &["run"]), &image_entry, &image_cmd), ["/entry", "run"]);
        assert_eq!(process_argv(&spec(&["/bin/sh", "-c"], &[]), &image_entry, &image_cmd), ["/bin/sh", "-c"]);
        assert_eq!(process_argv(&spec(&["/bin/sh", "-c"], &["echo hi"]), &image_entry, &image_cmd), ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(process_argv(&spec(&[], &["ls"]), &[], &image_cmd), ["ls"]);
    }
}
