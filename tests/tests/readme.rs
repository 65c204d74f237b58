//! The README's first command, run the way a new user runs it: from a clean checkout of
//! the repository (tracked files only: no `target/`, no `.diplo/`), `scripts/dev` builds,
//! installs and starts the control plane with its local agent; then the README's
//! `diplo nodes ls` / `diplo status` and its first container example work against it, and
//! the control plane stops on SIGTERM.
//!
//! The commands are read from README.md itself, so a README that drifts from what works
//! fails here. The build is the one the test suite already made (`DIPLO_PROFILE=dev`, the
//! same target directory; the checkout keeps the files' modification times, so cargo
//! finds everything fresh). Ports are taken by the system (`DIPLO_REST_ADDR` and
//! `DIPLO_GRPC_ADDR` set to port 0): a developer's own `scripts/dev` may be running.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use diplo_tests::{Process, output_with_timeout, remove_cargo_test_env, target_dir, wait_until};

/// `scripts/dev` runs `scripts/setup-host` (idempotent) and a no-op build before it starts.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(600);

/// The shell lines of the fenced `sh` blocks of `markdown`, in order, comments and
/// blank lines dropped, continuation lines (`\` at the end) joined.
fn sh_blocks(markdown: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap_or_default()),
            (Some(block), text) => {
                let text = text.split(" #").next().unwrap_or_default().trim_end();
                if let Some(head) = text.strip_suffix('\\') {
                    pending.push_str(head);
                    continue;
                }
                pending.push_str(text);
                let command = std::mem::take(&mut pending);
                if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
                    block.push(command.trim().to_owned());
                }
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The blocks of the README section whose heading starts with `heading`.
fn section_blocks(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme.find(&format!("\n{heading}")).unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let rest = &readme[start + 1..];
    let end = rest[1..].find("\n## ").map_or(rest.len(), |at| at + 1);
    sh_blocks(&rest[..end])
}

/// A copy of the working tree's tracked (and new, not ignored) files, modification times kept.
fn clean_checkout(into: &Path) {
    // Directories get their modification times too: a build script watching a directory
    // (diplo-api's proto/) would otherwise rerun and rebuild the whole workspace.
    let script = format!(
        "git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C {into} \
         && cd {into} && find . -type d -print0 | while IFS= read -r -d '' d; do touch -r \"$OLDPWD/$d\" \"$d\" 2>/dev/null || true; done",
        into = into.display()
    );
    let mut command = Command::new("bash");
    command.arg("-c").arg(script).current_dir(diplo_tests::repository_root());
    let output = output_with_timeout(command, Duration::from_secs(120));
    assert!(output.status.success(), "copying the checkout failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(into.join("scripts/dev").is_file(), "the checkout has no scripts/dev");
    assert!(!into.join("target").exists() && !into.join(".diplo").exists(), "the checkout is not clean");
}

/// A user's shell in the checkout: the installed binaries first on PATH, no test
/// variables of ours or cargo's.
fn shell(checkout: &Path, bin_dir: &Path, line: &str) -> Command {
    let mut command = Command::new("bash");
    command.arg("-c").arg(format!("set -euo pipefail; {line}")).current_dir(checkout);
    remove_cargo_test_env(&mut command);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("DIPLO_") && n != "DIPLO_LOG") {
            command.env_remove(name);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    command.env("PATH", format!("{}:{path}", bin_dir.display()));
    command
}

fn run(checkout: &Path, bin_dir: &Path, line: &str) -> Output {
    output_with_timeout(shell(checkout, bin_dir, line), Duration::from_secs(120))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Removes the README's example container however the test ends.
struct RemoveContainer<'a> {
    checkout: &'a Path,
    bin_dir: &'a Path,
    name: String,
}

impl Drop for RemoveContainer<'_> {
    fn drop(&mut self) {
        let mut command = shell(self.checkout, self.bin_dir, &format!("diplo containers rm -f {}", self.name));
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        if let Ok(mut child) = command.spawn() {
            let _ = child.wait();
        }
    }
}

#[test]
fn readme_commands_work_from_a_clean_checkout() {
    let readme = std::fs::read_to_string(diplo_tests::repository_root().join("README.md")).expect("README.md");
    let two_commands = section_blocks(&readme, "## Two commands");
    assert!(two_commands.len() >= 3, "README's two-commands section lost its blocks: {two_commands:?}");
    let start = &two_commands[0];
    assert_eq!(start.len(), 1, "the first command is one line: {start:?}");
    let then = &two_commands[1];
    assert!(then.iter().any(|l| l.starts_with("diplo nodes ls")), "README no longer shows `diplo nodes ls`: {then:?}");
    let containers = section_blocks(&readme, "## Containers");
    let example = containers.first().expect("README's containers section has a block");
    let run_line = example.first().expect("a first container example").clone();
    assert!(run_line.starts_with("diplo containers run "), "{run_line}");
    let curl_line = example.get(1).filter(|l| l.starts_with("curl ")).expect("the example is followed by a curl").clone();
    let readme_name =
        run_line.split_whitespace().skip_while(|w| *w != "--name").nth(1).expect("the example names its container").to_owned();

    // The example's host port must not be one the control plane itself listens on by default.
    let published = run_line
        .split_whitespace()
        .skip_while(|w| *w != "-p")
        .nth(1)
        .and_then(|p| p.split(':').next())
        .expect("the example publishes a port")
        .to_owned();
    for flag in ["--rest-addr", "--grpc-addr"] {
        let row = readme.lines().find(|l| l.starts_with(&format!("| `{flag}`"))).unwrap_or_else(|| panic!("README documents {flag}"));
        let default_port = row.rsplit(':').next().map(|p| p.trim_matches(|c: char| !c.is_ascii_digit())).unwrap_or_default();
        assert_ne!(
            published, default_port,
            "the README's first container example publishes host port {published}, which {flag} holds by default"
        );
    }

    // The example runs as written but for its container name and host port: this run's
    // own, so that two runs (or a developer's `scripts/dev`) on one host never meet.
    let name = diplo_tests::unique_name(&readme_name);
    let port = diplo_tests::free_port().to_string();
    let run_line = isolate(&run_line, (&readme_name, &name), (&published, &port));
    let curl_line = isolate(&curl_line, (&readme_name, &name), (&published, &port));
    assert!(run_line.contains(&name) && run_line.contains(&format!("{port}:")), "{run_line}");
    assert!(curl_line.contains(&format!(":{port}")), "the curl does not ask the example's port: {curl_line}");

    let dir = tempfile::Builder::new().prefix("diplo-readme-").tempdir().expect("tempdir");
    let checkout = dir.path().join("diplo");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&checkout).expect("checkout dir");
    clean_checkout(&checkout);

    // 1. The first command, as written, with the suite's build and system-chosen ports.
    let mut dev = shell(&checkout, &bin_dir, &start[0]);
    dev.env("DIPLO_PROFILE", "dev")
        .env("CARGO_TARGET_DIR", target_dir())
        .env("DIPLO_BIN_DIR", &bin_dir)
        .env("DIPLO_REST_ADDR", "127.0.0.1:0")
        .env("DIPLO_GRPC_ADDR", "127.0.0.1:0")
        .stdin(std::process::Stdio::null());
    let mut process = Process::spawn("scripts/dev", dev, &dir.path().join("dev"));
    let _cleanup = RemoveContainer { checkout: &checkout, bin_dir: &bin_dir, name: name.clone() };

    wait_until("the local node is ready in `diplo nodes ls -o json`", DEV_START_TIMEOUT, Duration::from_secs(1), || {
        if let Some(status) = process.try_exit() {
            panic!("scripts/dev exited ({status}) before the node was ready:\n{}", process.logs());
        }
        let output = run(&checkout, &bin_dir, "diplo nodes ls -o json");
        let out = text(&output);
        let ready = output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|nodes| nodes.iter().any(|n| n["status"] == "ready"));
        if ready { Ok(()) } else { Err(out) }
    });
    for binary in ["diplo", "diplo-agent", "diplo-control-plane"] {
        assert!(bin_dir.join(binary).is_file(), "scripts/dev did not install {binary}");
    }

    // 2. The commands the README says to try next.
    for line in then {
        let output = run(&checkout, &bin_dir, line);
        assert!(output.status.success(), "`{line}` failed: {}", text(&output));
        if line.starts_with("diplo nodes ls") {
            let out = text(&output);
            assert!(out.contains("ready"), "`{line}` shows no ready node:\n{out}");
            assert!(out.contains("docker"), "`{line}` shows no runtime:\n{out}");
        }
    }

    // 3. The first container example, then the page it serves.
    let output = run(&checkout, &bin_dir, &run_line);
    assert!(output.status.success(), "`{run_line}` failed: {}", text(&output));
    wait_until(&format!("`{curl_line}` answers hello"), Duration::from_secs(60), Duration::from_millis(500), || {
        let output = run(&checkout, &bin_dir, &curl_line);
        let out = text(&output);
        if out.contains("hello") { Ok(()) } else { Err(out) }
    });
    let output = run(&checkout, &bin_dir, &format!("diplo containers rm -f {name}"));
    assert!(output.status.success(), "removing {name} failed: {}", text(&output));

    // 4. It stops when asked.
    let killed = Command::new("kill").arg("-TERM").arg(process.pid().to_string()).status().expect("kill");
    assert!(killed.success());
    let status = process.wait_exit(Duration::from_secs(60));
    assert!(status.is_some(), "the control plane did not stop within 60 s of SIGTERM:\n{}", process.logs());
}

/// `line` with the container name `name.0` (after `--name`) and the host port `port.0`
/// (of `-p HOST:CONTAINER`, or `localhost:HOST` / `127.0.0.1:HOST`) replaced by `name.1`
/// and `port.1`; every other word, quoting included, is kept as it is.
fn isolate(line: &str, name: (&str, &str), port: (&str, &str)) -> String {
    let mut previous = "";
    let mut words = Vec::new();
    for word in line.split(' ') {
        let replaced = match previous {
            "--name" if word == name.0 => name.1.to_owned(),
            "-p" | "--publish" => match word.split_once(':') {
                Some((host, container)) if host == port.0 => format!("{}:{container}", port.1),
                _ => word.to_owned(),
            },
            _ => ["localhost", "127.0.0.1"]
                .iter()
                .find(|host| word == format!("{host}:{}", port.0))
                .map_or_else(|| word.to_owned(), |host| format!("{host}:{}", port.1)),
        };
        previous = word;
        words.push(replaced);
    }
    words.join(" ")
}

#[test]
fn examples_are_isolated_by_name_and_host_port_only() {
    let swap = |line: &str| isolate(line, ("web", "web-1a2b"), ("8088", "40123"));
    let cases = [
        (
            "diplo containers run --name web -p 8088:80 img /bin/sh -c 'echo web > /www/index.html && exec httpd -f -p 80 -h /www'",
            "diplo containers run --name web-1a2b -p 40123:80 img /bin/sh -c 'echo web > /www/index.html && exec httpd -f -p 80 -h /www'",
        ),
        ("curl -s localhost:8088", "curl -s localhost:40123"),
        ("curl -s 127.0.0.1:8088/index.html", "curl -s 127.0.0.1:8088/index.html"),
        ("diplo containers run --name other -p 9000:8088 img", "diplo containers run --name other -p 9000:8088 img"),
        ("diplo containers rm -f web", "diplo containers rm -f web"),
    ];
    for (line, expected) in cases {
        assert_eq!(swap(line), expected, "{line}");
    }
}

#[test]
fn sh_blocks_are_read_like_a_shell_reads_them() {
    let markdown = "text\n```sh\nscripts/dev\n```\n\n```sh\ndiplo nodes ls   # this host\n# a comment\n\ndiplo status\n```\n```sh\ndiplo containers run --name web \\\n    img \\\n    sh -c 'x'\ncurl -s localhost:1 # hello\n```\n```toml\nnot = 1\n```\n";
    let blocks = sh_blocks(markdown);
    assert_eq!(
        blocks,
        vec![
            vec!["scripts/dev".to_owned()],
            vec!["diplo nodes ls".to_owned(), "diplo status".to_owned()],
            vec!["diplo containers run --name web img sh -c 'x'".to_owned(), "curl -s localhost:1".to_owned()],
        ]
    );
}
