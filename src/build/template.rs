//! Dockerfile templates: from a [`Detection`] and the build's options to a Dockerfile.
//!
//! Every template installs the dependencies from the manifests alone before the source
//! is copied (a one-line source change reuses those layers), builds in a separate stage
//! where there is a build step, and runs as the non-root user `10001:10001` (created
//! with `addgroup`/`adduser` on Alpine and BusyBox images; the `generic` image, whatever
//! it is, only gets `USER 10001:10001`).
//!
//! # Base images
//!
//! One key per kind of stage; operators override them (an air-gapped site points them
//! at its own registry) with `--base-image KEY=IMAGE` or
//! `DIPLO_BASE_IMAGES=KEY=IMAGE,KEY=IMAGE` ([`parse_base_images`]):
//!
//! | key            | default                          | stage                                  |
//! |----------------|----------------------------------|----------------------------------------|
//! | `go`           | `golang:1.24-alpine`             | Go build                               |
//! | `go-runtime`   | `alpine:3.20`                    | Go runtime                             |
//! | `node`         | `node:22-alpine`                 | Node build and runtime                 |
//! | `python`       | `python:3.13-alpine`             | Python dependencies and runtime        |
//! | `rust`         | `rust:1-alpine`                  | Rust build                             |
//! | `rust-runtime` | `alpine:3.20`                    | Rust runtime                           |
//! | `java-maven`   | `maven:3.9-eclipse-temurin-21`   | Java build with Maven                  |
//! | `java-gradle`  | `gradle:8-jdk21`                 | Java build with Gradle                 |
//! | `java-runtime` | `eclipse-temurin:21-jre-alpine`  | Java runtime                           |
//! | `static`       | `busybox:stable`                 | static site server (`httpd`)           |
//! | `static-build` | `node:22-alpine`                 | static site build (with a build command) |
//! | `generic`      | `debian:bookworm-slim`           | generic (a given start command)        |
//!
//! # What a user gives
//!
//! Nothing a user gives adds a Dockerfile line: the start command and the build command
//! are JSON strings in exec form (`CMD ["sh", "-c", "..."]`), variables become `ENV
//! NAME="..."` with `\`, `"` and `$` escaped, names are checked, line breaks and other
//! control characters are refused, the output directory is a plain relative path, base
//! images are image references. Errors name the field (`nixpacks_config.variables`,
//! `nixpacks_config.start_command`, `static_config.build_command`,
//! `static_config.output_dir`, `base_images`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::detect::{Detection, Framework, Language, PackageManager, is_relative_file};
use super::{BuildSpec, Buildpack, validate_args, validate_command, validate_repo_path};

/// The base image keys and their defaults, in the order of the module documentation.
const DEFAULT_IMAGES: [(&str, &str); 12] = [
    ("go", "golang:1.24-alpine"),
    ("go-runtime", "alpine:3.20"),
    ("node", "node:22-alpine"),
    ("python", "python:3.13-alpine"),
    ("rust", "rust:1-alpine"),
    ("rust-runtime", "alpine:3.20"),
    ("java-maven", "maven:3.9-eclipse-temurin-21"),
    ("java-gradle", "gradle:8-jdk21"),
    ("java-runtime", "eclipse-temurin:21-jre-alpine"),
    ("static", "busybox:stable"),
    ("static-build", "node:22-alpine"),
    ("generic", "debian:bookworm-slim"),
];

const KEYS: [&str; 12] = {
    let mut keys = [""; 12];
    let mut i = 0;
    while i < DEFAULT_IMAGES.len() {
        keys[i] = DEFAULT_IMAGES[i].0;
        i += 1;
    }
    keys
};

/// The uid and gid the final stage runs as.
pub const APP_UID: u32 = 10001;

/// The base image of each kind of stage (see the module documentation for the keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages(BTreeMap<String, String>);

impl BaseImages {
    /// The defaults.
    pub fn defaults() -> Self {
        BaseImages(DEFAULT_IMAGES.iter().map(|(key, image)| ((*key).to_owned(), (*image).to_owned())).collect())
    }

    /// The defaults with some keys overridden; an error names an unknown key or an
    /// invalid image reference.
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut images = Self::defaults();
        for (key, image) in overrides {
            check_key(key)?;
            check_image(key, image)?;
            images.0.insert(key.clone(), image.clone());
        }
        Ok(images)
    }

    /// The image for `key` (`""` for a key not in [`BaseImages::keys`]).
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    /// Every key, in documentation order.
    pub fn keys() -> &'static [&'static str] {
        &KEYS
    }
}

impl Default for BaseImages {
    fn default() -> Self {
        Self::defaults()
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if KEYS.contains(&key) { Ok(()) } else { Err(format!("base_images: unknown key {key:?} (accepted: {})", KEYS.join(", "))) }
}

/// An image reference as written after `FROM`: 1 to 512 of letters, digits and
/// `._-:/@`, starting with a letter or digit.
fn check_image(key: &str, image: &str) -> Result<(), String> {
    let valid = !image.is_empty()
        && image.len() <= 512
        && image.as_bytes()[0].is_ascii_alphanumeric()
        && image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b));
    if valid { Ok(()) } else { Err(format!("base_images: {key}={image:?} is not an image reference")) }
}

/// Parses base image overrides: `KEY=IMAGE` (one `--base-image` flag) or a
/// comma-separated list of them (`DIPLO_BASE_IMAGES=static=IMG,python=IMG`). An unknown
/// key, a key given twice, an entry without `=` or an invalid image reference is an
/// error naming it.
pub fn parse_base_images(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut images = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (key, image) =
            entry.split_once('=').ok_or_else(|| format!("base_images: {entry:?} is not KEY=IMAGE (keys: {})", KEYS.join(", ")))?;
        let (key, image) = (key.trim(), image.trim());
        check_key(key)?;
        check_image(key, image)?;
        if images.insert(key.to_owned(), image.to_owned()).is_some() {
            return Err(format!("base_images: {key:?} given twice"));
        }
    }
    Ok(images)
}

/// What the build adds to the template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateOptions {
    /// Base images.
    pub base_images: BaseImages,
    /// Command replacing the template's `CMD` (run with `sh -c`).
    pub start_command: Option<String>,
    /// Environment of every stage (`ENV` lines). A numeric `PORT` also sets the port
    /// the template exposes and passes to servers it starts.
    pub variables: BTreeMap<String, String>,
    /// Shell command run after the source is copied, in the stage that builds (for a
    /// static site: the command producing it, in a `static-build` stage).
    pub build_command: Option<String>,
    /// Static site: the directory served (relative, without `..`).
    pub output_dir: Option<String>,
}

impl TemplateOptions {
    /// The options a build asks for: its base image overrides, the `nixpacks` start
    /// command and variables, the `static` build command and output directory. An
    /// error names the field.
    pub fn for_spec(spec: &BuildSpec) -> Result<Self, String> {
        let nonempty = |text: &str| (!text.trim().is_empty()).then(|| text.to_owned());
        let mut options = TemplateOptions { base_images: BaseImages::with_overrides(&spec.base_images)?, ..Default::default() };
        match &spec.buildpack {
            Buildpack::Nixpacks { start_command, variables } => {
                options.start_command = nonempty(start_command);
                options.variables = variables.clone();
            }
            Buildpack::Static { build_command, output_dir } => {
                options.build_command = nonempty(build_command);
                options.output_dir = nonempty(output_dir);
            }
            Buildpack::Detect | Buildpack::Dockerfile { .. } | Buildpack::Compose { .. } => {}
        }
        Ok(options)
    }
}

/// A rendered Dockerfile and the port its app listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The Dockerfile.
    pub dockerfile: String,
    /// The port (`EXPOSE`d).
    pub port: u16,
}

/// Every language name [`detect`](super::detect::detect) reports (for `GET /api/status`).
pub fn supported_languages() -> Vec<&'static str> {
    Language::ALL.iter().map(|language| language.as_str()).collect()
}

/// The default base images, each once, in key order (for `GET /api/status`).
pub fn default_images() -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for (_, image) in DEFAULT_IMAGES {
        if !images.iter().any(|seen| seen == image) {
            images.push(image.to_owned());
        }
    }
    images
}

/// The Dockerfile for `detection` with `options`. An error for a repository's own
/// Dockerfile or compose file (built as they are), for `generic` without a start
/// command, for a template missing what it needs (a Rust package name, a static site's
/// `index.html`), or for invalid options (naming the field).
pub fn render(detection: &Detection, options: &TemplateOptions) -> Result<Rendered, String> {
    let user = UserInput::check(options)?;
    let port = user.port.unwrap_or(detection.port);
    let base = &options.base_images;
    let mut out = Dockerfile { text: String::new(), user: &user };
    match detection.language {
        Language::Dockerfile => {
            return Err("the repository's own Dockerfile is built as it is: language \"dockerfile\" has no template".into());
        }
        Language::Compose => {
            return Err(
                "a compose file is built service by service (buildpack docker-compose): language \"docker-compose\" has no template".into(),
            );
        }
        Language::Go => go(&mut out, detection, base, port),
        Language::Node => node(&mut out, detection, base, port)?,
        Language::Python => python(&mut out, detection, base, port)?,
        Language::Rust => rust(&mut out, detection, base, port)?,
        Language::Java => java(&mut out, detection, base, port)?,
        Language::Static => static_site(&mut out, detection, base, port)?,
        Language::Generic => generic(&mut out, base, port)?,
    }
    Ok(Rendered { dockerfile: out.text, port })
}

/// What the user gave, checked.
struct UserInput<'a> {
    start_command: Option<&'a str>,
    build_command: Option<&'a str>,
    output_dir: Option<String>,
    variables: &'a BTreeMap<String, String>,
    port: Option<u16>,
}

impl<'a> UserInput<'a> {
    fn check(options: &'a TemplateOptions) -> Result<Self, String> {
        const VARIABLES: &str = "nixpacks_config.variables";
        validate_args(VARIABLES, &options.variables)?;
        for (name, value) in &options.variables {
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(format!("{VARIABLES}.{name}: value contains a line break or a control character"));
            }
        }
        let command = |field: &str, text: &'a Option<String>| -> Result<Option<&'a str>, String> {
            match text.as_deref().filter(|text| !text.trim().is_empty()) {
                Some(text) => validate_command(field, text).map(|()| Some(text)),
                None => Ok(None),
            }
        };
        let start_command = command("nixpacks_config.start_command", &options.start_command)?;
        let build_command = command("static_config.build_command", &options.build_command)?;
        let output_dir = match options.output_dir.as_deref().map(str::trim).filter(|dir| !dir.is_empty()) {
            None => None,
            Some(dir) => {
                const FIELD: &str = "static_config.output_dir";
                validate_repo_path(FIELD, dir)?;
                let dir = dir.trim_start_matches("./").trim_end_matches('/');
                if dir.is_empty() || dir == "." {
                    Some(".".to_owned())
                } else if is_relative_file(dir) {
                    Some(dir.to_owned())
                } else {
                    return Err(format!(
                        "{FIELD}: {dir:?} must be a relative directory of letters, digits, '.', '_' and '-' separated by '/'"
                    ));
                }
            }
        };
        let port = options.variables.get("PORT").and_then(|port| port.trim().parse::<u16>().ok()).filter(|port| *port != 0);
        Ok(UserInput { start_command, build_command, output_dir, variables: &options.variables, port })
    }
}

/// A JSON string: how a value is written into an exec-form instruction.
fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// An exec-form argument list: `["a", "b"]`.
fn exec(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|arg| json(arg)).collect();
    format!("[{}]", args.join(", "))
}

/// A double-quoted `ENV` value: `\`, `"` and `$` escaped (no substitution happens).
fn env_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The non-root user, created on an Alpine or BusyBox image.
const ADD_USER: &str = "addgroup -S -g 10001 app && adduser -S -D -H -u 10001 -G app app";

/// A Dockerfile being written.
struct Dockerfile<'a> {
    text: String,
    user: &'a UserInput<'a>,
}

impl Dockerfile<'_> {
    fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    /// `FROM image [AS name]`, a blank line before every stage but the first.
    fn from(&mut self, image: &str, stage: Option<&str>) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        match stage {
            Some(stage) => self.line(format!("FROM {image} AS {stage}")),
            None => self.line(format!("FROM {image}")),
        }
    }

    /// The user's variables, one `ENV` line each.
    fn variables(&mut self) {
        for (name, value) in self.user.variables {
            let _ = writeln!(self.text, "ENV {name}={}", env_value(value));
        }
    }

    /// `COPY` of the dependency manifests, if any.
    fn manifests(&mut self, manifests: &[String]) {
        if !manifests.is_empty() {
            self.line(format!("COPY {} ./", manifests.join(" ")));
        }
    }

    /// The source, then the user's build command.
    fn source(&mut self) {
        self.line("COPY . .");
        if let Some(command) = self.user.build_command {
            self.line(format!("RUN {}", exec(&["sh", "-c", command])));
        }
    }

    /// The end of the final stage: user, port, command (the user's start command, else
    /// `default`).
    fn finish(&mut self, port: u16, entrypoint: Option<&[&str]>, default: &[&str]) {
        self.line(format!("USER {APP_UID}:{APP_UID}"));
        self.line(format!("EXPOSE {port}"));
        if let Some(entrypoint) = entrypoint {
            self.line(format!("ENTRYPOINT {}", exec(entrypoint)));
        }
        match self.user.start_command {
            Some(command) => self.line(format!("CMD {}", exec(&["sh", "-c", command]))),
            None => self.line(format!("CMD {}", exec(default))),
        }
    }
}

fn go(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) {
    let package = detection.hints.go_package.as_deref().unwrap_or(".");
    out.from(base.get("go"), Some("build"));
    out.line("WORKDIR /src");
    out.line("ENV CGO_ENABLED=0");
    out.variables();
    out.manifests(&detection.hints.manifests);
    if detection.hints.manifests.iter().any(|name| name == "go.mod") {
        out.line("RUN go mod download");
    }
    out.source();
    out.line(format!("RUN {}", exec(&["go", "build", "-trimpath", "-ldflags=-s -w", "-o", "/out/app", package])));
    out.from(base.get("go-runtime"), None);
    out.line(format!("RUN {ADD_USER}"));
    out.line("COPY --from=build /out/app /usr/local/bin/app");
    out.variables();
    out.finish(port, None, &["/usr/local/bin/app"]);
}

/// The command installing a Node project's dependencies (`production`: without the
/// development ones).
fn node_install(detection: &Detection, production: bool) -> String {
    let locked = detection.hints.manifests.len() > 1;
    match detection.package_manager {
        Some(PackageManager::Pnpm) => {
            let mut command = "corepack enable && pnpm install".to_owned();
            if locked {
                command.push_str(" --frozen-lockfile");
            }
            if production {
                command.push_str(" --prod");
            }
            command
        }
        Some(PackageManager::Yarn) if detection.hints.yarn_berry => {
            format!("corepack enable && yarn install{}", if locked { " --immutable" } else { "" })
        }
        Some(PackageManager::Yarn) => {
            let mut command = "yarn install".to_owned();
            if locked {
                command.push_str(" --frozen-lockfile");
            }
            if production {
                command.push_str(" --production");
            }
            command
        }
        _ => {
            let mut command = if locked { "npm ci" } else { "npm install" }.to_owned();
            if production {
                command.push_str(" --omit=dev");
            }
            command
        }
    }
}

/// Node: dependencies from the manifests, a build stage when there is a build script
/// (or a build command), `dumb-init` as PID 1, `npm start` (the package's start
/// script), else `next start` or `node MAIN`.
fn node(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let image = base.get("node");
    let hints = &detection.hints;
    let builds = hints.node_build_script || out.user.build_command.is_some();
    let main;
    let command: Vec<&str> = if hints.node_start_script {
        vec!["npm", "start"]
    } else if detection.framework == Some(Framework::Next) {
        vec!["node_modules/.bin/next", "start"]
    } else if let Some(entry) = &hints.node_main {
        main = entry.clone();
        vec!["node", main.as_str()]
    } else if out.user.start_command.is_some() {
        vec![]
    } else {
        return Err(
            "node: package.json has no start script or main file, and there is no server.js, index.js or app.js: give a start command"
                .into(),
        );
    };
    let runtime_prelude = |out: &mut Dockerfile<'_>| {
        out.line(format!("RUN apk add --no-cache dumb-init && {ADD_USER}"));
        out.line("WORKDIR /app");
        out.line("ENV NODE_ENV=production");
        out.variables();
    };
    if builds {
        out.from(image, Some("build"));
        out.line("WORKDIR /app");
        out.variables();
        out.manifests(&hints.manifests);
        out.line(format!("RUN {}", node_install(detection, false)));
        out.source();
        if hints.node_build_script && out.user.build_command.is_none() {
            out.line("RUN npm run build");
        }
        out.from(image, None);
        runtime_prelude(out);
        out.line("COPY --from=build /app ./");
    } else {
        out.from(image, None);
        runtime_prelude(out);
        out.manifests(&hints.manifests);
        out.line(format!("RUN {}", node_install(detection, true)));
        out.source();
    }
    out.finish(port, Some(&["dumb-init", "--"]), &command);
    Ok(())
}

/// Python: dependencies installed into `/venv` in a `deps` stage (pip, poetry or
/// pipenv), copied into the runtime stage before the source; the framework's server.
fn python(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let image = base.get("python");
    let hints = &detection.hints;
    let module = hints.entry.as_deref().and_then(|entry| entry.strip_suffix(".py")).map(str::to_owned);
    let port_text = port.to_string();
    let bind = format!("0.0.0.0:{port}");
    let app = format!("{}:app", module.as_deref().unwrap_or("main"));
    let wsgi = hints.django_project.as_ref().map(|project| format!("{project}.wsgi"));
    let mut env = vec!["PYTHONDONTWRITEBYTECODE=1".to_owned(), "PYTHONUNBUFFERED=1".to_owned()];
    let command: Vec<&str> = match detection.framework {
        Some(Framework::Flask) => {
            if let Some(module) = &module {
                env.push(format!("FLASK_APP={module}"));
            }
            vec!["flask", "run", "--host", "0.0.0.0", "--port", &port_text]
        }
        Some(Framework::Django) => match &wsgi {
            Some(wsgi) if hints.python_packages.contains("gunicorn") => vec!["gunicorn", "--bind", &bind, wsgi],
            _ => vec!["python", "manage.py", "runserver", &bind],
        },
        Some(Framework::FastApi) => vec!["uvicorn", &app, "--host", "0.0.0.0", "--port", &port_text],
        _ => match &hints.entry {
            Some(entry) => vec!["python", entry],
            None if out.user.start_command.is_some() => vec![],
            None => return Err("python: no app.py, main.py, server.py or run.py at the root: give a start command".into()),
        },
    };
    let install: Option<(Vec<String>, String)> = match detection.package_manager {
        Some(PackageManager::Poetry) => Some((
            vec!["python -m venv /opt/poetry && /opt/poetry/bin/pip install --no-cache-dir poetry".to_owned()],
            "VIRTUAL_ENV=/venv /opt/poetry/bin/poetry install --no-root --only main --no-interaction".to_owned(),
        )),
        Some(PackageManager::Pipenv) => {
            let lock = if hints.manifests.iter().any(|name| name == "Pipfile.lock") { "" } else { "/opt/pipenv/bin/pipenv lock && " };
            Some((
                vec!["python -m venv /opt/pipenv && /opt/pipenv/bin/pip install --no-cache-dir pipenv".to_owned()],
                format!(
                    "{lock}/opt/pipenv/bin/pipenv requirements > /tmp/requirements.txt && pip install --no-cache-dir -r /tmp/requirements.txt"
                ),
            ))
        }
        Some(PackageManager::Pip) if hints.manifests.iter().any(|name| name == "requirements.txt") => {
            Some((vec![], "pip install --no-cache-dir -r requirements.txt".to_owned()))
        }
        Some(PackageManager::Pip) if !hints.pyproject_requirements.is_empty() => {
            let mut args = vec!["pip", "install", "--no-cache-dir"];
            args.extend(hints.pyproject_requirements.iter().map(String::as_str));
            Some((vec![], exec(&args)))
        }
        _ => None,
    };
    let installs = install.is_some();
    if let Some((tools, install)) = install {
        out.from(image, Some("deps"));
        out.line("WORKDIR /app");
        out.variables();
        let mut venv = "python -m venv /venv".to_owned();
        for tool in tools {
            venv.push_str(" && ");
            venv.push_str(&tool);
        }
        out.line(format!("RUN {venv}"));
        out.line("ENV PATH=\"/venv/bin:$PATH\"");
        // `[project] dependencies` are installed by name (exec form): no manifest to copy.
        if !install.starts_with('[') {
            out.manifests(&hints.manifests);
        }
        out.line(format!("RUN {install}"));
    }
    out.from(image, None);
    out.line(format!("RUN {ADD_USER}"));
    out.line("WORKDIR /app");
    if installs {
        env.push("PATH=\"/venv/bin:$PATH\"".to_owned());
    }
    out.line(format!("ENV {}", env.join(" ")));
    out.variables();
    if installs {
        out.line("COPY --from=deps /venv /venv");
    }
    out.source();
    out.finish(port, None, &command);
    Ok(())
}

/// Rust: dependencies built against a placeholder `main.rs` from the manifests, then
/// the crate; the binary alone in the runtime image.
fn rust(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let binary = detection
        .hints
        .binary
        .as_deref()
        .ok_or("rust: Cargo.toml names no binary ([package] name, default-run or [[bin]] name): is it a workspace root?")?;
    let locked = if detection.hints.manifests.iter().any(|name| name == "Cargo.lock") { " --locked" } else { "" };
    out.from(base.get("rust"), Some("build"));
    out.line("WORKDIR /src");
    out.variables();
    out.manifests(&detection.hints.manifests);
    out.line("# Dependencies only: a placeholder crate (failures surface in the real build below).");
    out.line(format!("RUN mkdir src && echo 'fn main() {{}}' > src/main.rs && (cargo build --release{locked} || true) && rm -rf src"));
    out.source();
    out.line(format!(
        "RUN find . -path ./target -prune -o -name '*.rs' -exec touch {{}} + && cargo build --release{locked} && cp target/release/{binary} /app"
    ));
    out.from(base.get("rust-runtime"), None);
    out.line(format!("RUN {ADD_USER}"));
    out.line(format!("COPY --from=build /app /usr/local/bin/{binary}"));
    out.variables();
    out.finish(port, None, &[&format!("/usr/local/bin/{binary}")]);
    Ok(())
}

/// Java: Maven or Gradle resolve the dependencies from the build files, build the jar
/// (tests skipped), which runs on a JRE.
fn java(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let (image, warm, build, libs) = match detection.package_manager {
        Some(PackageManager::Maven) => {
            (base.get("java-maven"), "mvn -B -q dependency:go-offline || true", "mvn -B -q package -DskipTests", "target")
        }
        Some(PackageManager::Gradle) => {
            (base.get("java-gradle"), "gradle dependencies --no-daemon -q || true", "gradle build -x test --no-daemon -q", "build/libs")
        }
        _ => return Err("java: no pom.xml, build.gradle or build.gradle.kts at the root".into()),
    };
    out.from(image, Some("build"));
    out.line("WORKDIR /src");
    out.variables();
    out.manifests(&detection.hints.manifests);
    out.line("# Dependencies only (failures surface in the real build below).");
    out.line(format!("RUN {warm}"));
    out.source();
    out.line(format!(
        "RUN {build} && jar=\"$(find {libs} -maxdepth 1 -name '*.jar' ! -name '*-plain.jar' ! -name '*-sources.jar' ! -name '*-javadoc.jar' ! -name 'original-*' | head -n 1)\" \
         && [ -n \"$jar\" ] && cp \"$jar\" /app.jar"
    ));
    out.from(base.get("java-runtime"), None);
    out.line(format!("RUN {ADD_USER}"));
    out.line("WORKDIR /app");
    out.variables();
    out.line("COPY --from=build /app.jar /app/app.jar");
    out.finish(port, None, &["java", "-jar", "/app/app.jar"]);
    Ok(())
}

/// Static site: an optional build stage (`static-build`, the Node manifests installed
/// first when there is a `package.json`), then BusyBox `httpd` serving the output
/// directory from `/site`.
fn static_site(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let server = base.get("static");
    let given = out.user.output_dir.clone();
    let source: String = if out.user.build_command.is_some() {
        out.from(base.get("static-build"), Some("build"));
        out.line("WORKDIR /src");
        out.variables();
        if detection.hints.manifests.iter().any(|name| name == "package.json") {
            out.manifests(&detection.hints.manifests);
            out.line(format!("RUN {}", node_install(detection, false)));
        }
        out.source();
        match given.as_deref() {
            Some(".") => {
                out.line("RUN rm -rf .git");
                "--from=build /src".into()
            }
            Some(dir) => format!("--from=build /src/{dir}"),
            None => {
                out.line(
                    "RUN for dir in dist build out public; do if [ -f \"$dir/index.html\" ]; then cp -r \"$dir\" /site && exit 0; fi; done; \
                     echo 'no index.html in dist/, build/, out/ or public/ after the build: set the output directory' >&2; exit 1",
                );
                "--from=build /site".into()
            }
        }
    } else {
        let dir = given
            .or_else(|| detection.hints.static_root.clone())
            .ok_or("static: no index.html at the root or in public/, dist/, build/: give an output directory or a build command")?;
        if dir == "." {
            // The whole repository is the site: everything but the git metadata.
            out.from(server, Some("site"));
            out.line("COPY . /site");
            out.line("RUN rm -rf /site/.git");
            "--from=site /site".into()
        } else {
            dir
        }
    };
    out.from(server, None);
    out.line(format!("RUN {ADD_USER}"));
    out.variables();
    out.line(format!("COPY {source} /site"));
    let port_text = port.to_string();
    out.finish(port, None, &["httpd", "-f", "-v", "-p", &port_text, "-h", "/site"]);
    Ok(())
}

/// Generic: the repository copied into the `generic` image, run with the start command.
fn generic(out: &mut Dockerfile<'_>, base: &BaseImages, port: u16) -> Result<(), String> {
    if out.user.start_command.is_none() {
        return Err("generic: a start command is required (nixpacks_config.start_command)".into());
    }
    out.from(base.get("generic"), None);
    out.line("WORKDIR /app");
    out.variables();
    out.source();
    out.finish(port, None, &[]);
    Ok(())
}
