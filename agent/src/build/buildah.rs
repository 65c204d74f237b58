//! Building and pushing with `buildah` (nodes with only containerd or LXC): argument
//! vectors, never a shell string; credentials in a private auth file, never on the
//! command line.

use std::collections::{BTreeMap, HashSet};
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
/// `steps`. Fails with the last lines of output.
pub async fn run(args: &[String], home: &Path, log: &BuildLog, steps: &Mutex<Vec<String>>) -> Result<(), String> {
    let mut child = tokio::process::Command::new("buildah")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run buildah: {}", crate::runtime::docker::describe_io(&e)))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (_, _, status) =
        tokio::join!(pump(stdout, OutputStream::Stdout, log, steps), pump(stderr, OutputStream::Stderr, log, steps), child.wait());
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

/// Ids of buildah's working containers now.
pub async fn containers() -> HashSet<String> {
    let output = tokio::process::Command::new("buildah")
        .args(["containers", "--quiet", "--notruncate"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()
        }
        _ => HashSet::new(),
    }
}

/// Removes what a failed or cut-short build left: working containers that appeared
/// since `before`, the untagged images of its steps, and `image` when given.
pub async fn remove_leftovers(before: &HashSet<String>, steps: &[String], image: Option<&str>) {
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
    for id in containers().await.difference(before) {
        quiet(vec!["rm".into(), id.clone()]).await;
    }
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
