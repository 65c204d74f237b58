//! Building and pushing with `buildah` (nodes with only containerd or LXC): argument
//! vectors, never a shell string; credentials in a private auth file, never on the
//! command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use diplo_api::container::OutputStream;
use diplo_api::registry::RegistryConfig;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::log::BuildLog;
use crate::runtime::build_api::{LABEL_BUILD, base64, step_image_id};

/// `buildah pull` of a base image (plain HTTP for insecure registries).
pub fn pull_args(image: &str, insecure: bool, authfile: Option<&Path>) -> Vec<String> {
    let mut args = vec!["pull".to_owned(), "--quiet".to_owned()];
    if insecure {
        args.push("--tls-verify=false".into());
    }
    if let Some(file) = authfile {
        args.push(format!("--authfile={}", file.display()));
    }
    args.push(image.to_owned());
    args
}

/// `buildah bud`: cached layers, intermediate containers always removed, the build's
/// label, build arguments, the Dockerfile and the context.
pub fn bud_args(
    build_id: &str,
    image: &str,
    dockerfile: &Path,
    context: &Path,
    build_args: &BTreeMap<String, String>,
    authfile: Option<&Path>,
) -> Vec<String> {
    let mut args: Vec<String> = ["bud", "--layers", "--force-rm", "--pull=false"].map(String::from).to_vec();
    args.push(format!("--label={LABEL_BUILD}={build_id}"));
    if let Some(file) = authfile {
        args.push(format!("--authfile={}", file.display()));
    }
    for (name, value) in build_args {
        args.push("--build-arg".into());
        args.push(format!("{name}={value}"));
    }
    args.extend(["-f".to_owned(), dockerfile.display().to_string(), "-t".to_owned(), image.to_owned()]);
    args.push("--".into());
    args.push(context.display().to_string());
    args
}

/// `buildah push` of `image` to its registry, writing the manifest digest to `digestfile`.
pub fn push_args(image: &str, digestfile: &Path, insecure: bool, authfile: Option<&Path>) -> Vec<String> {
    let mut args = vec!["push".to_owned(), format!("--digestfile={}", digestfile.display())];
    if insecure {
        args.push("--tls-verify=false".into());
    }
    if let Some(file) = authfile {
        args.push(format!("--authfile={}", file.display()));
    }
    args.push("--".into());
    args.push(image.to_owned());
    args.push(format!("docker://{image}"));
    args
}

/// The containers/image auth file for `config`'s credentials: `{"auths": {registry:
/// {"auth": base64(user:password)}}}`.
pub fn auth_file_json(config: &RegistryConfig) -> String {
    let auths: serde_json::Map<String, serde_json::Value> = config
        .credentials
        .iter()
        .map(|(registry, c)| (registry.clone(), serde_json::json!({ "auth": base64(format!("{}:{}", c.username, c.password).as_bytes()) })))
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

/// Writes the auth file (mode 0600) under `dir` when there are credentials.
pub fn write_auth_file(dir: &Path, config: &RegistryConfig) -> std::io::Result<Option<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if config.credentials.is_empty() {
        return Ok(None);
    }
    let path = dir.join("auth.json");
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(auth_file_json(config).as_bytes())?;
    Ok(Some(path))
}

/// Runs `buildah args`, its output (both streams) going to `log`; step image ids go to
/// `steps`, its process id to `running` while it runs. Fails with the last lines of
/// output. Dropped before the end (timeout, cancellation), buildah is not killed here:
/// the caller [`terminate`]s it, so that it removes its working container itself.
pub async fn run(
    args: &[String],
    home: &Path,
    log: &BuildLog,
    steps: &Mutex<Vec<String>>,
    running: &Mutex<Option<u32>>,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("buildah")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run buildah: {}", crate::runtime::docker::describe_io(&e)))?;
    if let Ok(mut slot) = running.lock() {
        *slot = child.id();
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (_, _, status) =
        tokio::join!(pump(stdout, OutputStream::Stdout, log, steps), pump(stderr, OutputStream::Stderr, log, steps), child.wait());
    if let Ok(mut slot) = running.lock() {
        *slot = None;
    }
    let status = status.map_err(|e| format!("buildah: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        let action = args.first().map_or("", String::as_str);
        Err(format!("buildah {action} failed ({status}): {}", log.tail()))
    }
}

/// Copies the lines of `reader` to `log`, noting step image ids in `steps`.
async fn pump(reader: Option<impl tokio::io::AsyncRead + Unpin>, stream: OutputStream, log: &BuildLog, steps: &Mutex<Vec<String>>) {
    let Some(reader) = reader else { return };
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(id) = step_image_id(&line)
            && let Ok(mut steps) = steps.lock()
        {
            steps.push(id.to_owned());
        }
        log.write(stream, &line).await;
    }
}

/// How long buildah may take to clean up after SIGTERM before it is killed.
const TERMINATE_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Stops a buildah cut short: SIGTERM, on which it stops the step and removes its
/// working container, then SIGKILL if it is still there after a grace period.
pub async fn terminate(pid: u32) {
    signal(pid, "TERM").await;
    let deadline = tokio::time::Instant::now() + TERMINATE_GRACE;
    while alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if alive(pid) {
        tracing::warn!(pid, "buildah did not stop within its grace period; killing it (a working container may be left)");
        signal(pid, "KILL").await;
    }
}

/// Sends a signal with `kill(1)` (the agent has no unsafe code to call kill(2)).
async fn signal(pid: u32, name: &str) {
    let _ = tokio::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Whether process `pid` still runs (a zombie, ended and not yet collected, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z" && state != "X")
        }
        Err(_) => false,
    }
}

/// Removes what a failed or cut-short build left: the untagged images of its steps,
/// and `image` when given.
pub async fn remove_leftovers(steps: &[String], image: Option<&str>) {
    let quiet = |args: Vec<String>| async move {
        let _ = tokio::process::Command::new("buildah")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await;
    };
    if let Some(image) = image {
        quiet(vec!["rmi".into(), image.to_owned()]).await;
    }
    let output = tokio::process::Command::new("buildah")
        .args(["images", "--quiet", "--no-trunc", "--filter", "dangling=true"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let Ok(output) = output else { return };
    for id in String::from_utf8_lossy(&output.stdout).lines().rev() {
        let id = id.trim().trim_start_matches("sha256:");
        if steps.iter().any(|step| id.starts_with(step.trim_start_matches("sha256:"))) {
            quiet(vec!["rmi".into(), id.to_owned()]).await;
        }
    }
}

/// Whether `buildah --version` answers.
pub async fn available() -> bool {
    let status = tokio::process::Command::new("buildah")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(tokio::time::timeout(std::time::Duration::from_secs(10), status).await, Ok(Ok(status)) if status.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::registry::RegistryCredential;

    #[test]
    fn argv_never_carries_a_password() {
        let args: BTreeMap<String, String> = [("V".to_owned(), "1 2".to_owned())].into();
        let bud = bud_args(
            "b1",
            "127.0.0.1:5000/app:1",
            Path::new("/ws/repo/Dockerfile"),
            Path::new("/ws/repo"),
            &args,
            Some(Path::new("/ws/auth.json")),
        );
        assert_eq!(
            bud.join(" "),
            "bud --layers --force-rm --pull=false --label=diplo.build=b1 --authfile=/ws/auth.json --build-arg V=1 2 \
             -f /ws/repo/Dockerfile -t 127.0.0.1:5000/app:1 -- /ws/repo"
        );
        let push = push_args("127.0.0.1:5000/app:1", Path::new("/ws/digest"), true, None);
        assert_eq!(push.join(" "), "push --digestfile=/ws/digest --tls-verify=false -- 127.0.0.1:5000/app:1 docker://127.0.0.1:5000/app:1");
        assert_eq!(pull_args("r:5000/b:1", false, None).join(" "), "pull --quiet r:5000/b:1");

        let mut config = RegistryConfig::default();
        config.credentials.insert("r.example:5000".into(), RegistryCredential { username: "u".into(), password: "p4ss".into() });
        let json = auth_file_json(&config);
        assert_eq!(json, r#"{"auths":{"r.example:5000":{"auth":"dTpwNHNz"}}}"#);
        for args in [&bud, &push] {
            assert!(!args.join(" ").contains("p4ss"));
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = write_auth_file(dir.path(), &config).expect("written").expect("a file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).expect("metadata").permissions().mode() & 0o777, 0o600);
        assert_eq!(write_auth_file(dir.path(), &RegistryConfig::default()).expect("nothing to write"), None);
    }
}
