//! The OCI runtime spec (config.json) for a Diplo container, built by hand: process
//! from the spec or the image, Docker's default capabilities, the usual pseudo
//! filesystems, Diplo's binds, resources and namespaces (network: a pinned netns).

use std::path::Path;

use diplo_api::container::ContainerSpec;
use serde_json::{Value, json};

use super::image::ImageConfig;
use crate::runtime::{RuntimeError, RuntimeResult};

/// `type_url` of a runtime spec in containerd.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// `type_url` of a process spec (exec) in containerd.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub use crate::runtime::rootfs::User;

/// Host paths the spec refers to.
#[derive(Debug, Clone)]
pub struct HostPaths<'a> {
    /// The pinned network namespace.
    pub netns: &'a Path,
    /// `/etc/hosts` for the container.
    pub hosts: &'a Path,
    /// `/etc/resolv.conf` for the container.
    pub resolv_conf: &'a Path,
    /// `/etc/hostname` for the container.
    pub hostname: &'a Path,
    /// Where named volumes live (`<dir>/<name>`).
    pub volumes: &'a Path,
}

/// argv by `docker run`'s rules ([`diplo_api::options::process_argv`]): the spec's
/// entrypoint and command over the image's Entrypoint and Cmd.
pub fn process_args(spec: &ContainerSpec, image: &ImageConfig) -> RuntimeResult<Vec<String>> {
    let run = image.config.clone().unwrap_or_default();
    let args = diplo_api::options::process_argv(spec, &run.entrypoint.unwrap_or_default(), &run.cmd.unwrap_or_default());
    if args.is_empty() {
        return Err(RuntimeError::InvalidArgument {
            field: "command",
            message: format!("image {} has no default command; give one", spec.image),
        });
    }
    Ok(args)
}

/// The image's environment overridden by the spec's, with a default `PATH`.
pub fn environment(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_owned(),
        None => env.push((key.to_owned(), value.to_owned())),
    };
    let default_path = DEFAULT_PATH.split_once('=').map(|(_, v)| v).unwrap_or_default();
    set("PATH", default_path);
    for entry in image.config.as_ref().and_then(|c| c.env.as_ref()).into_iter().flatten() {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(key, value);
    }
    for (key, value) in &spec.env {
        set(key, value);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The container's capabilities: Docker's default set with `cap_drop` and `cap_add`
/// applied ([`diplo_api::options::effective_capabilities`]).
pub fn capabilities(spec: &ContainerSpec) -> RuntimeResult<Vec<String>> {
    diplo_api::options::effective_capabilities(&spec.cap_drop, &spec.cap_add)
        .map(|caps| caps.into_iter().map(str::to_owned).collect())
        .map_err(|message| RuntimeError::InvalidArgument { field: "cap_add", message })
}

/// The process part of the spec (also the template for execs).
pub fn process(spec: &ContainerSpec, image: &ImageConfig, user: &User) -> RuntimeResult<Value> {
    let caps = capabilities(spec)?;
    let cwd = if spec.working_dir.is_empty() {
        crate::runtime::rootfs::working_dir(image.config.as_ref().and_then(|c| c.working_dir.as_deref()).unwrap_or_default())
            .map_err(|message| RuntimeError::InvalidArgument { field: "image", message: format!("image {}: {message}", spec.image) })?
    } else {
        crate::runtime::rootfs::working_dir(&spec.working_dir)
            .map_err(|message| RuntimeError::InvalidArgument { field: "working_dir", message })?
    };
    Ok(json!({
        "terminal": false,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": process_args(spec, image)?,
        "env": environment(spec, image),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": spec.no_new_privileges,
    }))
}

/// Mounts: pseudo filesystems, Diplo's /etc files, tmpfs entries, volumes and binds.
pub fn mounts(spec: &ContainerSpec, paths: &HostPaths<'_>) -> RuntimeResult<Vec<Value>> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (target, source) in [("/etc/hosts", paths.hosts), ("/etc/resolv.conf", paths.resolv_conf), ("/etc/hostname", paths.hostname)] {
        if spec.mounts.iter().any(|m| m.target == target) {
            continue;
        }
        mounts.push(json!({"destination": target, "type": "bind", "source": source, "options": ["rbind", "rprivate", "rw"]}));
    }
    for entry in &spec.tmpfs {
        let (target, _) = diplo_api::options::split_tmpfs(entry);
        if !target.starts_with('/') {
            return Err(RuntimeError::InvalidArgument { field: "tmpfs", message: format!("{target:?} is not an absolute path") });
        }
        let mut options: Vec<String> = ["nosuid", "nodev", "noexec", "mode=1777"].map(str::to_owned).to_vec();
        for option in diplo_api::options::tmpfs_options(entry) {
            let key = option.split('=').next().unwrap_or_default().to_owned();
            let opposite = match key.as_str() {
                "exec" => "noexec",
                "suid" => "nosuid",
                "dev" => "nodev",
                _ => "",
            };
            options.retain(|o| o.split('=').next() != Some(key.as_str()) && o != opposite);
            options.push(option);
        }
        mounts.push(json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options}));
    }
    for mount in &spec.mounts {
        if !mount.target.starts_with('/') {
            return Err(RuntimeError::InvalidArgument {
                field: "mounts",
                message: format!("target {:?} is not an absolute path", mount.target),
            });
        }
        let source = if mount.is_bind() {
            if !Path::new(&mount.source).exists() {
                return Err(RuntimeError::InvalidArgument {
                    field: "mounts",
                    message: format!("bind source {} does not exist", mount.source),
                });
            }
            mount.source.clone()
        } else {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if mount.source.is_empty() || !mount.source.chars().all(ok) || mount.source.starts_with('.') {
                return Err(RuntimeError::InvalidArgument { field: "mounts", message: format!("bad volume name {:?}", mount.source) });
            }
            paths.volumes.join(&mount.source).display().to_string()
        };
        let mode = if mount.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": mount.target, "type": "bind", "source": source, "options": ["rbind", "rprivate", mode]}));
    }
    Ok(mounts)
}

/// The whole runtime spec.
pub fn runtime_spec(id: &str, spec: &ContainerSpec, image: &ImageConfig, user: &User, paths: &HostPaths<'_>) -> RuntimeResult<Value> {
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    spec.check_options().map_err(|refusal| RuntimeError::InvalidArgument { field: refusal.field, message: refusal.message })?;
    let mut memory = serde_json::Map::new();
    if let Some(bytes) = spec.memory_bytes {
        memory.insert("limit".to_owned(), json!(bytes));
    }
    if let Some(bytes) = spec.memory_reservation {
        memory.insert("reservation".to_owned(), json!(bytes));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    if let Some(limit) = spec.pids_limit {
        resources["pids"] = json!({"limit": limit});
    }
    if let Some(millis) = spec.cpu_millis {
        if millis == 0 {
            return Err(RuntimeError::InvalidArgument { field: "cpu_millis", message: "must be positive".to_owned() });
        }
        resources["cpu"] = json!({"quota": i64::from(millis) * 100, "period": 100_000u64});
    }
    let hostname: String = spec.name.chars().take(63).collect();
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": process(spec, image, user)?,
        "root": {"path": "rootfs", "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts(spec, paths)?,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{}/{id}", super::NAMESPACE),
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": paths.netns},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

/// An exec's process spec: the container's process with `argv` instead of its args.
pub fn exec_process(container_spec: &Value, argv: &[String]) -> Value {
    let mut process = container_spec.get("process").cloned().unwrap_or_else(|| json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}));
    process["args"] = json!(argv);
    process["terminal"] = json!(false);
    process
}

/// `/etc/hosts` for a container named `name` at `ip`.
pub fn hosts_file(name: &str, ip: Option<&str>, extra: &str) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    text.push_str(extra);
    text
}

/// `/etc/resolv.conf` for a container: the host's without loopback name servers (they
/// are unreachable from the container's network namespace), falling back to public ones.
pub fn resolv_conf(host: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let server = words.next().unwrap_or_default();
            if server.starts_with("127.") || server == "::1" {
                continue;
            }
            servers += 1;
        }
        lines.push(line);
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    if servers == 0 {
        text.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use diplo_api::container::Mount;

    use super::super::image::RunConfig;
    use super::*;

    #[test]
    fn the_hosts_file_names_the_container_then_its_extra_hosts() {
        let extra = diplo_api::options::extra_hosts_lines(&["web:10.89.0.7".to_owned()]).expect("valid");
        let hosts = hosts_file("shop-api", Some("10.89.0.9"), &extra);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.ends_with("10.89.0.9\tshop-api\n10.89.0.7\tweb\n"), "{hosts}");
    }
    use diplo_api::options::DEFAULT_CAPABILITIES;

    fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str]) -> ImageConfig {
        ImageConfig {
            config: Some(RunConfig {
                user: None,
                env: Some(env.iter().map(|s| (*s).to_owned()).collect()),
                entrypoint: Some(entrypoint.iter().map(|s| (*s).to_owned()).collect()),
                cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                working_dir: Some("/work".to_owned()),
            }),
            rootfs: None,
        }
    }

    #[test]
    fn args_come_from_the_spec_or_the_image() {
        let img = image(&["/entry"], &["a", "b"], &[]);
        let mut spec = ContainerSpec { image: "x".into(), ..Default::default() };
        assert_eq!(process_args(&spec, &img).unwrap(), ["/entry", "a", "b"]);
        spec.command = vec!["sh".into()];
        assert_eq!(process_args(&spec, &img).unwrap(), ["/entry", "sh"]);
        spec.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        spec.command = vec!["echo hi".into()];
        assert_eq!(process_args(&spec, &img).unwrap(), ["/bin/sh", "-c", "echo hi"]);
        spec.entrypoint.clear();
        spec.command.clear();
        assert!(matches!(process_args(&spec, &image(&[], &[], &[])), Err(RuntimeError::InvalidArgument { field: "command", .. })));
    }

    #[test]
    fn env_merges_image_and_spec() {
        let img = image(&[], &["sh"], &["PATH=/bin", "A=1", "B=2"]);
        let mut spec = ContainerSpec::default();
        spec.env.insert("B".into(), "3".into());
        spec.env.insert("C".into(), "x=y".into());
        assert_eq!(environment(&spec, &img), ["PATH=/bin", "A=1", "B=3", "C=x=y"]);
        assert_eq!(environment(&spec, &ImageConfig::default())[0], DEFAULT_PATH);
    }

    #[test]
    fn capabilities_drop_and_add() {
        let with = |drop: &[&str], add: &[&str]| {
            capabilities(&ContainerSpec {
                cap_drop: drop.iter().map(|s| (*s).to_owned()).collect(),
                cap_add: add.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
        };
        assert_eq!(with(&[], &[]).unwrap().len(), DEFAULT_CAPABILITIES.len());
        let caps = with(&["net_raw", "CAP_KILL"], &[]).unwrap();
        assert!(!caps.contains(&"CAP_NET_RAW".to_owned()) && !caps.contains(&"CAP_KILL".to_owned()));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() - 2);
        assert!(with(&["all"], &[]).unwrap().is_empty());
        assert_eq!(with(&["all"], &["sys_time"]).unwrap(), ["CAP_SYS_TIME"]);
        assert!(matches!(with(&[], &["bogus"]), Err(RuntimeError::InvalidArgument { .. })));
    }

    #[test]
    fn runtime_spec_has_the_essentials() {
        let dir = PathBuf::from("/state");
        let paths = HostPaths {
            netns: &dir.join("ns"),
            hosts: &dir.join("hosts"),
            resolv_conf: &dir.join("r"),
            hostname: &dir.join("h"),
            volumes: &dir.join("v"),
        };
        let spec = ContainerSpec {
            name: "web".into(),
            image: "x".into(),
            command: vec!["sh".into()],
            read_only: true,
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            tmpfs: vec!["/tmp".into()],
            mounts: vec![Mount { source: "data".into(), target: "/data".into(), read_only: true }],
            no_new_privileges: true,
            pids_limit: Some(42),
            memory_reservation: Some(32 << 20),
            working_dir: "/srv".into(),
            ..Default::default()
        };
        let value = runtime_spec("abc", &spec, &ImageConfig::default(), &User::default(), &paths).unwrap();
        assert_eq!(value["linux"]["resources"]["pids"]["limit"], 42);
        assert_eq!(value["linux"]["resources"]["memory"]["reservation"], 32 << 20);
        assert_eq!(value["process"]["cwd"], "/srv");
        let sized = ContainerSpec { tmpfs: vec!["/run:size=1m,exec".into()], ..spec.clone() };
        let value_sized = runtime_spec("abc", &sized, &ImageConfig::default(), &User::default(), &paths).unwrap();
        let run = value_sized["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/run").cloned().unwrap();
        assert_eq!(run["options"], json!(["nosuid", "nodev", "mode=1777", "size=1048576", "exec"]));
        assert_eq!(value["root"]["readonly"], true);
        assert_eq!(value["process"]["noNewPrivileges"], true);
        assert_eq!(value["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(value["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(value["linux"]["namespaces"][4]["path"], "/state/ns");
        assert_eq!(value["linux"]["cgroupsPath"], "/diplo/abc");
        let mounts = value["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs"));
        assert!(mounts.iter().any(|m| m["destination"] == "/data" && m["source"] == "/state/v/data" && m["options"][2] == "ro"));
        let bad = ContainerSpec { mounts: vec![Mount { source: "/nonexistent/x".into(), target: "/x".into(), read_only: false }], ..spec };
        assert!(matches!(
            runtime_spec("abc", &bad, &ImageConfig::default(), &User::default(), &paths),
            Err(RuntimeError::InvalidArgument { field: "mounts", .. })
        ));
    }

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        assert_eq!(resolv_conf("nameserver 127.0.0.53\nsearch x\n"), "search x\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        assert_eq!(resolv_conf("nameserver 10.0.0.1\n"), "nameserver 10.0.0.1\n");
    }
}
