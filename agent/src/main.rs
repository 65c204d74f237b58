//! `diplo-agent`: joins a Diplo cluster and keeps a session with its control plane.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "diplo-agent", version, about = "Diplo node agent")]
struct Cli {
    /// Control plane gRPC address, HOST:PORT.
    #[arg(long, env = "DIPLO_SERVER")]
    server: String,
    /// Join token from `diplo join-token create` (needed on first start only).
    #[arg(long, env = "DIPLO_TOKEN")]
    token: Option<String>,
    /// Node name (default: the host name).
    #[arg(long, env = "DIPLO_NODE_NAME")]
    name: Option<String>,
    /// Where the node identity is kept.
    #[arg(long, env = "DIPLO_AGENT_DATA_DIR", default_value = "/var/lib/diplo/agent")]
    data_dir: PathBuf,
    /// A host directory whose contents containers may bind-mount (repeatable; none by
    /// default). Absolute, without `..`; symbolic links are resolved before the check.
    #[arg(long = "allow-host-path", value_name = "DIR", env = "DIPLO_ALLOW_HOST_PATHS", value_delimiter = ',')]
    allow_host_path: Vec<PathBuf>,
    /// Where builds clone and build (default: `<data dir>/builds`); each build gets a
    /// fresh directory inside, removed when it ends.
    #[arg(long, value_name = "DIR", env = "DIPLO_BUILD_DIR")]
    build_dir: Option<PathBuf>,
    /// A directory whose git repositories may be built from as `file://` URLs
    /// (repeatable; none by default). Symbolic links are resolved before the check.
    #[arg(long = "build-file-repos", value_name = "DIR", env = "DIPLO_BUILD_FILE_REPOS", value_delimiter = ':')]
    build_file_repos: Vec<PathBuf>,
    /// Report this CPU architecture instead of the detected one, for a host whose
    /// detection is wrong (e.g. a 32-bit userland on a 64-bit kernel): Go/OCI spelling
    /// (`amd64`, `arm64`, `arm`; `x86_64` and `aarch64` are read as such). Placement
    /// uses it to match images to nodes.
    #[arg(long, value_name = "ARCH", env = "DIPLO_ARCH")]
    arch: Option<String>,
    /// Report this operating system instead of the detected one (e.g. `linux`).
    #[arg(long, value_name = "OS", env = "DIPLO_OS")]
    os: Option<String>,
}

impl Cli {
    /// The platform overrides, normalised; blank values count as not given.
    fn platform_overrides(&self) -> (Option<String>, Option<String>) {
        let given = |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        (given(&self.arch).map(|arch| diplo_agent::fingerprint::go_arch(&arch)), given(&self.os))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    diplo_api::install_crypto_provider();
    let telemetry = match diplo_api::telemetry::init("diplo-agent", "info,h2=warn,bollard=warn") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("diplo-agent: error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = agent_main().await;
    telemetry.shutdown().await;
    code
}

async fn agent_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (arch_override, os_override) = cli.platform_overrides();
    let name = cli.name.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_lowercase()).unwrap_or_else(|_| "node".into())
    });
    let host_paths = match diplo_agent::host_paths::HostPathPolicy::new(cli.allow_host_path) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("diplo-agent: error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let file_repos = match diplo_agent::build::git::FileRepos::new(cli.build_file_repos) {
        Ok(repos) => repos,
        Err(err) => {
            eprintln!("diplo-agent: error: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut config = diplo_agent::AgentConfig::new(cli.server, cli.token, name, cli.data_dir);
    config.host_paths = host_paths;
    config.build_dir = cli.build_dir;
    config.build_file_repos = file_repos;
    config.probe.arch_override = arch_override;
    config.probe.os_override = os_override;
    tokio::select! {
        result = diplo_agent::run(config) => {
            let err = result.err().map(|e| e.to_string()).unwrap_or_else(|| "stopped".into());
            eprintln!("diplo-agent: error: {err}");
            std::process::ExitCode::FAILURE
        }
        _ = tokio::signal::ctrl_c() => std::process::ExitCode::SUCCESS,
        _ = terminated() => std::process::ExitCode::SUCCESS,
    }
}

/// Resolves on SIGTERM (how systemd and the test harness stop the agent), so that the
/// spans still batched are exported before the process exits.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_allowed_one_flag_each() {
        let cli = Cli::try_parse_from(["diplo-agent", "--server", "cp:7443", "--allow-host-path", "/srv/a", "--allow-host-path", "/srv/b"])
            .expect("two allowed host paths");
        assert_eq!(cli.allow_host_path, vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        let cli = Cli::try_parse_from(["diplo-agent", "--server", "cp:7443"]).expect("no allowed host path");
        assert!(cli.allow_host_path.is_empty(), "nothing is allowed by default");
    }

    #[test]
    fn build_flags_parse() {
        let cli = Cli::try_parse_from([
            "diplo-agent",
            "--server",
            "cp:7443",
            "--build-dir",
            "/srv/builds",
            "--build-file-repos",
            "/srv/a",
            "--build-file-repos",
            "/srv/b",
        ])
        .expect("build flags");
        assert_eq!(cli.build_dir, Some(PathBuf::from("/srv/builds")));
        assert_eq!(cli.build_file_repos, vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        let cli = Cli::try_parse_from(["diplo-agent", "--server", "cp:7443"]).expect("no build flags");
        assert!(cli.build_file_repos.is_empty() && cli.build_dir.is_none());
    }

    #[test]
    fn the_platform_is_overridden_by_flags_only() {
        let cli = Cli::try_parse_from(["diplo-agent", "--server", "cp:7443", "--arch", "aarch64", "--os", "linux"]).expect("parse");
        assert_eq!(cli.platform_overrides(), (Some("arm64".to_owned()), Some("linux".to_owned())));
        let cli = Cli::try_parse_from(["diplo-agent", "--server", "cp:7443", "--arch", " "]).expect("parse");
        assert_eq!(cli.platform_overrides(), (None, None), "blank is not an override");
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        assert!(help.contains("--arch <ARCH>") && help.contains("--os <OS>"), "documented in --help: {help}");
    }
}
