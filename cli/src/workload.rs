//! The limits, hardening and health flags `diplo containers run` and `diplo deploy` share,
//! spelled as `docker run` spells them, and the `--env-file` reader.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use diplo_api::pb;

/// The most bytes an `--env-file` may hold.
pub const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

/// `docker run`'s limits, hardening, stop and health flags.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct WorkloadFlags {
    /// Memory limit (e.g. 256m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Memory guaranteed to the container, a soft limit (e.g. 128m).
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// CPU limit in cores (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most processes the container may run.
    #[arg(long)]
    pub pids_limit: Option<u32>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Mount a tmpfs: /path[:size=64m,mode=1777] (repeatable).
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Drop a capability, or ALL (repeatable).
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Add a capability, e.g. NET_ADMIN (repeatable).
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Security option: no-new-privileges[:true|false] (repeatable).
    #[arg(long)]
    pub security_opt: Vec<String>,
    /// User to run as: uid[:gid] or name[:group].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Program replacing the image's entrypoint (the command becomes its arguments).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Read environment variables from a file of KEY=VALUE lines (repeatable; --env wins).
    #[arg(long)]
    pub env_file: Vec<std::path::PathBuf>,
    /// Signal that stops the container (e.g. SIGINT; default SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long)]
    pub stop_timeout: Option<u32>,
    /// Health check command, run with /bin/sh -c inside the container.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks (e.g. 10s, 1m30s; default 30s).
    #[arg(long, requires = "health_cmd")]
    pub health_interval: Option<String>,
    /// Time a health check may take (default 30s).
    #[arg(long, requires = "health_cmd")]
    pub health_timeout: Option<String>,
    /// Consecutive failures before unhealthy (default 3).
    #[arg(long, requires = "health_cmd")]
    pub health_retries: Option<u32>,
    /// Time after a start during which failures do not count (default 0s).
    #[arg(long, requires = "health_cmd")]
    pub health_start_period: Option<String>,
}

fn duration(flag: &str, text: &str) -> Result<Duration> {
    diplo_api::health::parse_duration(text).map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `--security-opt` values ask for no-new-privileges; anything else is refused.
fn no_new_privileges(options: &[String]) -> Result<bool> {
    let mut wanted = false;
    for option in options {
        match option.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => wanted = true,
            "no-new-privileges:false" | "no-new-privileges=false" => wanted = false,
            other => bail!("--security-opt {other:?} is not supported: only no-new-privileges[:true|false]"),
        }
    }
    Ok(wanted)
}

impl WorkloadFlags {
    /// Sets the flags given on `spec` (the wire spec the CLI sends); `env` are the
    /// `--env` pairs, which win over `--env-file` entries.
    pub fn apply(&self, spec: &mut pb::ContainerSpec, env: HashMap<String, String>) -> Result<()> {
        let mut environment = HashMap::new();
        for file in &self.env_file {
            environment.extend(read_env_file(file)?);
        }
        environment.extend(env);
        spec.environment = environment;
        if let Some(memory) = &self.memory {
            spec.memory_bytes = diplo_api::container::parse_memory(memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
        }
        if let Some(memory) = &self.memory_reservation {
            spec.memory_reservation =
                diplo_api::container::parse_memory(memory).map_err(|e| anyhow::anyhow!("--memory-reservation: {e}"))?;
        }
        if let Some(cpus) = self.cpus {
            if !(0.001..=1024.0).contains(&cpus) {
                bail!("--cpus {cpus} is not between 0.001 and 1024");
            }
            spec.cpu_millis = (cpus * 1000.0).round() as u32;
        }
        spec.pids_limit = self.pids_limit.unwrap_or(0);
        spec.read_only = self.read_only;
        spec.tmpfs = self.tmpfs.clone();
        spec.cap_drop = self.cap_drop.clone();
        spec.cap_add = self.cap_add.clone();
        spec.no_new_privileges = no_new_privileges(&self.security_opt)?;
        spec.user = self.user.clone().unwrap_or_default();
        spec.working_dir = self.workdir.clone().unwrap_or_default();
        spec.entrypoint = self.entrypoint.iter().cloned().collect();
        spec.stop_signal = self.stop_signal.clone().unwrap_or_default();
        spec.stop_grace_seconds = self.stop_timeout;
        if let Some(command) = &self.health_cmd {
            let interval = self.health_interval.as_deref().map(|t| duration("--health-interval", t)).transpose()?;
            let timeout = self.health_timeout.as_deref().map(|t| duration("--health-timeout", t)).transpose()?;
            let start_period = self.health_start_period.as_deref().map(|t| duration("--health-start-period", t)).transpose()?;
            spec.healthcheck = Some(pb::HealthCheck {
                test: vec!["CMD-SHELL".to_owned(), command.clone()],
                kind: "cmd".to_owned(),
                interval_ms: millis(interval.unwrap_or(Duration::from_secs(30))),
                timeout_ms: millis(timeout.unwrap_or(Duration::from_secs(30))),
                retries: self.health_retries.unwrap_or(3),
                start_period_ms: start_period.map_or(0, millis),
                ..Default::default()
            });
        }
        Ok(())
    }
}

/// Reads an env file as `docker run --env-file` does: `KEY=VALUE` lines (the value is
/// taken as it is, quotes included), blank lines and `#` comments skipped, a bare `KEY`
/// taking the variable from the CLI's own environment (left out when unset). At most
/// [`MAX_ENV_FILE_BYTES`]; errors name the file and line.
pub fn read_env_file(path: &Path) -> Result<HashMap<String, String>> {
    let size = std::fs::metadata(path).with_context(|| format!("--env-file {}", path.display()))?.len();
    if size > MAX_ENV_FILE_BYTES {
        bail!("--env-file {}: {size} bytes is more than the maximum of {MAX_ENV_FILE_BYTES}", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("--env-file {}", path.display()))?;
    parse_env_file(&text).map_err(|(line, message)| anyhow::anyhow!("--env-file {} line {line}: {message}", path.display()))
}

/// The entries of an env file's text; an error carries the 1-based line and why.
pub fn parse_env_file(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut entries = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (key, value) = match trimmed.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (trimmed.trim_end(), std::env::var(trimmed.trim_end()).ok()),
        };
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err((index + 1, format!("{key:?} is not a variable name")));
        }
        if let Some(c) = value.as_deref().and_then(|v| v.chars().find(|c| c.is_control() && *c != '\t')) {
            return Err((index + 1, format!("the value of {key} holds the control character {c:?}")));
        }
        if let Some(value) = value {
            entries.insert(key.to_owned(), value);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_read_like_docker_run() {
        let text = "# comment\n\nA=1\n  B=two words\nC=\"quoted\"\nD=x=y\nDIPLO_SURELY_UNSET_VARIABLE\n";
        let entries = parse_env_file(text).expect("parses");
        let expected: HashMap<String, String> =
            [("A", "1"), ("B", "two words"), ("C", "\"quoted\""), ("D", "x=y")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        assert_eq!(entries, expected);
        assert_eq!(parse_env_file("A=1\n=x\n"), Err((2, "\"\" is not a variable name".to_owned())));
        assert_eq!(parse_env_file("A B=1").map_err(|e| e.0), Err(1));
        assert_eq!(parse_env_file("A=\u{1b}[2J").map_err(|e| e.0), Err(1));
    }

    #[test]
    fn flags_fill_the_wire_spec() {
        let flags = WorkloadFlags {
            memory: Some("256m".into()),
            memory_reservation: Some("128m".into()),
            cpus: Some(0.5),
            pids_limit: Some(100),
            read_only: true,
            tmpfs: vec!["/tmp:size=1m".into()],
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["NET_BIND_SERVICE".into()],
            security_opt: vec!["no-new-privileges".into()],
            user: Some("1000:1000".into()),
            workdir: Some("/srv".into()),
            entrypoint: Some("/bin/sh".into()),
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(5),
            health_cmd: Some("wget -q -O- localhost".into()),
            health_interval: Some("10s".into()),
            health_start_period: Some("1m".into()),
            ..WorkloadFlags::default()
        };
        let mut spec = pb::ContainerSpec::default();
        flags.apply(&mut spec, [("A".to_owned(), "1".to_owned())].into()).expect("valid");
        assert_eq!((spec.memory_bytes, spec.memory_reservation, spec.cpu_millis, spec.pids_limit), (256 << 20, 128 << 20, 500, 100));
        assert!(spec.read_only && spec.no_new_privileges);
        assert_eq!((spec.user.as_str(), spec.working_dir.as_str(), spec.stop_signal.as_str()), ("1000:1000", "/srv", "SIGINT"));
        assert_eq!((spec.entrypoint.clone(), spec.stop_grace_seconds), (vec!["/bin/sh".to_owned()], Some(5)));
        let health = spec.healthcheck.clone().expect("health check");
        assert_eq!(health.test, ["CMD-SHELL", "wget -q -O- localhost"]);
        assert_eq!((health.interval_ms, health.timeout_ms, health.retries, health.start_period_ms), (10_000, 30_000, 3, 60_000));
        assert_eq!(spec.environment.get("A").map(String::as_str), Some("1"));
        // The wire spec converts to a valid domain spec.
        let domain = diplo_api::container::ContainerSpec::try_from(pb::ContainerSpec { image: "busybox".into(), ..spec.clone() });
        assert_eq!(domain.map(|d| d.check_options()), Ok(Ok(())));

        for (flags, flag) in [
            (WorkloadFlags { memory: Some("lots".into()), ..WorkloadFlags::default() }, "--memory"),
            (WorkloadFlags { cpus: Some(0.0), ..WorkloadFlags::default() }, "--cpus"),
            (WorkloadFlags { security_opt: vec!["seccomp=unconfined".into()], ..WorkloadFlags::default() }, "--security-opt"),
            (
                WorkloadFlags { health_cmd: Some("true".into()), health_interval: Some("soon".into()), ..WorkloadFlags::default() },
                "--health-interval",
            ),
            (WorkloadFlags { env_file: vec!["/nonexistent/diplo.env".into()], ..WorkloadFlags::default() }, "--env-file"),
        ] {
            let error = flags.apply(&mut pb::ContainerSpec::default(), HashMap::new()).expect_err(flag).to_string();
            assert!(error.contains(flag), "{flag}: {error}");
        }
    }

    #[test]
    fn env_files_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.env");
        std::fs::write(&big, "A=".to_owned() + &"x".repeat(usize::try_from(MAX_ENV_FILE_BYTES).unwrap_or(0))).expect("write");
        let error = read_env_file(&big).expect_err("too big").to_string();
        assert!(error.contains("maximum"), "{error}");
        let good = dir.path().join("good.env");
        std::fs::write(&good, "A=1\n").expect("write");
        assert_eq!(read_env_file(&good).expect("reads").get("A").map(String::as_str), Some("1"));
    }
}
