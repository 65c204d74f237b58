//! Every curl example of the seed documents, run against a real control plane with a
//! real agent (Docker builder, every runtime of this host): the commands are copied into
//! `tests/fixtures/seed-curl-examples.sh` (verbatim where the seed gives one; see its
//! header for the few adjustments an operator makes against a dev control plane), parsed
//! here (method, URL path, headers, `-d` body), sent with the admin's bearer token, and
//! their answers checked for the fields the seed documents.
//!
//! [`EXPECTED_TO_PASS`] lists the examples this tree answers; a listed example that fails
//! fails the test, an unlisted one is reported (with what it answered) but does not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use diplo_tests::{
    ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveAllContainersOnDrop, free_port, unique_name, wait_until,
};
use serde_json::{Value, json};

const BUSYBOX: &str = "127.0.0.1:5000/diplo/busybox:latest";
const FIXTURE: &str = "fixtures/seed-curl-examples.sh";

/// The examples expected to answer as documented on this tree. Extend it as endpoints
/// are added; the test prints the ones that are not listed and what they answered.
const EXPECTED_TO_PASS: &[&str] = &[
    "hybrid-status",
    "hybrid-unified-deploy",
    "hybrid-docker-status",
    "hybrid-lxc-status",
    "hybrid-quick-deploy-auto",
    "hybrid-quick-deploy-docker",
    "hybrid-quick-deploy-lxc",
    "hybrid-manual-deploy",
    "mikrocloud-list-containers",
    "mikrocloud-create-container",
    "mikrocloud-start-container",
    "mikrocloud-stop-container",
    "mikrocloud-restart-container",
    "mikrocloud-build-nixpacks",
    "mikrocloud-build-static",
    "mikrocloud-build-dockerfile",
    "mikrocloud-build-compose",
    "mikrocloud-runtime-info",
    "libgo-list-instances",
    "libgo-get-instance",
    "libgo-stop-instance",
    "libgo-start-instance",
    "libgo-restart-instance",
    "libgo-instance-usage",
    "libgo-cluster-status",
    "libgo-create-instance",
    "libgo-backend-info",
    "libgo-update-instance",
    "libgo-delete-instance",
    "libgo-docker-pause",
    "libgo-docker-unpause",
    "libgo-docker-stats",
    "libgo-docker-list-images",
    "libgo-docker-pull-image",
    "libgo-docker-create-network",
    "libgo-docker-list-networks",
    "libgo-docker-remove-network",
    "libgo-docker-create-volume",
    "libgo-docker-list-volumes",
    "libgo-docker-remove-volume",
    "mikrocloud-delete-container",
];

/// One example of the fixture.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    name: String,
    source: String,
    /// Dotted paths into the JSON answer that must be there.
    fields: Vec<String>,
    curl: Curl,
}

/// What a curl command asks for.
#[derive(Debug, Clone, PartialEq, Default)]
struct Curl {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Splits a shell command line into words: single quotes keep everything, double quotes
/// keep all but `\"` and `\\`, a backslash-newline joins lines, and an unquoted `|` ends
/// the command (what follows is another program).
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let text = text.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '|' => break,
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Reads a curl command: `-X`/`--request`, `-H`/`--header`, `-d`/`--data`/`--data-raw`
/// and the URL; the method defaults to GET, or POST with a body, as curl does.
fn parse_curl(command: &str) -> Result<Curl, String> {
    let words = shell_words(command)?;
    let mut words = words.into_iter();
    if words.next().as_deref() != Some("curl") {
        return Err(format!("not a curl command: {command:?}"));
    }
    let mut curl = Curl::default();
    let mut method = None;
    while let Some(word) = words.next() {
        let mut value = |flag: &str| words.next().ok_or_else(|| format!("{flag} without a value"));
        match word.as_str() {
            "-X" | "--request" => method = Some(value(&word)?),
            "-H" | "--header" => {
                let header = value(&word)?;
                let (name, value) = header.split_once(':').ok_or_else(|| format!("header without a colon: {header:?}"))?;
                curl.headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "-d" | "--data" | "--data-raw" => curl.body = Some(value(&word)?),
            "-s" | "-S" | "-i" | "-sS" | "-f" => {}
            flag if flag.starts_with('-') => return Err(format!("curl flag {flag} is not understood here")),
            _ if !curl.url.is_empty() => return Err(format!("a second URL: {word:?}")),
            _ => curl.url = word,
        }
    }
    if curl.url.is_empty() {
        return Err("no URL".into());
    }
    curl.method = method.unwrap_or_else(|| if curl.body.is_some() { "POST".into() } else { "GET".into() });
    Ok(curl)
}

/// The examples of the fixture, in order.
fn parse_fixture(text: &str) -> Result<Vec<Example>, String> {
    let mut examples = Vec::new();
    let mut current: Option<(String, String, Vec<String>, String)> = None;
    let finish = |current: Option<(String, String, Vec<String>, String)>, examples: &mut Vec<Example>| -> Result<(), String> {
        if let Some((name, source, fields, command)) = current {
            let curl = parse_curl(command.trim()).map_err(|e| format!("example {name}: {e}"))?;
            examples.push(Example { name, source, fields, curl });
        }
        Ok(())
    };
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# example:") {
            finish(current.take(), &mut examples)?;
            current = Some((name.trim().to_owned(), String::new(), Vec::new(), String::new()));
        } else if let Some((_, source, fields, command)) = current.as_mut() {
            if let Some(text) = line.strip_prefix("# source:") {
                *source = text.trim().to_owned();
            } else if let Some(text) = line.strip_prefix("# fields:") {
                *fields = text.split_whitespace().map(str::to_owned).collect();
            } else if line.starts_with('#') && command.is_empty() {
                return Err(format!("unknown header line {line:?}"));
            } else if line.starts_with('#') {
                // A comment after the command ends the example's text.
                finish(current.take(), &mut examples)?;
            } else if !line.trim().is_empty() || !command.is_empty() {
                command.push_str(line);
                command.push('\n');
            }
        }
    }
    finish(current, &mut examples)?;
    Ok(examples)
}

/// A JSON text without its `// ...` annotations (outside strings), as a reader drops them.
fn strip_annotations(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        let (mut in_string, mut escaped, mut cut) = (false, false, line.len());
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if in_string => escaped = true,
                b'"' => in_string = !in_string,
                b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(line[..cut].trim_end());
        out.push('\n');
    }
    out
}

/// The path (and query) of a URL, its scheme and authority dropped.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// How an example's request is adjusted to this test's cluster (see the fixture's header).
struct Adjust<'a> {
    /// Seed name → the unique one used here.
    names: BTreeMap<String, String>,
    /// Seed repository URL → a local repository.
    repos: &'a Repos,
    /// `{id}`: the container the create example made.
    container: Option<String>,
    /// `{instance}`: an instance of the test's own deployment.
    instance: String,
}

impl Adjust<'_> {
    fn name(&mut self, seed: &str) -> String {
        self.names.entry(seed.to_owned()).or_insert_with(|| unique_name(seed)).clone()
    }

    fn path(&mut self, url: &str) -> Result<String, String> {
        let mut path = url_path(url).to_owned();
        if path.contains("{id}") {
            let id = self.container.clone().ok_or("{id}: the create example made no container")?;
            path = path.replace("{id}", &id);
        }
        path = path.replace("{instance}", &self.instance);
        // A name in the path (the removal of a network the example made, say).
        let segments: Vec<String> =
            path.split('/').map(|segment| self.names.get(segment).cloned().unwrap_or_else(|| segment.to_owned())).collect();
        Ok(segments.join("/"))
    }

    fn body(&mut self, body: &str) -> Result<String, String> {
        let text = strip_annotations(body);
        let mut value: Value =
            serde_json::from_str(&text).map_err(|e| format!("the body is not JSON once annotated lines are read: {e}"))?;
        if let Some(object) = value.as_object_mut() {
            // The stand-in for a Docker Hub image serves HTTP on port 80 and keeps running,
            // as nginx does.
            let replaced = object.get("image").and_then(Value::as_str).is_some_and(|image| !image.starts_with("127.0.0.1:"));
            if replaced && object.contains_key("name") && !object.contains_key("command") {
                object.insert("command".into(), json!(["httpd", "-f", "-p", "80", "-h", "/tmp"]));
            }
            for (key, field) in object.iter_mut() {
                match (key.as_str(), field.as_str()) {
                    ("name", Some(name)) => *field = json!(self.name(name)),
                    ("image", Some(image)) if !image.starts_with("127.0.0.1:") => *field = json!(BUSYBOX),
                    ("repo_url" | "git_repo", Some(url)) => *field = json!(self.repos.for_seed_url(url)),
                    ("ports", _) => {
                        if let Some(ports) = field.as_object() {
                            *field = ports.values().map(|container| (free_port().to_string(), container.clone())).collect();
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(value.to_string())
    }
}

/// Local git repositories standing for the seed's github ones, one per seed URL, with
/// sources matching its name (the agent may clone from their directory).
struct Repos {
    repos: diplo_tests::git_repos::GitRepos,
}

impl Repos {
    fn new() -> Repos {
        Repos { repos: diplo_tests::git_repos::GitRepos::new("diplo-seed-repos-") }
    }

    fn for_seed_url(&self, url: &str) -> String {
        let base = url.rsplit('/').next().unwrap_or(url).trim_end_matches(".git");
        let path = self.repos.root().join(base);
        if !path.exists() {
            let files: &[(&str, &str)] = match base {
                "node-app" => &[("package.json", r#"{"scripts":{"start":"node server.js"}}"#), ("server.js", "")],
                "python-app" => &[("requirements.txt", ""), ("app.py", "print('hello')\n")],
                "static-site" => &[("package.json", r#"{"scripts":{"build":"mkdir -p dist"}}"#), ("index.html", "hello\n")],
                "docker-app" => &[("Dockerfile", "FROM 127.0.0.1:5000/diplo/busybox:latest\nARG VERSION\nRUN echo $VERSION\n")],
                "compose-app" => &[
                    ("docker-compose.yml", "services:\n  web:\n    build: .\n"),
                    ("Dockerfile", "FROM 127.0.0.1:5000/diplo/busybox:latest\n"),
                ],
                _ => &[("go.mod", "module example.com/app\n\ngo 1.19\n"), ("main.go", "package main\n\nfunc main() {}\n")],
            };
            self.repos.create(base, files);
        }
        diplo_tests::git_repos::file_url(&path)
    }
}

/// The value at a dotted path (`system.os`), when there.
fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |value, key| value.get(key))
}

/// Sends a request with the example's own headers plus the bearer token; returns the
/// status and body.
fn send(
    url: String,
    method: &str,
    headers: &[(String, String)],
    authorization: String,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let headers = headers.to_vec();
    std::thread::spawn(move || {
        let client =
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).no_proxy().build().map_err(|e| e.to_string())?;
        let mut request = client.request(method.clone(), &url).header("Authorization", authorization);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        Ok((status, response.text().map_err(|e| e.to_string())?))
    })
    .join()
    .map_err(|_| "the HTTP thread panicked".to_owned())?
}

/// What an example answered and whether that is what the seed documents.
struct Outcome {
    ok: bool,
    summary: String,
}

fn check(example: &Example, status: u16, body: &str) -> Outcome {
    let short: String = body.chars().take(300).collect();
    if !(200..300).contains(&status) {
        return Outcome { ok: false, summary: format!("HTTP {status}: {short}") };
    }
    if example.fields.is_empty() && body.trim().is_empty() {
        return Outcome { ok: true, summary: format!("HTTP {status}") };
    }
    let Ok(json) = serde_json::from_str::<Value>(body) else {
        return Outcome { ok: false, summary: format!("HTTP {status}, not JSON: {short}") };
    };
    let missing: Vec<&str> = example.fields.iter().map(String::as_str).filter(|path| field(&json, path).is_none()).collect();
    if missing.is_empty() {
        Outcome { ok: true, summary: format!("HTTP {status}") }
    } else {
        Outcome { ok: false, summary: format!("HTTP {status} without {missing:?}: {short}") }
    }
}

fn fixture() -> Vec<Example> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_fixture(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_fixture_holds_the_seeds_curl_commands_and_each_parses() {
    let examples = fixture();
    let names: Vec<&str> = examples.iter().map(|e| e.name.as_str()).collect();
    let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(distinct.len(), names.len(), "repeated example names: {names:?}");
    for listed in EXPECTED_TO_PASS {
        assert!(names.contains(listed), "{listed} is listed but not in the fixture");
    }
    for example in &examples {
        assert!(!example.source.is_empty(), "{} names no source", example.name);
        assert!(example.curl.url.starts_with("http://localhost:"), "{}: {}", example.name, example.curl.url);
    }
    // The seed's deploy body, annotation and all.
    let deploy = examples.iter().find(|e| e.name == "hybrid-unified-deploy").expect("the unified deploy example");
    assert_eq!(deploy.curl.method, "POST");
    assert_eq!(url_path(&deploy.curl.url), "/api/unified/deploy");
    assert_eq!(deploy.curl.headers, vec![("Content-Type".to_owned(), "application/json".to_owned())]);
    let body = deploy.curl.body.as_deref().expect("a body");
    assert!(body.contains("// opcional"), "copied verbatim: {body}");
    let read: Value = serde_json::from_str(&strip_annotations(body)).expect("JSON once the annotation is dropped");
    assert_eq!(read["runtime_type"], "docker");
    assert_eq!(read["environment"]["ENV"], "production");
    // `| jq` is another program.
    let status = examples.iter().find(|e| e.name == "hybrid-status").expect("the status example");
    assert_eq!((status.curl.method.as_str(), url_path(&status.curl.url)), ("GET", "/api/status"));
}

#[test]
fn shell_words_and_curl_parsing() {
    let cases: &[(&str, &[&str])] = &[
        ("curl http://h/x | jq", &["curl", "http://h/x"]),
        ("curl -d '{\"a\": \"b c\"}' \\\n  http://h/", &["curl", "-d", "{\"a\": \"b c\"}", "http://h/"]),
        ("curl -H \"X: \\\"q\\\"\" \"http://h/?a=1&b=2\"", &["curl", "-H", "X: \"q\"", "http://h/?a=1&b=2"]),
        ("curl 'it''s'", &["curl", "its"]),
    ];
    for (text, words) in cases {
        assert_eq!(shell_words(text).as_deref(), Ok(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>()[..]), "{text}");
    }
    assert!(shell_words("curl 'open").is_err());
    let posted = parse_curl("curl -d '{}' http://localhost:1/a").expect("parses");
    assert_eq!((posted.method.as_str(), posted.body.as_deref()), ("POST", Some("{}")));
    assert_eq!(parse_curl("curl -X DELETE http://localhost:1/a/b").expect("parses").method, "DELETE");
    assert!(parse_curl("curl --upload-file x http://h/").is_err(), "unknown flags are refused, not ignored");
    assert!(parse_curl("wget http://h/").is_err());
    assert_eq!(url_path("http://localhost:3000/api/v1/x?y=1"), "/api/v1/x?y=1");
    assert_eq!(strip_annotations("{\"a\": \"http://x\",  // note\n\"b\": 1}"), "{\"a\": \"http://x\",\n\"b\": 1}\n");
}

#[test]
fn every_seed_curl_example_answers_with_the_documented_fields() {
    let examples = fixture();
    let repos = Repos::new();
    let every_stage = "go,go-runtime,node,python,rust,rust-runtime,java-maven,java-gradle,java-runtime,static,static-build,generic"
        .split(',')
        .map(|key| format!("{key}={BUSYBOX}"))
        .collect::<Vec<_>>()
        .join(",");
    let control_plane = ControlPlane::start(ControlPlaneOptions {
        // Every base image is the local busybox: the builds the examples start never pull
        // from outside (they fail fast instead, which is not what is tested here).
        env: vec![("DIPLO_BASE_IMAGES".to_owned(), every_stage)],
        ..ControlPlaneOptions::fast(Duration::from_secs(30))
    });
    let token = control_plane.join_token(&[]);
    let root = repos.repos.root().display().to_string();
    let (_agent, _node) = control_plane.start_ready_agent_with_env(
        &unique_name("seed-node"),
        Some(&token),
        &[("DIPLO_BUILDERS", "docker"), ("DIPLO_BUILD_FILE_REPOS", root.as_str())],
    );
    // After the agent: dropped while it still runs the containers.
    let _containers = RemoveAllContainersOnDrop(&control_plane);

    // A deployment of the test's own, whose instance the LibGo instance examples use.
    let own = unique_name("seed-own");
    let _own = DeleteDeploymentOnDrop(&control_plane, own.clone());
    let body = json!({"name": own, "image": BUSYBOX, "command": ["sleep", "3600"], "runtime_type": "docker"});
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(body));
    assert!((200..300).contains(&created.status), "{}", created.body);
    let instance = wait_until("an instance of the test's deployment", Duration::from_secs(60), Duration::from_millis(300), || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{own}"));
        d["instances"]
            .as_array()
            .and_then(|list| list.iter().find(|i| i["status"] == "running"))
            .and_then(|i| i["id"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("{d:#}"))
    });

    let mut adjust = Adjust { names: BTreeMap::new(), repos: &repos, container: None, instance };
    let mut deployments: Vec<DeleteDeploymentOnDrop<'_>> = Vec::new();
    let mut builds: Vec<String> = Vec::new();
    let authorization = format!("Bearer {}", control_plane.admin_token());
    let mut report = Vec::new();
    for example in &examples {
        let request = adjust.path(&example.curl.url).and_then(|path| {
            let body = example.curl.body.as_deref().map(|b| adjust.body(b)).transpose()?;
            Ok((path, body))
        });
        let outcome = match request {
            Err(reason) => Outcome { ok: false, summary: format!("not sent: {reason}") },
            Ok((path, body)) => {
                match send(control_plane.rest_url(&path), &example.curl.method, &example.curl.headers, authorization.clone(), body) {
                    Err(reason) => Outcome { ok: false, summary: reason },
                    Ok((status, text)) => {
                        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        if (200..300).contains(&status) {
                            if example.name == "mikrocloud-create-container" {
                                adjust.container = answer["id"].as_str().map(str::to_owned);
                            }
                            // The update replaced the instance by one of a new revision.
                            if example.name == "libgo-update-instance" {
                                let revision = answer["revision"].clone();
                                adjust.instance =
                                    wait_until("the updated instance", Duration::from_secs(90), Duration::from_millis(300), || {
                                        let d = control_plane.rest_json(&format!("/api/v1/deployments/{own}"));
                                        d["instances"]
                                            .as_array()
                                            .and_then(|list| list.iter().find(|i| i["status"] == "running" && i["revision"] == revision))
                                            .and_then(|i| i["id"].as_str().map(str::to_owned))
                                            .ok_or_else(|| format!("{d:#}"))
                                    });
                            }
                            if path.starts_with("/api/unified/deploy") || path.starts_with("/api/deploy") {
                                if let Some(name) = answer["name"].as_str() {
                                    deployments.push(DeleteDeploymentOnDrop(&control_plane, name.to_owned()));
                                }
                                builds.extend(answer["build_id"].as_str().map(str::to_owned));
                            }
                            if path == "/api/v1/images/build" {
                                builds.extend(answer["id"].as_str().map(str::to_owned));
                            }
                        }
                        check(example, status, &text)
                    }
                }
            }
        };
        report.push((example.name.clone(), example.curl.method.clone(), url_path(&example.curl.url).to_owned(), outcome));
    }

    // The builds the examples started end (cancelled if still running) before the agent goes.
    for id in &builds {
        let _ = send(control_plane.rest_url(&format!("/api/v1/images/build/{id}")), "DELETE", &[], authorization.clone(), None);
        wait_until(&format!("build {id} ends"), Duration::from_secs(120), Duration::from_millis(500), || {
            let build = control_plane.rest_json(&format!("/api/v1/images/build/{id}"));
            let status = build["status"].as_str().and_then(|s| s.parse::<diplo_api::build::BuildStatus>().ok());
            if status.is_some_and(|s| s.is_final()) { Ok(()) } else { Err(format!("{build:#}")) }
        });
    }
    drop(deployments);

    let mut failed = Vec::new();
    eprintln!("seed curl examples ({} in {FIXTURE}):", report.len());
    for (name, method, path, outcome) in &report {
        let listed = EXPECTED_TO_PASS.contains(&name.as_str());
        let verdict = match (outcome.ok, listed) {
            (true, true) => "pass",
            (true, false) => "pass (not listed in EXPECTED_TO_PASS: list it)",
            (false, true) => "FAIL",
            (false, false) => "fails (not listed)",
        };
        eprintln!("  {verdict:<12} {name:<32} {method} {path}: {}", outcome.summary);
        if listed && !outcome.ok {
            failed.push(format!("{name} ({method} {path}): {}", outcome.summary));
        }
    }
    assert!(failed.is_empty(), "listed seed examples that do not answer as documented:\n{}", failed.join("\n"));
}
