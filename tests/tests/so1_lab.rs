//! The SO1 layout on this machine (`scripts/so1-lab`): three network namespaces with a
//! runtime daemon and an agent each, the registry on vm3, the control plane on PostgreSQL.
//! `up` builds and deploys the three sample APIs through Diplo, `test` calls every API and
//! every cross call from every namespace, `drill-cut` cuts vm2's link and times the
//! failover, `vm-join` boots a real libvirt VM (TCG) on the lab's bridge whose agent joins
//! the lab's control plane and runs a container called from vm1, `down` removes everything.
//! Needs root and the runtimes of `scripts/setup-host` (libvirt and QEMU: `scripts/setup-vm`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use diplo_tests::{Binary, binary, skip_or_fail};

/// Longest the drill may take to see vm2 down after the cut (the control plane runs with
/// a 20 s down grace).
const DOWN_TARGET_S: f64 = 30.0;
/// Longest the drill may take to have api3 running on another node after the cut.
const REPLACED_TARGET_S: f64 = 45.0;

/// Runs `scripts/so1-lab VERB` with the binaries under test; output captured.
fn so1_lab(verb: &str) -> Output {
    let bin_dir = binary(Binary::Agent).parent().expect("binaries have a directory").to_owned();
    Command::new(diplo_tests::repository_root().join("scripts/so1-lab"))
        .arg(verb)
        .env("SO1_BIN_DIR", bin_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/so1-lab {verb}: {e}"))
}

fn text(output: &Output) -> String {
    format!("--- stdout\n{}--- stderr\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The lock every user of the lab (one network, one set of paths and ports per machine)
/// holds for its whole run.
const LAB_LOCK: &str = "/run/lock/diplo-so1-lab.lock";

/// An exclusive `flock` on [`LAB_LOCK`], held by a `flock … cat` child until this is
/// dropped or the test process dies (its stdin closes either way).
struct LabLock(Child);

impl LabLock {
    /// Waits until no other run holds the lab.
    fn acquire() -> LabLock {
        if let Some(dir) = Path::new(LAB_LOCK).parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let mut child = Command::new("flock")
            .args(["-x", LAB_LOCK, "sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run flock {LAB_LOCK}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("flock's stdout is piped");
        BufReader::new(stdout).read_line(&mut line).expect("reading flock's answer");
        assert_eq!(line.trim(), "locked", "flock {LAB_LOCK} did not take the lock");
        LabLock(child)
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Runs `down` when dropped, so that a failing test leaves nothing behind either.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let output = so1_lab("down");
        if !output.status.success() {
            eprintln!("scripts/so1-lab down failed:\n{}", text(&output));
        }
    }
}

/// The libvirt domain `so1-lab vm-join` boots.
const VM4: &str = "diplo-so1-vm4";

/// What the lab may leave behind: namespaces, the bridge, processes with its paths, the
/// VM of `vm-join` (its libvirt domain, its QEMU).
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    let domains = Command::new("virsh").args(["-q", "-c", "qemu:///system", "list", "--all", "--name"]).output();
    if let Ok(domains) = domains
        && String::from_utf8_lossy(&domains.stdout).lines().any(|l| l.trim() == VM4)
    {
        left.push(format!("libvirt domain {VM4}"));
    }
    for vm in ["vm1", "vm2", "vm3"] {
        if Path::new(&format!("/run/netns/diplo-{vm}")).exists() {
            left.push(format!("network namespace diplo-{vm}"));
        }
    }
    if Path::new("/sys/class/net/diplo-so1").exists() {
        left.push("link diplo-so1".to_owned());
    }
    for entry in std::fs::read_dir("/proc").expect("/proc is readable").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/run/diplo-so1") || cmdline.contains("/var/lib/diplo-so1") || cmdline.contains(&format!("guest={VM4},")) {
            left.push(format!("process {}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    left
}

/// The seconds after `label` in a `DRILL link-cut:` or `so1-lab vm-join:` line (`down after 16.6 s`).
fn seconds_after(line: &str, label: &str) -> Option<f64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn seconds_are_read_from_the_drill_line() {
    let line = "DRILL link-cut: down after 16.6 s, api3 running on vm1 after 17.2 s, calls ok after never s";
    assert_eq!(seconds_after(line, "down after "), Some(16.6));
    assert_eq!(seconds_after(line, "api3 running on vm1 after "), Some(17.2));
    assert_eq!(seconds_after(line, "calls ok after "), None);
    assert_eq!(seconds_after(line, "absent "), None);
    let line = "so1-lab vm-join: vm4 ready after 31.2 s, container answering after 14.0 s";
    assert_eq!(seconds_after(line, "vm4 ready after "), Some(31.2));
    assert_eq!(seconds_after(line, "container answering after "), Some(14.0));
}

#[test]
fn so1_layout_serves_every_cross_call_and_survives_a_cut_link() {
    let missing: Vec<&str> = ["flock", "ip", "nsenter", "containerd", "ctr", "dockerd", "docker-registry", "skopeo", "psql", "jq", "git"]
        .into_iter()
        .filter(|tool| !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()))
        .collect();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !missing.is_empty() || !root {
        skip_or_fail(&format!("the SO1 lab needs root (root: {root}) and these tools: {missing:?} (scripts/setup-host)"));
        return;
    }
    // Declared first, dropped last: the lab is down before another run may take it.
    let _lock = LabLock::acquire();
    // A lab left by an earlier run that was killed goes first.
    let _ = so1_lab("down");
    let _down = Down;
    let started = Instant::now();

    // vm-join needs the lab: without it, it fails at once and says so.
    let early = so1_lab("vm-join");
    assert!(!early.status.success(), "scripts/so1-lab vm-join succeeded without a lab:\n{}", text(&early));
    assert!(String::from_utf8_lossy(&early.stderr).contains("the lab is not up"), "{}", text(&early));

    let up = so1_lab("up");
    assert!(up.status.success(), "scripts/so1-lab up failed:\n{}", text(&up));
    let up_s = started.elapsed().as_secs_f64();

    let test = so1_lab("test");
    let summary = String::from_utf8_lossy(&test.stdout).trim().to_owned();
    assert!(test.status.success(), "scripts/so1-lab test failed:\n{}", text(&test));
    assert!(
        summary.starts_with("so1-lab: 27/27 calls ok (api1@vm1 api2@vm1 api3@vm2)"),
        "every API and cross call from every namespace, api1 and api2 on vm1, api3 on vm2: {summary}"
    );
    println!("{summary} (up took {up_s:.1} s)");

    let drill = so1_lab("drill-cut");
    let out = String::from_utf8_lossy(&drill.stdout).to_string();
    println!("{out}");
    assert!(drill.status.success(), "scripts/so1-lab drill-cut failed:\n{}", text(&drill));
    let line = out.lines().find(|l| l.starts_with("DRILL link-cut: down after")).unwrap_or_else(|| panic!("no drill line:\n{out}"));
    let down = seconds_after(line, "down after ").unwrap_or_else(|| panic!("vm2 never seen down: {line}"));
    let moved = line
        .split("api3 running on ")
        .nth(1)
        .and_then(|rest| seconds_after(rest, " after "))
        .unwrap_or_else(|| panic!("api3 never replaced: {line}"));
    let calls = seconds_after(line, "calls ok after ").unwrap_or_else(|| panic!("calls never recovered: {line}"));
    assert!(line.contains("api3 running on vm1 after"), "api3 replaced on vm1, the other containerd host: {line}");
    assert!(down <= DOWN_TARGET_S, "vm2 declared down after {down} s (target {DOWN_TARGET_S} s)");
    assert!(moved <= REPLACED_TARGET_S, "api3 running elsewhere after {moved} s (target {REPLACED_TARGET_S} s)");
    assert!(calls >= moved, "calls ok ({calls} s) only once api3 runs again ({moved} s)");
    let back = out.lines().find(|l| l.starts_with("DRILL link-cut: link back:")).unwrap_or_else(|| panic!("no link-back line:\n{out}"));
    assert!(back.contains("one api3") && back.contains("calls ok"), "{back}");

    // The VM joins after the drill: api3 never goes to vm4 (its placement is limited to the
    // labelled vm1 and vm2), and the emulated VM's CPU load stays out of the drill's figures.
    // QEMU and libvirt come from scripts/setup-vm (run by vm-join too); without them the
    // VM part is skipped, or fails under CI.
    let setup_vm = Command::new(diplo_tests::repository_root().join("scripts/setup-vm")).output();
    match setup_vm {
        Ok(setup) if setup.status.success() => {
            let vm_join = so1_lab("vm-join");
            let out = String::from_utf8_lossy(&vm_join.stdout).to_string();
            println!("{out}");
            assert!(vm_join.status.success(), "scripts/so1-lab vm-join failed:\n{}", text(&vm_join));
            let line = out
                .lines()
                .find(|l| l.starts_with("so1-lab vm-join: vm4 ready after"))
                .unwrap_or_else(|| panic!("no vm-join line:\n{out}"));
            let ready = seconds_after(line, "vm4 ready after ").unwrap_or_else(|| panic!("no boot-to-ready figure: {line}"));
            let answering = seconds_after(line, "container answering after ").unwrap_or_else(|| panic!("no container figure: {line}"));
            assert!(ready > 0.0 && answering > 0.0, "{line}");
            let status = so1_lab("status");
            let status_out = String::from_utf8_lossy(&status.stdout).to_string();
            assert!(status_out.lines().any(|l| l.starts_with("vm4 ready") && l.contains(VM4)), "status shows the VM:\n{status_out}");
        }
        Ok(setup) => skip_or_fail(&format!("scripts/setup-vm failed: the VM does not join the lab:\n{}", text(&setup))),
        Err(e) => skip_or_fail(&format!("cannot run scripts/setup-vm: {e}")),
    }

    let down_output = so1_lab("down");
    assert!(down_output.status.success(), "scripts/so1-lab down failed:\n{}", text(&down_output));
    let left = leftovers();
    assert!(left.is_empty(), "scripts/so1-lab down left: {left:#?}");
    println!("so1 lab: whole test {:.1} s", started.elapsed().as_secs_f64());
}
