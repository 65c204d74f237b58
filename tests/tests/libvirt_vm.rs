//! A real VM joins: libvirt (started by `scripts/setup-vm`) boots the image `scripts/vm-image`
//! builds (Debian's kernel, an initramfs with containerd and diplo-agent) under QEMU's TCG
//! emulation on a NAT network of the test's own made by `deploy/libvirt/network.sh`; the
//! VM's agent joins a control plane listening on the network's gateway, reports that it
//! runs under QEMU, and runs a container whose image comes from a registry on the gateway
//! and whose published port answers the host. Teardown (`deploy/libvirt/vm.sh destroy`,
//! `network.sh destroy`) leaves no domain and no network behind.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{Binary, ControlPlane, ControlPlaneOptions, Process, find_node, http_get, output_with_timeout, unique_name, wait_until};
use serde_json::json;

const SOURCE_IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
/// Name prefixes of the test's VMs and networks (`unique_name`, which holds the pid).
const VM_PREFIX: &str = "diplo-vm";
const NETWORK_PREFIX: &str = "diplo-vmt";
const POLL: Duration = Duration::from_millis(500);
/// A TCG boot with the agent's first join (key, CSR, certificate) takes well under this.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Pulling busybox and starting it in the emulated VM.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(180);

/// The third octet of a free `192.168.N.0/24` for the test's network: none of the
/// networks in `routes` (`ip -4 route` output) or `taken`, from `start` upwards in
/// 101..=199 (192.168.100.0/24 belongs to the SO1 lab and is never chosen), wrapping.
fn pick_subnet(routes: &str, taken: &[u8], start: u8) -> Option<u8> {
    let used = |octet: u8| {
        taken.contains(&octet) || routes.lines().any(|line| line.split_whitespace().any(|w| w.starts_with(&format!("192.168.{octet}."))))
    };
    let start = start.clamp(101, 199);
    (start..=199).chain(101..start).find(|&octet| !used(octet))
}

#[test]
fn pick_subnet_skips_used_networks_and_the_lab() {
    let routes = "default via 10.0.2.2 dev eth0\n\
                  192.168.100.0/24 dev diplo-br proto kernel scope link src 192.168.100.1\n\
                  192.168.101.0/24 dev virbr-1 proto kernel scope link src 192.168.101.1\n\
                  192.168.1030.0/24 dev odd\n";
    let cases: &[(&str, &[u8], u8, Option<u8>)] = &[
        (routes, &[], 101, Some(102)),
        (routes, &[102], 101, Some(103)),
        (routes, &[], 100, Some(102)),
        (routes, &[], 150, Some(150)),
        ("", &[], 199, Some(199)),
        ("192.168.199.0/24 dev x\n", &[], 199, Some(101)),
        ("", &(101..=199).collect::<Vec<u8>>(), 120, None),
        (routes, &[], 0, Some(102)),
    ];
    for (routes, taken, start, want) in cases {
        assert_eq!(pick_subnet(routes, taken, *start), *want, "start {start}, taken {taken:?}");
    }
}

/// `deploy/libvirt/*.sh` refuse bad arguments before they touch libvirt, naming the option.
#[test]
fn libvirt_scripts_name_the_bad_argument() {
    let dir = diplo_tests::repository_root().join("deploy/libvirt");
    let cases: &[(&str, &[&str], &str)] = &[
        ("network.sh", &["create", "--subnet", "10.0.0.0/8"], "--subnet"),
        ("network.sh", &["create", "--subnet", "192.168.300.0/24"], "--subnet"),
        ("network.sh", &["create", "--name", "bad name"], "--name"),
        ("network.sh", &["create", "--dhcp-from", "1"], "--dhcp-from"),
        ("network.sh", &["explode"], "create"),
        ("vm.sh", &["create", "bad/name"], "NAME"),
        ("vm.sh", &["create", "vm1", "--memory", "12"], "--memory"),
        ("vm.sh", &["create", "vm1", "--vcpus", "0"], "--vcpus"),
        ("vm.sh", &["create", "vm1", "--mac", "52:54:00:zz:00:01"], "--mac"),
        ("vm.sh", &["create", "vm1", "--ip", "192.168.100.10/24"], "--ip"),
        ("vm.sh", &["create", "vm1", "--virt-type", "xen"], "--virt-type"),
        ("vm.sh", &["create", "vm1", "--token", "DIPLO1::a b"], "--token"),
        ("vm.sh", &["create", "vm1", "--server", "h:1 init=/bin/sh"], "--server"),
        ("vm.sh", &["create", "vm1", "--kernel", "/nonexistent/vmlinuz"], "--kernel"),
        ("vm.sh", &["create", "vm1", "--surprise"], "--surprise"),
        ("vm.sh", &["create", "vm1", "--bridge", "diplo-so1", "--network", "default"], "--bridge and --network exclude"),
        ("vm.sh", &["create", "vm1", "--network", "default", "--bridge", "diplo-so1"], "--bridge and --network exclude"),
        ("vm.sh", &["create", "vm1", "--bridge", "bad bridge"], "--bridge: "),
        ("vm.sh", &["create", "vm1", "--bridge", "a-bridge-name-too-long"], "--bridge: "),
    ];
    for (script, args, field) in cases {
        let mut command = Command::new(dir.join(script));
        command.args(*args);
        let output = output_with_timeout(command, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{script} {args:?} succeeded");
        assert!(stderr.contains(field), "{script} {args:?}: the error does not name {field}: {stderr}");
    }
}

/// The process id in a name made by `unique_name(prefix)` (`<prefix>-<pid hex>-<suffix>`).
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, suffix) = rest.split_once('-')?;
    if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

#[test]
fn owner_pid_reads_unique_names_only() {
    let cases: &[(&str, &str, Option<u32>)] = &[
        ("diplo-vm-6391-12289", "diplo-vm", Some(0x6391)),
        ("diplo-vmt-20f1-0aebd", "diplo-vmt", Some(0x20f1)),
        ("diplo-vmt-20f1-0aebd", "diplo-vm", None),
        ("diplo-vm-zz-1", "diplo-vm", None),
        ("diplo-vm-12", "diplo-vm", None),
        ("diplo-vm-12-", "diplo-vm", None),
        ("vm1", "diplo-vm", None),
        ("diplo-so1", "diplo-vmt", None),
    ];
    for (name, prefix, want) in cases {
        assert_eq!(owner_pid(name, prefix), *want, "{name} with prefix {prefix}");
    }
}

/// Removes the VMs and networks of earlier runs of this test whose process is gone (a
/// run killed by a time limit cannot tear down).
fn remove_stale(vm_prefix: &str, network_prefix: &str) {
    let libvirt = diplo_tests::repository_root().join("deploy/libvirt");
    let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    for vm in virsh(&["list", "--all", "--name"]).unwrap_or_default().lines().map(str::trim) {
        if owner_pid(vm, vm_prefix).is_some_and(gone) {
            eprintln!("[libvirt_vm] removing the stale VM {vm}");
            let _ = run(libvirt.join("vm.sh"), &["destroy", vm], Duration::from_secs(120));
        }
    }
    for network in virsh(&["net-list", "--all", "--name"]).unwrap_or_default().lines().map(str::trim) {
        if owner_pid(network, network_prefix).is_some_and(gone) {
            eprintln!("[libvirt_vm] removing the stale network {network}");
            let _ = run(libvirt.join("network.sh"), &["destroy", "--name", network], Duration::from_secs(60));
        }
    }
}

/// The command lines of the processes whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.chars().all(|c| c.is_ascii_digit())))
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

/// Runs a command to completion within `timeout`; `Err` carries its output.
fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut command = Command::new(program.as_ref());
    command.args(args);
    let output = output_with_timeout(command, timeout);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {} failed ({}):\n{stdout}\n{}",
            program.as_ref().to_string_lossy(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn virsh(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-q", "-c", "qemu:///system"];
    all.extend_from_slice(args);
    run("virsh", &all, Duration::from_secs(60))
}

/// Everything the test created outside its temporary directory; removed when dropped,
/// whether the test passed or not (errors are printed, never raised, here).
struct Teardown {
    vm: Option<String>,
    network: Option<String>,
    console: PathBuf,
}

impl Teardown {
    fn destroy(&mut self) -> Vec<String> {
        let libvirt = diplo_tests::repository_root().join("deploy/libvirt");
        let mut errors = Vec::new();
        if let Some(vm) = self.vm.take()
            && let Err(e) = run(libvirt.join("vm.sh"), &["destroy", &vm], Duration::from_secs(120))
        {
            errors.push(e);
        }
        if let Some(network) = self.network.take()
            && let Err(e) = run(libvirt.join("network.sh"), &["destroy", "--name", &network], Duration::from_secs(60))
        {
            errors.push(e);
        }
        errors
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let console = std::fs::read_to_string(&self.console).unwrap_or_default();
            let lines: Vec<&str> = console.lines().collect();
            eprintln!("----- VM console (last 80 lines) -----\n{}\n-----", lines[lines.len().saturating_sub(80)..].join("\n"));
        }
        for error in self.destroy() {
            eprintln!("[libvirt_vm] teardown: {error}");
        }
    }
}

/// A registry of the test's own on `addr` (reachable from the VM), storage in `dir`.
fn start_registry(addr: &str, dir: &Path) -> Process {
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        ),
    )
    .expect("write the registry's configuration");
    let mut command = Command::new("docker-registry");
    command.arg("serve").arg(&config);
    let mut registry = Process::spawn("registry", command, &dir.join("registry"));
    wait_until("the test's registry", Duration::from_secs(20), Duration::from_millis(100), || {
        if let Some(status) = registry.try_exit() {
            panic!("docker-registry exited with {status}:\n{}", registry.logs());
        }
        http_get(&format!("http://{addr}/v2/"), None).map(drop)
    });
    registry
}

#[test]
fn a_libvirt_vm_joins_and_runs_a_container() {
    // Tools: installed and started by scripts/setup-vm (a failure there fails the test in CI).
    if let Err(e) = run(diplo_tests::repository_root().join("scripts/setup-vm"), &[], Duration::from_secs(900)) {
        diplo_tests::skip_or_fail(&format!("scripts/setup-vm failed: {e}"));
        return;
    }
    remove_stale(VM_PREFIX, NETWORK_PREFIX);
    let dir = tempfile::Builder::new().prefix("diplo-vm-test-").tempdir().expect("temporary directory");
    // libvirt's QEMU and virtlogd read the kernel and write the console log here.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");

    // The image: Debian's kernel (cached) and an initramfs with this build's agent.
    let image = dir.path().join("image");
    let agent = diplo_tests::binary(Binary::Agent);
    let started = Instant::now();
    run(
        diplo_tests::repository_root().join("scripts/vm-image"),
        &[image.to_str().expect("utf-8 path"), "--agent", agent.to_str().expect("utf-8 path")],
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("scripts/vm-image: {e}"));
    eprintln!("[libvirt_vm] image built in {:.1?}", started.elapsed());

    // A NAT network of the test's own, on a /24 nobody uses (never the lab's 192.168.100.0/24).
    let network = unique_name(NETWORK_PREFIX);
    let console = dir.path().join("console.log");
    let mut teardown = Teardown { vm: None, network: None, console: console.clone() };
    let mut taken = Vec::new();
    let octet = loop {
        let routes = run("ip", &["-4", "route"], Duration::from_secs(10)).unwrap_or_default();
        let start = 101 + (std::process::id() % 99) as u8;
        let octet = pick_subnet(&routes, &taken, start).expect("no free 192.168.N.0/24 for the test's network");
        teardown.network = Some(network.clone());
        match run(
            diplo_tests::repository_root().join("deploy/libvirt/network.sh"),
            &["create", "--name", &network, "--subnet", &format!("192.168.{octet}.0/24")],
            Duration::from_secs(60),
        ) {
            Ok(out) => {
                eprintln!("[libvirt_vm] {}", out.trim());
                break octet;
            }
            Err(e) if taken.len() < 5 => {
                eprintln!("[libvirt_vm] 192.168.{octet}.0/24 is not usable ({e}); trying another");
                let _ = teardown.destroy();
                taken.push(octet);
            }
            Err(e) => panic!("cannot create the test's libvirt network: {e}"),
        }
    };
    let gateway = Ipv4Addr::new(192, 168, octet, 1);
    let vm_ip = Ipv4Addr::new(192, 168, octet, 10);

    // The registry on the gateway, seeded with busybox from the host's registry.
    let registry_addr = format!("{gateway}:{}", diplo_tests::free_port());
    let _registry = start_registry(&registry_addr, dir.path());
    let image_ref = format!("{registry_addr}/diplo/busybox:latest");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{SOURCE_IMAGE}"),
            &format!("docker://{image_ref}"),
        ],
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("seeding the test's registry: {e}"));

    // The control plane: gRPC on the gateway (in its certificate), the registry insecure.
    let no_proxy = format!("127.0.0.1,localhost,::1,{gateway}");
    let options = ControlPlaneOptions {
        grpc_listen_ip: Some(IpAddr::V4(gateway)),
        heartbeat_interval: Some(Duration::from_secs(2)),
        env: vec![
            ("DIPLO_INSECURE_REGISTRIES".into(), registry_addr.clone()),
            ("NO_PROXY".into(), no_proxy.clone()),
            ("no_proxy".into(), no_proxy),
        ],
        ..Default::default()
    };
    let control_plane = ControlPlane::start(options);
    assert_eq!(control_plane.grpc_addr().ip(), IpAddr::V4(gateway));
    let token = control_plane.join_token(&[]);

    // One VM, TCG, direct kernel boot; its agent joins with the token from the kernel command line.
    let vm = unique_name(VM_PREFIX);
    let boot = Instant::now();
    teardown.vm = Some(vm.clone());
    let created = run(
        diplo_tests::repository_root().join("deploy/libvirt/vm.sh"),
        &[
            "create",
            &vm,
            "--network",
            &network,
            "--memory",
            "1024",
            "--vcpus",
            "1",
            "--virt-type",
            "qemu",
            "--ip",
            &vm_ip.to_string(),
            "--kernel",
            image.join("vmlinuz").to_str().expect("utf-8 path"),
            "--initrd",
            image.join("initrd.img").to_str().expect("utf-8 path"),
            "--server",
            &control_plane.grpc_addr().to_string(),
            "--token",
            &token,
            "--console-log",
            console.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("vm.sh create: {e}"));
    eprintln!("[libvirt_vm] {}", created.trim());
    let dominfo = virsh(&["dumpxml", &vm]).expect("virsh dumpxml");
    assert!(dominfo.contains("type='qemu'") || dominfo.contains("type=\"qemu\""), "the VM does not run under TCG:\n{dominfo}");

    let node = wait_until(&format!("the VM's node {vm} to be ready"), READY_TIMEOUT, POLL, || {
        let nodes = control_plane.try_nodes()?;
        match find_node(&nodes, &vm) {
            Some(node) if node["status"] == "ready" && node["os"] != "" => Ok(node.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let boot_to_ready = boot.elapsed();
    eprintln!("[libvirt_vm] boot to ready: {boot_to_ready:.1?}");
    let node_id = node["id"].as_str().expect("node id").to_owned();
    // The agent's probe under QEMU: DMI names QEMU (TCG emulation, no KVM).
    let shown = control_plane.rest("GET", &format!("/api/v1/nodes/{node_id}"), None);
    assert_eq!(shown.status, 200, "{}", shown.body);
    let fingerprint = shown.json();
    assert_eq!(fingerprint["virtualization"], "qemu", "{fingerprint:#}");
    assert_eq!(fingerprint["arch"], "amd64", "{fingerprint:#}");
    assert_eq!(fingerprint["hostname"], vm.as_str(), "{fingerprint:#}");
    assert!(fingerprint["address"].as_str().unwrap_or_default().contains(&vm_ip.to_string()), "{fingerprint:#}");
    let available = node["available"].as_array().cloned().unwrap_or_default();
    assert!(available.iter().any(|r| r == "containerd"), "containerd is not available on the VM: {node}");

    // A container on the VM, from the gateway's registry, its port published on the VM.
    let port = 18080 + (std::process::id() % 1000) as u16;
    let name = unique_name("vm-web");
    let deploy = Instant::now();
    let response = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({
            "image": image_ref,
            "name": name,
            "node": node_id,
            "ports": { port.to_string(): "8080" },
            "restart_policy": "no",
            "runtime_type": "containerd",
            "command": ["/bin/sh", "-c", format!("mkdir -p /www && echo hello-from-{vm} > /www/index.html && exec httpd -f -p 8080 -h /www")],
        })),
    );
    assert_eq!(response.status, 201, "create on the VM: {}", response.body);
    let container = response.json();
    let id = container["id"].as_str().expect("container id").to_owned();
    assert_eq!(container["node_id"], node_id.as_str(), "{container}");
    wait_until("the container to be running on the VM", RUNNING_TIMEOUT, POLL, || {
        let response = control_plane.rest("GET", &format!("/api/v1/containers?node={node_id}"), None);
        let listed = response.json();
        let found = listed.as_array().and_then(|all| all.iter().find(|c| c["id"] == id.as_str()).cloned());
        match found {
            Some(c) if c["status"] == "running" => Ok(()),
            _ => Err(response.body),
        }
    });
    let deploy_to_running = deploy.elapsed();
    let body = wait_until("the container's published port on the VM", Duration::from_secs(60), POLL, || {
        let response = http_get(&format!("http://{vm_ip}:{port}/"), None)?;
        if response.status == 200 { Ok(response.body) } else { Err(format!("HTTP {}: {}", response.status, response.body)) }
    });
    assert_eq!(body.trim(), format!("hello-from-{vm}"));
    let deploy_to_answer = deploy.elapsed();
    eprintln!(
        "[libvirt_vm] boot to ready {:.1} s; deploy to running {:.1} s; deploy to answering on {vm_ip}:{port} {:.1} s",
        boot_to_ready.as_secs_f64(),
        deploy_to_running.as_secs_f64(),
        deploy_to_answer.as_secs_f64()
    );
    let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
    assert!(removed.status == 200 || removed.status == 204, "remove the container: {}", removed.body);

    // Teardown leaves no domain and no network.
    let errors = teardown.destroy();
    assert!(errors.is_empty(), "teardown: {errors:?}");
    let domains = virsh(&["list", "--all", "--name"]).expect("virsh list");
    assert!(!domains.lines().any(|l| l.trim() == vm), "the VM is still defined: {domains}");
    let networks = virsh(&["net-list", "--all", "--name"]).expect("virsh net-list");
    assert!(!networks.lines().any(|l| l.trim() == network), "the network is still defined: {networks}");
    // No QEMU for the VM, no dnsmasq for the network (libvirt names them in their arguments).
    let left: Vec<String> =
        [format!("guest={vm},"), format!("/{network}.conf")].iter().flat_map(|needle| processes_mentioning(needle)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    let links = run("ip", &["-4", "route"], Duration::from_secs(10)).unwrap_or_default();
    assert!(!links.contains(&format!("192.168.{octet}.0/24")), "the network's route is still there: {links}");
}
