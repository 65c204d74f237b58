//! A registry that wants a password: Debian's `docker-registry serve` on a free
//! loopback port with an htpasswd file (bcrypt hash made here), and images pushed to it
//! from the shared test registry's busybox. Everything goes when dropped: the registry
//! is killed, its storage removed, the local tags untagged. `docker login` runs with a
//! private `--config` directory, so no other test's Docker credentials change.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The image every push starts from (in the shared registry on 127.0.0.1:5000).
pub const BASE_IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

/// A running registry with basic authentication.
pub struct PrivateRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The one user.
    pub username: String,
    /// Its password (random).
    pub password: String,
    child: Child,
    dir: tempfile::TempDir,
    tags: Vec<String>,
}

fn run(command: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    if let Some(text) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl PrivateRegistry {
    /// Starts one (user `diplo`, a random password) and waits until it asks for
    /// credentials.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("diplo-private-registry-").tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let username = "diplo".to_owned();
        let password = format!("pw-{:016x}", rand_u64());
        let hash = bcrypt::hash(&password, 4).context("bcrypt")?;
        std::fs::write(dir.path().join("htpasswd"), format!("{username}:{hash}\n"))?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: diplo-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start docker-registry")?;
        let registry = PrivateRegistry { addr, username, password, child, dir, tags: Vec::new() };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// Waits until `GET /v2/` answers 401 (plain TCP: the harness may run inside an
    /// async test, where a blocking HTTP client cannot be used).
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.status_of_v2() {
                Ok(401) => return Ok(()),
                Ok(other) => bail!("the private registry answered {other} without credentials"),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(err) => bail!("the private registry at {} did not start: {err}\n{}", self.addr, self.log()),
            }
        }
    }

    fn status_of_v2(&self) -> anyhow::Result<u16> {
        use std::io::Read;
        let mut tcp = std::net::TcpStream::connect(&self.addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.write_all(b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n")?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head)?;
        let text = String::from_utf8_lossy(&head);
        text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).context("no HTTP status")
    }

    /// Pushes [`BASE_IMAGE`] as `ADDR/private/bb:TAG` (Docker, logged in through a
    /// private config directory), removes the local tag, and returns the reference.
    pub fn push(&mut self, tag: &str) -> anyhow::Result<String> {
        let reference = format!("{}/private/bb:{tag}", self.addr);
        if run(Command::new("docker").args(["image", "inspect", BASE_IMAGE]), None).is_err() {
            run(Command::new("docker").args(["pull", BASE_IMAGE]), None)?;
        }
        let docker_config = self.dir.path().join("docker-config");
        std::fs::create_dir_all(&docker_config)?;
        let docker = |args: &[&str]| {
            let mut command = Command::new("docker");
            command.arg("--config").arg(&docker_config).args(args);
            command
        };
        run(&mut docker(&["login", "--username", &self.username, "--password-stdin", &self.addr]), Some(&self.password))?;
        self.tags.push(reference.clone());
        let pushed =
            run(&mut docker(&["tag", BASE_IMAGE, &reference]), None).and_then(|_| run(&mut docker(&["push", "--quiet", &reference]), None));
        let _ = run(&mut docker(&["logout", &self.addr]), None);
        let _ = run(&mut docker(&["rmi", &reference]), None);
        pushed?;
        Ok(reference)
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for tag in &self.tags {
            let _ = Command::new("docker").args(["rmi", "--force", tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            let _ = Command::new("podman").args(["rmi", "--force", tag]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = remove_dir(&self.storage());
    }
}

fn remove_dir(path: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(path)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
    hasher.finish()
}
