//! Benchmark (not a test): container create+start latency through Diplo's runtime drivers,
//! side by side with each runtime's own CLI on the same image.
//!
//! ```text
//! cargo bench -p diplo-agent --bench create_start
//! ```
//!
//! For every runtime the agent's fingerprint finds available (Docker, Podman, containerd,
//! LXC), it warms up (`ensure_image`, then `BENCH_WARMUP` untimed rounds), then times
//! `BENCH_ITERATIONS` rounds of
//!
//! * **Diplo**: `driver.create(spec)` + `driver.start(id)`, until `start` returns;
//! * **CLI**: the runtime's own command on the same image: `docker run -d`,
//!   `podman run -d`, `ctr -n diplo run -d`, `lxc-create -t oci` + `lxc-start -d`.
//!
//! Both run `/bin/sleep 3600`, without ports; Docker and Podman are also measured with one
//! published port (`BENCH_PORTS=0` turns that off). Diplo and CLI rounds alternate (which
//! goes first flips every round) to cancel drift; every container is removed (untimed)
//! right after its round, and anything left when the run ends, fails, panics or is
//! interrupted (Ctrl-C) is removed too.
//!
//! Environment: `BENCH_ITERATIONS` (15), `BENCH_WARMUP` (2), `BENCH_IMAGE`
//! (`127.0.0.1:5000/diplo/busybox:latest`, already pushed to the registry),
//! `BENCH_RUNTIMES` (comma-separated subset, e.g. `docker,lxc`), `BENCH_PORTS` (1),
//! `BENCH_SETTLE_MS` (pause after each removal, 200). Must run as root.
//!
//! Prints machine information and a markdown table on stdout; progress goes to stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diplo_agent::fingerprint::{self, ProbeConfig};
use diplo_agent::port_publisher::PortPublisher;
use diplo_agent::runtime::containerd::ContainerdRuntime;
use diplo_agent::runtime::docker::DockerRuntime;
use diplo_agent::runtime::lxc::{DEFAULT_LXC_PATH, LxcRuntime};
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError, podman};
use diplo_api::container::{ContainerSpec, PortMapping, Protocol};
use diplo_api::fingerprint::Fingerprint;
use diplo_api::runtime::Runtime;

const DEFAULT_IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const COMMAND: [&str; 2] = ["/bin/sleep", "3600"];
/// Port inside the container for the published-port variant (nothing listens: only the
/// publishing is measured).
const CONTAINER_PORT: u16 = 8080;
/// containerd namespace of Diplo's driver, where it keeps its images.
const CTR_NAMESPACE: &str = "diplo";
/// Where the LXC driver reserves static addresses, under its LXC path.
const LXC_RESERVATIONS: &str = ".diplo-ip-reservations";
/// Limit of any single operation.
const OP_TIMEOUT: Duration = Duration::from_secs(180);

type BenchResult<T> = Result<T, String>;

/// What the environment asks for.
#[derive(Debug, Clone)]
struct Settings {
    iterations: usize,
    warmup: usize,
    image: String,
    ports: bool,
    settle: Duration,
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> BenchResult<Self> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
        }
        fn number(name: &str, default: usize) -> BenchResult<usize> {
            var(name).map_or(Ok(default), |v| v.parse().map_err(|_| format!("{name}={v:?} is not a number")))
        }
        let iterations = number("BENCH_ITERATIONS", 15)?;
        if iterations == 0 {
            return Err("BENCH_ITERATIONS must be at least 1".into());
        }
        Ok(Settings {
            iterations,
            warmup: number("BENCH_WARMUP", 2)?,
            image: var("BENCH_IMAGE").unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            ports: var("BENCH_PORTS").is_none_or(|v| v != "0" && v != "false"),
            settle: Duration::from_millis(u64::try_from(number("BENCH_SETTLE_MS", 200)?).unwrap_or(200)),
            only: var("BENCH_RUNTIMES").map(|v| v.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect()),
        })
    }

    fn wants(&self, runtime: Runtime) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|name| name == runtime.name()))
    }
}

/// The runtime's own command-line tool.
#[derive(Debug, Clone)]
enum Cli {
    Docker,
    Podman,
    Ctr,
    /// `lxc-create -t oci` from this OCI layout URL, then `lxc-start -d`, under `lxc_path`.
    Lxc {
        lxc_path: PathBuf,
        url: String,
    },
}

impl Cli {
    fn program(&self) -> &'static str {
        match self {
            Cli::Docker => "docker",
            Cli::Podman => "podman",
            Cli::Ctr => "ctr",
            Cli::Lxc { .. } => "lxc-create",
        }
    }

    /// The command lines of one create+start, in order.
    fn run_commands(&self, image: &str, name: &str, host_port: Option<u16>) -> Vec<Vec<OsString>> {
        let os = |items: &[&str]| items.iter().map(OsString::from).collect::<Vec<_>>();
        let publish = host_port.map(|port| format!("{port}:{CONTAINER_PORT}"));
        let with_port = |mut args: Vec<OsString>| {
            if let Some(publish) = &publish {
                args.push("-p".into());
                args.push(publish.into());
            }
            args
        };
        match self {
            Cli::Docker => {
                let mut args = with_port(os(&["docker", "run", "-d", "--name", name]));
                args.extend(os(&[image]).into_iter().chain(os(&COMMAND)));
                vec![args]
            }
            Cli::Podman => {
                let mut args = with_port(os(&["podman", "run", "-d", "--tls-verify=false", "--name", name]));
                args.extend(os(&[image]).into_iter().chain(os(&COMMAND)));
                vec![args]
            }
            Cli::Ctr => {
                let mut args = os(&["ctr", "-n", CTR_NAMESPACE, "run", "-d", image, name]);
                args.extend(os(&COMMAND));
                vec![args]
            }
            Cli::Lxc { lxc_path, url } => {
                let path = lxc_path.as_os_str().to_owned();
                let mut create = os(&["lxc-create", "-n", name, "-P"]);
                create.push(path.clone());
                create.extend(os(&["-t", "oci", "--", "--url", url]));
                let mut start = os(&["lxc-start", "-n", name, "-P"]);
                start.push(path);
                start.extend(os(&["-d", "--"]).into_iter().chain(os(&COMMAND)));
                vec![create, start]
            }
        }
    }

    /// The command lines that remove what `run_commands` created, in order. The first
    /// may fail when nothing runs.
    fn remove_commands(&self, name: &str) -> Vec<Vec<OsString>> {
        let os = |items: &[&str]| items.iter().map(OsString::from).collect::<Vec<_>>();
        match self {
            Cli::Docker => vec![os(&["docker", "rm", "-f", name])],
            Cli::Podman => vec![os(&["podman", "rm", "-f", "-t", "0", name])],
            Cli::Ctr => vec![
                os(&["ctr", "-n", CTR_NAMESPACE, "tasks", "delete", "-f", name]),
                os(&["ctr", "-n", CTR_NAMESPACE, "containers", "rm", name]),
            ],
            Cli::Lxc { lxc_path, .. } => {
                let mut destroy = os(&["lxc-destroy", "-f", "-n", name, "-P"]);
                destroy.push(lxc_path.as_os_str().to_owned());
                vec![destroy]
            }
        }
    }

    /// How the run command reads in the report.
    fn describe(&self, image: &str, ports: bool) -> String {
        let port = if ports { " -p H:8080" } else { "" };
        let command = COMMAND.join(" ");
        match self {
            Cli::Docker => format!("docker run -d --name N{port} {image} {command}"),
            Cli::Podman => format!("podman run -d --tls-verify=false --name N{port} {image} {command}"),
            Cli::Ctr => format!("ctr -n {CTR_NAMESPACE} run -d {image} N {command}"),
            Cli::Lxc { lxc_path, url } => {
                format!("lxc-create -n N -P {p} -t oci -- --url {url} && lxc-start -n N -P {p} -d -- {command}", p = lxc_path.display())
            }
        }
    }
}

/// Something the benchmark created and must remove.
#[derive(Clone)]
enum Owned {
    /// A container created through a Diplo driver, by name.
    Driver(Arc<dyn ContainerRuntime>, String),
    /// A container created with a CLI, by name.
    Cli(Cli, String),
}

impl Owned {
    fn name(&self) -> &str {
        match self {
            Owned::Driver(_, name) | Owned::Cli(_, name) => name,
        }
    }

    /// Removes it; what is already gone counts as removed.
    async fn remove(&self) -> BenchResult<()> {
        match self {
            Owned::Driver(driver, name) => match tokio::time::timeout(OP_TIMEOUT, driver.remove(name, true)).await {
                Err(_) => Err(format!("{} remove {name}: timed out", driver.runtime())),
                Ok(Ok(()) | Err(RuntimeError::NotFound { .. })) => Ok(()),
                Ok(Err(error)) => Err(format!("{} remove {name}: {error}", driver.runtime())),
            },
            Owned::Cli(cli, name) => {
                let commands = cli.remove_commands(name);
                let last = commands.len() - 1;
                for (index, argv) in commands.iter().enumerate() {
                    match run(argv).await {
                        Ok(()) => {}
                        Err(error) if index < last || looks_absent(&error) => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(())
            }
        }
    }

    /// The command to run by hand when removal failed.
    fn manual_hint(&self) -> String {
        match self {
            Owned::Driver(driver, name) => match driver.runtime() {
                Runtime::Docker => format!("docker rm -f {name}"),
                Runtime::Podman => format!("podman rm -f {name}"),
                Runtime::Containerd => format!("ctr -n {CTR_NAMESPACE} containers ls (container named {name} by label diplo.name)"),
                Runtime::Lxc => format!("lxc-destroy -f -n {name}"),
            },
            Owned::Cli(cli, name) => cli.remove_commands(name).iter().map(|argv| show(argv)).collect::<Vec<_>>().join(" ; "),
        }
    }
}

/// Whether a failed removal says the container was not there.
fn looks_absent(error: &str) -> bool {
    let error = error.to_lowercase();
    ["no such container", "not found", "does not exist", "no container"].iter().any(|m| error.contains(m))
}

/// What is created and not yet removed; emptied at the end whatever happens.
#[derive(Default, Clone)]
struct Ledger(Arc<Mutex<Vec<Owned>>>);

impl Ledger {
    fn add(&self, owned: Owned) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(owned);
    }

    fn forget(&self, name: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|o| o.name() != name);
    }

    /// Removes `owned` and forgets it.
    async fn remove(&self, owned: &Owned) -> BenchResult<()> {
        owned.remove().await?;
        self.forget(owned.name());
        Ok(())
    }

    /// Removes everything left; returns what could not be removed.
    async fn clean_up(&self) -> Vec<String> {
        let left: Vec<Owned> = std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut failures = Vec::new();
        for owned in left {
            eprintln!("cleaning up {}", owned.name());
            if let Err(error) = owned.remove().await {
                failures.push(format!("{error} (remove it with: {})", owned.manual_hint()));
            }
        }
        failures
    }
}

fn show(argv: &[OsString]) -> String {
    argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs `argv` to completion: stdout discarded, stderr kept for the error (in a file, not
/// a pipe, because daemonising tools such as `lxc-start -d` may pass it on to a process
/// that outlives them).
async fn run(argv: &[OsString]) -> BenchResult<()> {
    let Some((program, args)) = argv.split_first() else { return Err("empty command".into()) };
    let stderr = tempfile::tempfile().map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let mut reader = stderr.try_clone().map_err(|e| format!("cannot clone a file handle: {e}"))?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr)).kill_on_drop(true);
    let status = match tokio::time::timeout(OP_TIMEOUT, command.status()).await {
        Err(_) => return Err(format!("{}: did not finish within {OP_TIMEOUT:?}", show(argv))),
        Ok(Err(error)) => return Err(format!("{}: {error}", show(argv))),
        Ok(Ok(status)) => status,
    };
    if status.success() {
        return Ok(());
    }
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = reader.rewind().and_then(|()| reader.read_to_string(&mut text));
    Err(format!("{} failed ({status}): {}", show(argv), text.trim()))
}

/// Output of `argv`, or `None` when it fails.
fn output_of(argv: &[&str]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let output = std::process::Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A host port free right now.
fn free_port() -> BenchResult<u16> {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// One runtime: its driver and its CLI.
struct Target {
    runtime: Runtime,
    version: String,
    driver: Arc<dyn ContainerRuntime>,
    cli: Cli,
}

/// One row of the result table.
struct Row {
    label: String,
    cli_command: String,
    diplo: Vec<Duration>,
    /// The `create` part of each Diplo sample.
    diplo_create: Vec<Duration>,
    cli: Vec<Duration>,
    /// The first command of each two-command CLI sample (`lxc-create`).
    cli_create: Vec<Duration>,
}

/// One outcome per runtime variant: a row, or why it was skipped.
enum Outcome {
    Measured(Row),
    Skipped { label: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Diplo,
    Cli,
}

impl Side {
    fn tag(self) -> &'static str {
        match self {
            Side::Diplo => "d",
            Side::Cli => "c",
        }
    }
}

/// Directories the drivers keep state in; removed when dropped, after clean-up.
struct Scratch {
    containerd_state: tempfile::TempDir,
    lxc_images: tempfile::TempDir,
}

impl Scratch {
    fn new() -> BenchResult<Self> {
        let dir = |prefix: &str| {
            tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").map_err(|e| format!("cannot create a scratch directory: {e}"))
        };
        Ok(Scratch { containerd_state: dir("diplo-bench-containerd-")?, lxc_images: dir("diplo-bench-lxc-images-")? })
    }
}

/// The tag the LXC driver gives an image in its OCI layout cache.
fn layout_tag(layout: &Path) -> String {
    std::fs::read_to_string(layout.join("index.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|index| {
            index
                .pointer("/manifests/0/annotations/org.opencontainers.image.ref.name")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "latest".to_owned())
}

/// Connects the driver of `runtime` the way the agent does (`drivers.rs`), with scratch
/// state directories; `Err` says why it is skipped.
async fn connect(runtime: Runtime, probe: &ProbeConfig, scratch: &Scratch) -> BenchResult<(Arc<dyn ContainerRuntime>, Cli)> {
    let registry = RegistryConfig::default();
    let cli = match runtime {
        Runtime::Docker => Cli::Docker,
        Runtime::Podman => Cli::Podman,
        Runtime::Containerd => Cli::Ctr,
        Runtime::Lxc => Cli::Lxc { lxc_path: PathBuf::from(DEFAULT_LXC_PATH), url: String::new() },
    };
    if !on_path(cli.program()) {
        return Err(format!("`{}` is not on PATH", cli.program()));
    }
    let driver: Arc<dyn ContainerRuntime> = match runtime {
        Runtime::Docker => Arc::new(DockerRuntime::connect(&probe.docker_socket, registry, Runtime::Docker)),
        Runtime::Podman => Arc::new(podman::connect(&probe.podman_socket, registry)),
        Runtime::Containerd => Arc::new(
            ContainerdRuntime::connect(&probe.containerd_socket, registry, scratch.containerd_state.path().to_owned())
                .await
                .map_err(|e| format!("driver cannot connect: {e}"))?,
        ),
        Runtime::Lxc => Arc::new(LxcRuntime::new(
            PathBuf::from(DEFAULT_LXC_PATH),
            scratch.lxc_images.path().to_owned(),
            registry,
            Arc::new(PortPublisher::new()),
        )),
    };
    Ok((driver, cli))
}

/// One timed create+start.
struct Sample {
    total: Duration,
    /// How long `create` took (Diplo), or the first of two commands (`lxc-create`).
    create: Option<Duration>,
    owned: Owned,
}

/// Times one create+start of `side` under `name`; the container is in `ledger` until
/// removed.
async fn once(target: &Target, settings: &Settings, ledger: &Ledger, side: Side, name: &str, ports: bool) -> BenchResult<Sample> {
    let host_port = if ports { Some(free_port()?) } else { None };
    match side {
        Side::Diplo => {
            let spec = ContainerSpec {
                name: name.to_owned(),
                image: settings.image.clone(),
                command: COMMAND.iter().map(|s| (*s).to_owned()).collect(),
                ports: host_port
                    .map(|host_port| PortMapping { host_port, container_port: CONTAINER_PORT, protocol: Protocol::Tcp })
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            let owned = Owned::Driver(Arc::clone(&target.driver), name.to_owned());
            ledger.add(owned.clone());
            let driver = &target.driver;
            let started = Instant::now();
            let id = match tokio::time::timeout(OP_TIMEOUT, driver.create(&spec)).await {
                Err(_) => return Err(format!("{} create {name}: timed out", target.runtime)),
                Ok(Err(error)) => return Err(format!("{} create {name}: {error}", target.runtime)),
                Ok(Ok(id)) => id,
            };
            let create = started.elapsed();
            match tokio::time::timeout(OP_TIMEOUT, driver.start(&id)).await {
                Err(_) => return Err(format!("{} start {name}: timed out", target.runtime)),
                Ok(Err(error)) => return Err(format!("{} start {name}: {error}", target.runtime)),
                Ok(Ok(())) => {}
            }
            Ok(Sample { total: started.elapsed(), create: Some(create), owned })
        }
        Side::Cli => {
            let owned = Owned::Cli(target.cli.clone(), name.to_owned());
            ledger.add(owned.clone());
            let commands = target.cli.run_commands(&settings.image, name, host_port);
            let started = Instant::now();
            let mut create = None;
            for argv in &commands {
                run(argv).await?;
                if commands.len() == 2 && create.is_none() {
                    create = Some(started.elapsed());
                }
            }
            Ok(Sample { total: started.elapsed(), create, owned })
        }
    }
}

/// Warm-up and measured rounds of one variant (with or without a published port).
async fn measure(target: &Target, settings: &Settings, ledger: &Ledger, ports: bool) -> BenchResult<Row> {
    let label = if ports { format!("{} + 1 port", target.runtime) } else { target.runtime.to_string() };
    let mut row = Row {
        label: label.clone(),
        cli_command: target.cli.describe(&settings.image, ports),
        diplo: Vec::new(),
        diplo_create: Vec::new(),
        cli: Vec::new(),
        cli_create: Vec::new(),
    };
    let pid = std::process::id();
    let variant = if ports { "p" } else { "n" };
    let total = settings.warmup + settings.iterations;
    for round in 0..total {
        let measured = round >= settings.warmup;
        let order = if round % 2 == 0 { [Side::Diplo, Side::Cli] } else { [Side::Cli, Side::Diplo] };
        let mut line = Vec::new();
        for side in order {
            let name = format!("dbench-{pid}-{}-{variant}{}-{round}", target.runtime, side.tag());
            let sample = once(target, settings, ledger, side, &name, ports).await?;
            let elapsed = sample.total;
            ledger.remove(&sample.owned).await?;
            tokio::time::sleep(settings.settle).await;
            line.push(format!("{}={:.1}ms", if side == Side::Diplo { "diplo" } else { "cli" }, ms(elapsed)));
            if measured {
                match side {
                    Side::Diplo => {
                        row.diplo.push(elapsed);
                        row.diplo_create.extend(sample.create);
                    }
                    Side::Cli => {
                        row.cli.push(elapsed);
                        row.cli_create.extend(sample.create);
                    }
                }
            }
        }
        let kind = if measured { format!("{}/{}", round - settings.warmup + 1, settings.iterations) } else { "warm-up".to_owned() };
        eprintln!("  {label} {kind}: {}", line.join(" "));
    }
    Ok(row)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn median(samples: &[Duration]) -> f64 {
    let mut values: Vec<f64> = samples.iter().copied().map(ms).collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().copied().map(ms).collect();
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

fn mean(samples: &[Duration]) -> f64 {
    samples.iter().copied().map(ms).sum::<f64>() / samples.len() as f64
}

/// Everything for all wanted runtimes; outcomes in order.
async fn bench(settings: Settings, fingerprint: Fingerprint, scratch: Arc<Scratch>, ledger: Ledger) -> Vec<Outcome> {
    let probe = ProbeConfig::from_env();
    let mut outcomes = Vec::new();
    for runtime in [Runtime::Docker, Runtime::Podman, Runtime::Containerd, Runtime::Lxc] {
        if !settings.wants(runtime) {
            continue;
        }
        let skip = |reason: String| Outcome::Skipped { label: runtime.to_string(), reason };
        let Some(report) = fingerprint.runtimes.iter().find(|r| r.runtime == runtime) else {
            outcomes.push(skip("not probed".into()));
            continue;
        };
        if !report.available {
            eprintln!("{runtime}: unavailable ({}), skipped", report.error);
            outcomes.push(skip(format!("unavailable: {}", report.error)));
            continue;
        }
        eprintln!("{runtime} {}: connecting", report.version);
        let (driver, mut cli) = match connect(runtime, &probe, &scratch).await {
            Ok(connected) => connected,
            Err(reason) => {
                eprintln!("{runtime}: {reason}, skipped");
                outcomes.push(skip(reason));
                continue;
            }
        };
        eprintln!("{runtime}: ensure_image {}", settings.image);
        match tokio::time::timeout(OP_TIMEOUT, driver.ensure_image(&settings.image)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                outcomes.push(skip(format!("ensure_image failed: {error}")));
                continue;
            }
            Err(_) => {
                outcomes.push(skip("ensure_image timed out".into()));
                continue;
            }
        }
        if let Cli::Lxc { url, .. } = &mut cli
            && let Some(lxc) = lxc_layout(&scratch, &settings.image)
        {
            *url = lxc;
        }
        let target = Target { runtime, version: report.version.clone(), driver, cli };
        let mut variants = vec![false];
        if settings.ports && matches!(runtime, Runtime::Docker | Runtime::Podman) {
            variants.push(true);
        }
        for ports in variants {
            match measure(&target, &settings, &ledger, ports).await {
                Ok(row) => outcomes.push(Outcome::Measured(row)),
                Err(reason) => {
                    let label = if ports { format!("{runtime} + 1 port") } else { runtime.to_string() };
                    eprintln!("{label}: failed: {reason}");
                    outcomes.push(Outcome::Skipped { label, reason: format!("failed: {reason}") });
                    for failure in ledger.clean_up().await {
                        eprintln!("warning: {failure}");
                    }
                }
            }
        }
        eprintln!("{runtime} {}: done", target.version);
    }
    outcomes
}

/// The `oci:DIR:TAG` URL of the LXC driver's cached copy of `image`, which the CLI
/// comparison creates from too.
fn lxc_layout(scratch: &Scratch, image: &str) -> Option<String> {
    // Same layout the driver made (LxcRuntime::image_layout), found again through a
    // throwaway driver value so that no state is shared with the measured one.
    let probe = LxcRuntime::new(
        PathBuf::from(DEFAULT_LXC_PATH),
        scratch.lxc_images.path().to_owned(),
        RegistryConfig::default(),
        Arc::new(PortPublisher::new()),
    );
    let layout = probe.image_layout(image);
    layout.join("index.json").is_file().then(|| format!("oci:{}:{}", layout.display(), layout_tag(&layout)))
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn machine_info(fingerprint: &Fingerprint) -> Vec<String> {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())))
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut lines = vec![
        format!("- CPUs (nproc): {nproc} ({cpu_model})"),
        format!("- Memory: {:.1} GiB", fingerprint.memory_bytes as f64 / (1024.0 * 1024.0 * 1024.0)),
        format!("- OS: {} ({})", fingerprint.os_release, fingerprint.arch),
        format!("- Kernel: {}", fingerprint.kernel),
    ];
    if !fingerprint.virtualization.is_empty() {
        lines.push(format!("- Virtualization: {}", fingerprint.virtualization));
    }
    for report in &fingerprint.runtimes {
        let version = if report.available { report.version.clone() } else { format!("unavailable: {}", report.error) };
        lines.push(format!("- {}: {version}", report.runtime));
    }
    if let Some(runc) = output_of(&["runc", "--version"]).and_then(|v| v.lines().next().map(str::to_owned)) {
        lines.push(format!("- {runc}"));
    }
    lines
}

fn print_report(settings: &Settings, fingerprint: &Fingerprint, outcomes: &[Outcome], load_before: &str) {
    println!();
    println!("## Container create+start latency");
    println!();
    println!(
        "Image `{}`, command `{}`, {} measured rounds per side after {} warm-up rounds.",
        settings.image,
        COMMAND.join(" "),
        settings.iterations,
        settings.warmup
    );
    println!();
    for line in machine_info(fingerprint) {
        println!("{line}");
    }
    println!("- Load average (1/5/15 min): {load_before} before, {} after", load_average());
    println!();
    println!("| runtime | Diplo median | Diplo p90 | CLI median | CLI p90 | overhead % (median) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for outcome in outcomes {
        match outcome {
            Outcome::Measured(row) => {
                let (d, c) = (median(&row.diplo), median(&row.cli));
                println!(
                    "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:+.1} % |",
                    row.label,
                    d,
                    percentile(&row.diplo, 90.0),
                    c,
                    percentile(&row.cli, 90.0),
                    (d - c) / c * 100.0
                );
            }
            Outcome::Skipped { label, .. } => println!("| {label} | skipped | | | | |"),
        }
    }
    println!();
    println!("Details (ms): min / mean / max per side; medians split into create and start where there are two steps");
    println!();
    println!(
        "| runtime | Diplo min | Diplo mean | Diplo max | Diplo create / start (median) | CLI min | CLI mean | CLI max | CLI create / start (median) | CLI command |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for outcome in outcomes {
        if let Outcome::Measured(row) = outcome {
            let split = |totals: &[Duration], creates: &[Duration]| {
                if creates.len() != totals.len() || creates.is_empty() {
                    return "—".to_owned();
                }
                let starts: Vec<Duration> = totals.iter().zip(creates).map(|(total, create)| total.saturating_sub(*create)).collect();
                format!("{:.1} / {:.1}", median(creates), median(&starts))
            };
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | `{}` |",
                row.label,
                percentile(&row.diplo, 0.0),
                mean(&row.diplo),
                percentile(&row.diplo, 100.0),
                split(&row.diplo, &row.diplo_create),
                percentile(&row.cli, 0.0),
                mean(&row.cli),
                percentile(&row.cli, 100.0),
                split(&row.cli, &row.cli_create),
                row.cli_command
            );
        }
    }
    let skipped: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Skipped { label, reason } => Some(format!("- {label}: {reason}")),
            Outcome::Measured(_) => None,
        })
        .collect();
    if !skipped.is_empty() {
        println!();
        println!("Skipped:");
        for line in skipped {
            println!("{line}");
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("create_start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let scratch = match Scratch::new() {
        Ok(scratch) => Arc::new(scratch),
        Err(error) => {
            eprintln!("create_start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut probe = ProbeConfig::from_env();
    probe.timeout = Duration::from_secs(10);
    let fingerprint = fingerprint::probe(&probe).await;
    let ledger = Ledger::default();
    let load_before = load_average();
    let reservations = Path::new(DEFAULT_LXC_PATH).join(LXC_RESERVATIONS);
    let reservations_existed = reservations.exists();

    // In a task of its own so that a panic still reaches the clean-up below.
    let task = tokio::spawn(bench(settings.clone(), fingerprint.clone(), Arc::clone(&scratch), ledger.clone()));
    let abort = task.abort_handle();
    let outcomes = tokio::select! {
        joined = task => match joined {
            Ok(outcomes) => Some(outcomes),
            Err(error) => {
                eprintln!("create_start: the benchmark panicked: {error}");
                None
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("create_start: interrupted");
            abort.abort();
            None
        }
    };
    let failures = ledger.clean_up().await;
    for failure in &failures {
        eprintln!("warning: could not clean up: {failure}");
    }
    drop(scratch);
    if !reservations_existed {
        // The LXC driver's address bookkeeping, made by this run: only its cursor is
        // left when no create is in flight (remove_dir fails otherwise, and that is fine).
        let _ = std::fs::remove_file(reservations.join(".last"));
        let _ = std::fs::remove_dir(&reservations);
    }
    match outcomes {
        Some(outcomes) => {
            print_report(&settings, &fingerprint, &outcomes, &load_before);
            if failures.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
        }
        None => std::process::ExitCode::FAILURE,
    }
}
