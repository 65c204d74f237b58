//! Dockerfile templates: from a [`Detection`] and the build's options to a Dockerfile.
//!
//! Every template installs the dependencies from the manifests alone before the source
//! is copied (a one-line source change reuses those layers), builds in a separate stage
//! where there is a build step, and runs as the non-root user `10001:10001`: created as
//! `app` with the image's `useradd`, else BusyBox's `adduser`, else an `/etc/passwd`
//! line, so a Debian or bare BusyBox mirror of a base image works too; the `static` and
//! `generic` images, whatever they are, only get `USER 10001:10001` (BusyBox `httpd`
//! needs no account). Templates use Alpine's `apk` only for `dumb-init` (`node`) and
//! `musl-dev` (`rust`).
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
    /// static site: the command producing it, in a `static-build` stage; for Node it
    /// replaces `npm run build`).
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

/// The non-root user `app` (10001:10001, with a home: npm and pip want one), created
/// with the base image's own tools: `useradd` (Debian, Ubuntu, Alpine with shadow),
/// else BusyBox's `adduser` (Alpine), else an `/etc/passwd` line (a bare BusyBox).
const ADD_USER: &str = concat!(
    "if command -v useradd >/dev/null; then groupadd -g 10001 app && useradd -u 10001 -g app -m -s /sbin/nologin app; \\\n",
    "    elif command -v adduser >/dev/null; then addgroup -S -g 10001 app && adduser -S -D -u 10001 -G app app; \\\n",
    "    else echo 'app:x:10001:10001::/tmp:/sbin/nologin' >> /etc/passwd && echo 'app:x:10001:' >> /etc/group; fi",
);

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
    // A lock file is any manifest but these two.
    let locked = detection.hints.manifests.iter().any(|name| name != "package.json" && name != ".yarnrc.yml");
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
        out.line("RUN apk add --no-cache dumb-init");
        out.line(format!("RUN {ADD_USER}"));
        out.line("WORKDIR /app");
        out.line("ENV NODE_ENV=production");
        out.variables();
    };
    if builds {
        out.from(image, Some("build"));
        out.line("WORKDIR /app");
        out.variables();
        out.manifests(&hints.manifests);
        if !hints.manifests.is_empty() {
            out.line(format!("RUN {}", node_install(detection, false)));
        }
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
        if !hints.manifests.is_empty() {
            out.line(format!("RUN {}", node_install(detection, true)));
        }
        out.source();
    }
    out.finish(port, Some(&["dumb-init", "--"]), &command);
    Ok(())
}

/// Python: dependencies installed with `pip install --target /deps` in a `deps` stage
/// (poetry and pipenv export their lock to a requirements file first), copied into the
/// runtime stage before the source (`PYTHONPATH=/deps`, scripts in `/deps/bin`); the
/// framework's server. `--target` rather than a virtual environment: it needs nothing
/// but `pip`, so a Debian `python3` + `pip` mirror image works as well as the official
/// one.
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
    // (tools installed first, their own layer; the command installing the dependencies
    // into /deps once the manifests are copied)
    const PIP: &str = "pip install --no-cache-dir --target /deps";
    let install: Option<(Option<&str>, String)> = match detection.package_manager {
        Some(PackageManager::Poetry) => {
            const POETRY: &str = "PYTHONPATH=/opt/poetry /opt/poetry/bin/poetry";
            let lock = if hints.manifests.iter().any(|name| name == "poetry.lock") { String::new() } else { format!("{POETRY} lock && ") };
            Some((
                Some("pip install --no-cache-dir --target /opt/poetry poetry poetry-plugin-export"),
                format!("{lock}{POETRY} export --only main --without-hashes -o /tmp/requirements.txt && {PIP} -r /tmp/requirements.txt"),
            ))
        }
        Some(PackageManager::Pipenv) => {
            const PIPENV: &str = "PYTHONPATH=/opt/pipenv /opt/pipenv/bin/pipenv";
            let lock = if hints.manifests.iter().any(|name| name == "Pipfile.lock") { String::new() } else { format!("{PIPENV} lock && ") };
            Some((
                Some("pip install --no-cache-dir --target /opt/pipenv pipenv"),
                format!("{lock}{PIPENV} requirements > /tmp/requirements.txt && {PIP} -r /tmp/requirements.txt"),
            ))
        }
        Some(PackageManager::Pip) if hints.manifests.iter().any(|name| name == "requirements.txt") => {
            Some((None, format!("{PIP} -r requirements.txt")))
        }
        Some(PackageManager::Pip) if !hints.pyproject_requirements.is_empty() => {
            let mut args = vec!["pip", "install", "--no-cache-dir", "--target", "/deps"];
            args.extend(hints.pyproject_requirements.iter().map(String::as_str));
            Some((None, exec(&args)))
        }
        _ => None,
    };
    let installs = install.is_some();
    if let Some((tools, install)) = install {
        out.from(image, Some("deps"));
        out.line("WORKDIR /app");
        out.variables();
        if let Some(tools) = tools {
            out.line(format!("RUN {tools}"));
        }
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
        env.push("PYTHONPATH=/deps".to_owned());
        env.push("PATH=\"/deps/bin:$PATH\"".to_owned());
    }
    out.line(format!("ENV {}", env.join(" ")));
    out.variables();
    if installs {
        out.line("COPY --from=deps /deps /deps");
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
    // C headers for crates with native code (ring, zstd-sys, ...).
    out.line("RUN apk add --no-cache musl-dev");
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
/// (tests skipped; Gradle's `assemble`), which runs on a JRE.
fn java(out: &mut Dockerfile<'_>, detection: &Detection, base: &BaseImages, port: u16) -> Result<(), String> {
    let (image, warm, build, libs) = match detection.package_manager {
        Some(PackageManager::Maven) => {
            (base.get("java-maven"), "mvn -B -q dependency:go-offline || true", "mvn -B package -DskipTests", "target")
        }
        Some(PackageManager::Gradle) => {
            (base.get("java-gradle"), "gradle dependencies --no-daemon -q || true", "gradle assemble --no-daemon", "build/libs")
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
         && if [ -z \"$jar\" ]; then echo 'no jar built in {libs}/' >&2; exit 1; fi && cp \"$jar\" /app.jar"
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
    // No user is created: a bare BusyBox image may have no `adduser`, and `httpd` needs
    // no account, only the numeric `USER`.
    out.from(server, None);
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::build::detect::{MemoryRepo, detect};

    /// A repository's files.
    type Files<'a> = Vec<(&'a str, &'a str)>;

    /// Every Dockerfile instruction keyword.
    const INSTRUCTIONS: &[&str] = &[
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ];

    /// The logical lines of a Dockerfile: physical lines (split at any line break, more
    /// eagerly than the parser) with those ending in `\` joined to the next.
    fn logical_lines(dockerfile: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut current: Option<String> = None;
        for line in dockerfile.split(['\n', '\r']) {
            let joined = match current.take() {
                Some(mut previous) => {
                    previous.push_str(line);
                    previous
                }
                None => line.to_owned(),
            };
            match joined.trim_end().strip_suffix('\\') {
                Some(head) => current = Some(head.to_owned()),
                None => lines.push(joined),
            }
        }
        lines.extend(current);
        lines
    }

    /// The instructions of a Dockerfile, in order.
    fn instructions(dockerfile: &str) -> Vec<String> {
        logical_lines(dockerfile)
            .iter()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .filter(|word| INSTRUCTIONS.contains(&word.as_str()))
            .collect()
    }

    /// The first word of every physical line: what user input must never change.
    fn skeleton(dockerfile: &str) -> Vec<String> {
        dockerfile.split(['\n', '\r']).map(|line| line.split_whitespace().next().unwrap_or_default().to_owned()).collect()
    }

    fn options() -> TemplateOptions {
        TemplateOptions::default()
    }

    fn rendered(files: &[(&str, &str)], language: Option<Language>, options: &TemplateOptions) -> Rendered {
        let detection = detect(&MemoryRepo::of(files), language).expect("detect");
        render(&detection, options).unwrap_or_else(|e| panic!("{files:?}: {e}"))
    }

    /// Checks what every template promises, whatever the language: instructions only
    /// (no continuation lines), a `FROM` first, the manifests and the dependency
    /// installation before the source in every stage, the final stage running as
    /// `10001:10001`, the port exposed, the command in exec form.
    fn check_structure(name: &str, dockerfile: &str, port: u16) {
        let logical = logical_lines(dockerfile);
        let lines: Vec<&str> = logical.iter().map(String::as_str).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
        for line in &lines {
            let word = line.split_whitespace().next().unwrap_or_default();
            assert!(INSTRUCTIONS.contains(&word), "{name}: {line:?} is not an instruction");
        }
        for (line, next) in dockerfile.lines().zip(dockerfile.lines().skip(1)) {
            if line.ends_with('\\') {
                assert!(line.starts_with("RUN ") || line.starts_with("    "), "{name}: only RUN continues: {line:?}");
                assert!(next.starts_with("    "), "{name}: a continuation is indented: {next:?}");
            }
        }
        assert!(lines.first().is_some_and(|line| line.starts_with("FROM ")), "{name}: starts with FROM");
        let stages: Vec<&[&str]> = {
            let starts: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.starts_with("FROM ")).map(|(i, _)| i).collect();
            starts.iter().enumerate().map(|(n, &start)| &lines[start..*starts.get(n + 1).unwrap_or(&lines.len())]).collect()
        };
        for stage in &stages {
            if let Some(source) = stage.iter().position(|line| *line == "COPY . ." || line.starts_with("COPY . /")) {
                let after = &stage[source..];
                assert!(
                    !after.iter().any(|line| line.starts_with("COPY ") && line.ends_with(" ./") && !line.starts_with("COPY --from")),
                    "{name}: a manifest copied after the source"
                );
                for install in [
                    "npm ci",
                    "npm install",
                    "yarn install",
                    "pnpm install",
                    "pip install",
                    "poetry install",
                    "go mod download",
                    "dependency:go-offline",
                ] {
                    assert!(!after.iter().any(|line| line.contains(install)), "{name}: {install} after the source");
                }
            }
        }
        let last = stages.last().expect("a stage");
        let user = last.iter().position(|line| *line == "USER 10001:10001").unwrap_or_else(|| panic!("{name}: no USER 10001"));
        assert!(!last[user..].iter().any(|line| line.starts_with("RUN ")), "{name}: RUN after USER");
        assert!(last.contains(&format!("EXPOSE {port}").as_str()), "{name}: EXPOSE {port}");
        let cmd = last.iter().find_map(|line| line.strip_prefix("CMD ")).unwrap_or_else(|| panic!("{name}: no CMD"));
        let args: Vec<String> = serde_json::from_str(cmd).unwrap_or_else(|e| panic!("{name}: CMD {cmd} is not exec form: {e}"));
        assert!(!args.is_empty(), "{name}: empty CMD");
    }

    /// Compares with `src/build/golden/NAME.Dockerfile`. `DIPLO_BLESS=1 cargo test -p
    /// diplo-api` rewrites the golden files instead (review the diff by eye: they must
    /// read as Dockerfiles a person would write).
    fn golden(name: &str, rendered: &Rendered) {
        check_structure(name, &rendered.dockerfile, rendered.port);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/build/golden").join(format!("{name}.Dockerfile"));
        if std::env::var_os("DIPLO_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("golden dir");
            std::fs::write(&path, &rendered.dockerfile).expect("bless");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (DIPLO_BLESS=1 cargo test -p diplo-api writes it)", path.display()));
        assert_eq!(rendered.dockerfile, expected, "{name} differs from {} (DIPLO_BLESS=1 rewrites it)", path.display());
    }

    const NEXT_PACKAGE: &str =
        r#"{"name":"web","scripts":{"build":"next build","start":"next start"},"dependencies":{"next":"15.0.0","react":"19.0.0"}}"#;

    fn cases() -> Vec<(&'static str, Rendered)> {
        let with = |f: fn(&mut TemplateOptions)| {
            let mut o = options();
            f(&mut o);
            o
        };
        let o = options();
        vec![
            ("go", rendered(&[("go.mod", "module example.com/app\n"), ("go.sum", ""), ("main.go", "package main")], None, &o)),
            ("go-cmd", rendered(&[("go.mod", "module example.com/app\n"), ("cmd/server/main.go", "package main")], None, &o)),
            (
                "node-npm",
                rendered(
                    &[
                        ("package.json", r#"{"scripts":{"start":"node server.js"},"dependencies":{"express":"^4"}}"#),
                        ("package-lock.json", "{}"),
                    ],
                    None,
                    &o,
                ),
            ),
            (
                "node-yarn",
                rendered(&[("package.json", r#"{"scripts":{"start":"node dist/index.js","build":"tsc"}}"#), ("yarn.lock", "")], None, &o),
            ),
            (
                "node-yarn-berry",
                rendered(
                    &[
                        ("package.json", r#"{"packageManager":"yarn@4.5.0","scripts":{"start":"node index.js"}}"#),
                        ("yarn.lock", ""),
                        (".yarnrc.yml", ""),
                    ],
                    None,
                    &o,
                ),
            ),
            ("node-pnpm", rendered(&[("package.json", r#"{"scripts":{"start":"node index.js"}}"#), ("pnpm-lock.yaml", "")], None, &o)),
            ("node-next", rendered(&[("package.json", NEXT_PACKAGE), ("package-lock.json", "{}")], None, &o)),
            ("node-main", rendered(&[("package.json", r#"{"main":"src/server.js"}"#)], None, &o)),
            ("python-flask", rendered(&[("requirements.txt", "flask==3.0.3\nflask-cors\n"), ("app.py", "")], None, &o)),
            ("python-flask-main", rendered(&[("requirements.txt", "Flask\n"), ("main.py", "")], None, &o)),
            (
                "python-django-gunicorn",
                rendered(
                    &[
                        ("requirements.txt", "Django>=5\ngunicorn\n"),
                        ("manage.py", "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')"),
                    ],
                    None,
                    &o,
                ),
            ),
            (
                "python-django",
                rendered(
                    &[
                        ("requirements.txt", "django\n"),
                        ("manage.py", "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')"),
                    ],
                    None,
                    &o,
                ),
            ),
            (
                "python-fastapi",
                rendered(
                    &[
                        ("pyproject.toml", "[project]\nname = \"api\"\ndependencies = [\"fastapi>=0.115\", \"uvicorn[standard]\"]\n"),
                        ("main.py", ""),
                    ],
                    None,
                    &o,
                ),
            ),
            (
                "python-poetry",
                rendered(
                    &[
                        (
                            "pyproject.toml",
                            "[tool.poetry]\nname = \"svc\"\n[tool.poetry.dependencies]\npython = \"^3.13\"\nflask = \"^3\"\n",
                        ),
                        ("poetry.lock", ""),
                        ("app.py", ""),
                    ],
                    None,
                    &o,
                ),
            ),
            (
                "python-pipenv",
                rendered(&[("Pipfile", "[packages]\nrequests = \"*\"\n"), ("Pipfile.lock", "{}"), ("main.py", "")], None, &o),
            ),
            ("python-plain", rendered(&[("main.py", "print('hello')")], None, &o)),
            ("rust", rendered(&[("Cargo.toml", "[package]\nname = \"svc\"\nversion = \"0.1.0\"\n"), ("Cargo.lock", "")], None, &o)),
            ("java-maven", rendered(&[("pom.xml", "<project/>")], None, &o)),
            ("java-gradle", rendered(&[("build.gradle", ""), ("settings.gradle", "")], None, &o)),
            ("static-root", rendered(&[("index.html", "<html>")], None, &o)),
            ("static-public", rendered(&[("public/index.html", "<html>")], None, &o)),
            (
                "static-build",
                rendered(
                    &[("package.json", r#"{"scripts":{"build":"vite build"}}"#), ("package-lock.json", "{}")],
                    Some(Language::Static),
                    &with(|o| o.build_command = Some("npm run build".into())),
                ),
            ),
            (
                "static-build-output",
                rendered(
                    &[("build.sh", "mkdir -p out/site")],
                    Some(Language::Static),
                    &with(|o| {
                        o.build_command = Some("sh build.sh".into());
                        o.output_dir = Some("./out/site/".into());
                    }),
                ),
            ),
            (
                "generic",
                rendered(&[("run.sh", "")], Some(Language::Generic), &with(|o| o.start_command = Some("./run.sh --port 8080".into()))),
            ),
            (
                "go-overrides",
                rendered(
                    &[("go.mod", "module x"), ("main.go", "")],
                    None,
                    &with(|o| {
                        o.base_images = BaseImages::with_overrides(
                            &parse_base_images("go=registry.lan/golang:1.24-alpine, go-runtime=registry.lan/alpine@sha256:0123abcd")
                                .expect("parse"),
                        )
                        .expect("overrides")
                    }),
                ),
            ),
            (
                "node-start-command-variables",
                rendered(
                    &[("package.json", r#"{"scripts":{"start":"node index.js"}}"#), ("package-lock.json", "{}")],
                    None,
                    &with(|o| {
                        o.start_command = Some("node server.js --name \"my app\"".into());
                        o.variables =
                            [("PORT".to_owned(), "4000".to_owned()), ("GREETING".to_owned(), "hello $USER \"friend\"".to_owned())].into();
                    }),
                ),
            ),
        ]
    }

    #[test]
    fn templates_match_their_golden_files() {
        let cases = cases();
        for (name, rendered) in &cases {
            golden(name, rendered);
        }
        // No golden file without its case.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/build/golden");
        for entry in std::fs::read_dir(&dir).expect("golden dir") {
            let file = entry.expect("entry").file_name().into_string().expect("utf-8");
            let name = file.strip_suffix(".Dockerfile").unwrap_or(&file);
            assert!(cases.iter().any(|(case, _)| *case == name), "{file}: no test renders it");
        }
    }

    /// The last stage of a Dockerfile.
    fn last_stage(dockerfile: &str) -> &str {
        &dockerfile[dockerfile.rfind("FROM ").expect("a stage")..]
    }

    /// The static and generic images run nothing in their final stage: a bare BusyBox
    /// (no `adduser`) or any image an operator picks serves, with a numeric user.
    #[test]
    fn static_and_generic_final_stages_need_nothing_from_their_image() {
        let mut with_build = options();
        with_build.build_command = Some("npm run build".into());
        let mut generic = options();
        generic.start_command = Some("./serve".into());
        for (files, language, o) in [
            (&[("index.html", "")][..], None, options()),
            (&[("public/index.html", "")][..], None, options()),
            (&[("package.json", "{}")][..], Some(Language::Static), with_build),
            (&[][..], Some(Language::Generic), generic),
        ] {
            let dockerfile = rendered(files, language, &o).dockerfile;
            let last = last_stage(&dockerfile);
            assert!(!last.contains("\nRUN "), "{dockerfile}");
            assert!(last.contains("USER 10001:10001\n"), "{dockerfile}");
        }
        // Node without a package.json (the language given, a start command): nothing to install.
        let mut o = options();
        o.start_command = Some("node x.js".into());
        let node = rendered(&[("x.js", "")], Some(Language::Node), &o).dockerfile;
        assert!(!node.contains("npm install") && !node.contains("npm ci"), "{node}");
    }

    #[test]
    fn ports_per_language_and_framework() {
        let o = options();
        let port = |files: &[(&str, &str)]| rendered(files, None, &o).port;
        assert_eq!(port(&[("go.mod", "module x")]), 8080);
        assert_eq!(port(&[("package.json", r#"{"main":"a.js"}"#)]), 3000);
        assert_eq!(port(&[("requirements.txt", "flask")]), 5000);
        assert_eq!(port(&[("requirements.txt", "django")]), 8000);
        assert_eq!(port(&[("requirements.txt", "fastapi")]), 8000);
        assert_eq!(port(&[("main.py", "")]), 8000);
        assert_eq!(port(&[("Cargo.toml", "[package]\nname = \"x\"")]), 8080);
        assert_eq!(port(&[("pom.xml", "")]), 8080);
        assert_eq!(port(&[("index.html", "")]), 8080);
        let mut o = options();
        o.variables.insert("PORT".into(), "9090".into());
        let flask = rendered(&[("requirements.txt", "flask")], None, &o);
        assert_eq!(flask.port, 9090);
        assert!(flask.dockerfile.contains(r#"CMD ["flask", "run", "--host", "0.0.0.0", "--port", "9090"]"#), "{}", flask.dockerfile);
        assert!(flask.dockerfile.contains("EXPOSE 9090\n"));
        o.variables.insert("PORT".into(), "not-a-port".into());
        assert_eq!(rendered(&[("requirements.txt", "flask")], None, &o).port, 5000);
    }

    #[test]
    fn what_has_no_template_is_refused_clearly() {
        let o = options();
        let refused = |files: &[(&str, &str)], language: Option<Language>| {
            render(&detect(&MemoryRepo::of(files), language).expect("detect"), &o).unwrap_err()
        };
        assert!(refused(&[("Dockerfile", "FROM x")], None).contains("own Dockerfile"));
        assert!(refused(&[("compose.yaml", "")], None).contains("compose"));
        assert!(refused(&[], Some(Language::Generic)).contains("start command"));
        assert!(refused(&[("Cargo.toml", "[workspace]\nmembers = []\n")], None).contains("Cargo.toml names no binary"));
        assert!(refused(&[("requirements.txt", "requests")], None).contains("give a start command"));
        assert!(refused(&[("package.json", "{}")], None).contains("give a start command"));
        assert!(refused(&[("README.md", "")], Some(Language::Static)).contains("output directory"));
        assert!(refused(&[], Some(Language::Java)).contains("pom.xml"));
        // With a start command, what lacked an entry point renders.
        let mut o = options();
        o.start_command = Some("python -m app".into());
        let python = render(&detect(&MemoryRepo::of(&[("requirements.txt", "requests")]), None).expect("detect"), &o).expect("render");
        assert!(python.dockerfile.ends_with("CMD [\"sh\", \"-c\", \"python -m app\"]\n"), "{}", python.dockerfile);
    }

    #[test]
    fn base_images_parse_and_validate() {
        assert_eq!(BaseImages::keys().len(), DEFAULT_IMAGES.len());
        let defaults = BaseImages::defaults();
        for key in BaseImages::keys() {
            assert!(!defaults.get(key).is_empty(), "{key}");
        }
        assert_eq!(defaults.get("go"), "golang:1.24-alpine");
        assert_eq!(defaults.get("static"), "busybox:stable");
        assert_eq!(defaults.get("nope"), "");
        assert_eq!(parse_base_images(""), Ok(BTreeMap::new()));
        assert_eq!(
            parse_base_images("static=127.0.0.1:5000/diplo/busybox:latest,python=registry.lan/python:3.13-alpine"),
            Ok([
                ("static".to_owned(), "127.0.0.1:5000/diplo/busybox:latest".to_owned()),
                ("python".to_owned(), "registry.lan/python:3.13-alpine".to_owned())
            ]
            .into())
        );
        let err = parse_base_images("cobol=x").unwrap_err();
        assert!(err.contains("\"cobol\"") && err.contains("go-runtime") && err.contains("static-build"), "{err}");
        for bad in ["go", "go=", "go=a b", "go=x\nRUN id", "go=-x", "go=$IMAGE", "go=a,go=b", "go=\"x\""] {
            assert!(parse_base_images(bad).is_err(), "{bad:?}");
        }
        let err = BaseImages::with_overrides(&[("go".to_owned(), "x\ny".to_owned())].into()).unwrap_err();
        assert!(err.starts_with("base_images:"), "{err}");
        assert!(BaseImages::with_overrides(&[("ruby".to_owned(), "ruby:3".to_owned())].into()).is_err());
        assert_eq!(supported_languages().len(), Language::ALL.len());
        assert!(supported_languages().contains(&"python"));
        let images = default_images();
        assert!(images.contains(&"alpine:3.20".to_owned()) && images.contains(&"debian:bookworm-slim".to_owned()));
        assert_eq!(images.iter().filter(|image| *image == "alpine:3.20").count(), 1, "each image once");
    }

    #[test]
    fn options_follow_the_spec() {
        use crate::build::{Builder, DEFAULT_BUILD_TIMEOUT};
        let mut spec = BuildSpec {
            build_id: "b".into(),
            git_repo: "https://h/r".into(),
            git_branch: None,
            builder: Builder::Docker,
            image: "i".into(),
            push: false,
            buildpack: Buildpack::Nixpacks { start_command: "./start".into(), variables: [("A".to_owned(), "1".to_owned())].into() },
            language: None,
            base_images: [("node".to_owned(), "registry.lan/node:22".to_owned())].into(),
            timeout: DEFAULT_BUILD_TIMEOUT,
        };
        let o = TemplateOptions::for_spec(&spec).expect("options");
        assert_eq!(
            (o.start_command.as_deref(), o.variables.len(), o.base_images.get("node")),
            (Some("./start"), 1, "registry.lan/node:22")
        );
        spec.buildpack = Buildpack::Static { build_command: "make".into(), output_dir: "out".into() };
        let o = TemplateOptions::for_spec(&spec).expect("options");
        assert_eq!((o.build_command.as_deref(), o.output_dir.as_deref(), o.start_command), (Some("make"), Some("out"), None));
        spec.base_images.insert("ruby".into(), "ruby".into());
        assert!(TemplateOptions::for_spec(&spec).unwrap_err().contains("ruby"));
    }

    /// Undoes [`env_value`] the way the Dockerfile parser reads a double-quoted word.
    fn unquote(word: &str) -> String {
        let inner = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')).expect("quoted");
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                let next = chars.next().expect("escaped character");
                assert!(matches!(next, '\\' | '"' | '$'), "unexpected escape \\{next}");
                out.push(next);
            } else {
                assert!(c != '"', "unescaped quote in {word}");
                out.push(c);
            }
        }
        out
    }

    fn go_detection() -> Detection {
        detect(&MemoryRepo::of(&[("go.mod", "module x"), ("go.sum", ""), ("main.go", "")]), None).expect("detect")
    }

    #[test]
    fn user_input_never_adds_an_instruction() {
        let detection = go_detection();
        let baseline = |variables: usize| {
            let mut o = options();
            o.start_command = Some("x".into());
            o.variables = (0..variables).map(|i| (format!("V{i}"), "x".to_owned())).collect();
            instructions(&render(&detection, &o).expect("baseline").dockerfile)
        };
        // Refused, naming the field.
        type Mutation = fn(&mut TemplateOptions);
        let refused: &[(Mutation, &str)] = &[
            (|o| o.variables = [("EVIL".to_owned(), "x\n RUN rm -rf /".to_owned())].into(), "nixpacks_config.variables.EVIL"),
            (|o| o.variables = [("EVIL".to_owned(), "x\r\nRUN rm -rf /".to_owned())].into(), "nixpacks_config.variables.EVIL"),
            (|o| o.variables = [("A B".to_owned(), "x".to_owned())].into(), "nixpacks_config.variables"),
            (|o| o.variables = [("A=B\nRUN id".to_owned(), "x".to_owned())].into(), "nixpacks_config.variables"),
            (|o| o.start_command = Some("sleep 1\nRUN rm -rf /".into()), "nixpacks_config.start_command"),
            (|o| o.build_command = Some("make\rRUN id".into()), "static_config.build_command"),
            (|o| o.output_dir = Some("../etc".into()), "static_config.output_dir"),
            (|o| o.output_dir = Some("/etc".into()), "static_config.output_dir"),
            (|o| o.output_dir = Some("dist /etc".into()), "static_config.output_dir"),
            (|o| o.output_dir = Some("$HOME".into()), "static_config.output_dir"),
        ];
        for (mutate, field) in refused {
            let mut o = options();
            o.start_command = Some("x".into());
            mutate(&mut o);
            let language = if field.starts_with("static") { Language::Static } else { Language::Go };
            let detection = detect(&MemoryRepo::of(&[("go.mod", "module x"), ("index.html", "")]), Some(language)).expect("detect");
            let err = render(&detection, &o).unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        // Encoded: the same instructions as with plain values, the values intact.
        let command = r#"echo "it's" \"quoted\" \\ back\slash ]"] && exec ./app"#;
        let value = r#"a "b" \c $HOME ${PATH} `id` ] #x"#;
        let mut o = options();
        o.start_command = Some(command.into());
        o.variables = [("GREETING".to_owned(), value.to_owned())].into();
        let dockerfile = render(&detection, &o).expect("render").dockerfile;
        assert_eq!(instructions(&dockerfile), baseline(1), "{dockerfile}");
        let cmd = dockerfile.lines().find_map(|line| line.strip_prefix("CMD ")).expect("CMD");
        assert_eq!(serde_json::from_str::<Vec<String>>(cmd).expect("json"), ["sh", "-c", command]);
        let envs: Vec<&str> = dockerfile.lines().filter_map(|line| line.strip_prefix("ENV GREETING=")).collect();
        assert_eq!(envs.len(), 2, "build and runtime stages");
        for env in envs {
            assert_eq!(unquote(env), value);
        }
    }

    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    Just("\n".to_owned()),
                    Just("\r".to_owned()),
                    Just("\\".to_owned()),
                    Just("\"".to_owned()),
                    Just("'".to_owned()),
                    Just("$".to_owned()),
                    Just("]".to_owned()),
                    Just("#".to_owned()),
                    Just(" ".to_owned()),
                    Just("\t".to_owned()),
                    Just("\u{2028}".to_owned()),
                    Just("RUN rm -rf /".to_owned()),
                    Just("USER root".to_owned()),
                    "[a-z]{1,4}",
                ],
                0..12,
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Names taken from the repository (a Rust binary, a Node main file, a Go
        /// command directory, a Django project, pyproject dependencies) never add an
        /// instruction either: they are checked or written in exec form.
        #[test]
        fn repository_contents_never_add_instructions(text in hostile_text()) {
            let toml_string = toml::Value::String(text.clone()).to_string();
            let package = serde_json::json!({ "main": text.clone() }).to_string();
            let manage = format!("os.environ.setdefault('DJANGO_SETTINGS_MODULE', '{text}.settings')");
            let pyproject = format!("[project]\nname = \"x\"\ndependencies = [\"requests\", {toml_string}]\n");
            let cargo = format!("[package]\nname = {toml_string}\n");
            let go_main = format!("cmd/{text}/main.go");
            let repos: Vec<(Files<'_>, Files<'_>)> = vec![
                (vec![("Cargo.toml", &cargo)], vec![("Cargo.toml", "[package]\nname = \"x\"\n")]),
                (vec![("package.json", &package), ("index.js", "")], vec![("package.json", "{}"), ("index.js", "")]),
                (vec![("go.mod", "module x"), (&go_main, "")], vec![("go.mod", "module x"), ("cmd/x/main.go", "")]),
                (
                    vec![("requirements.txt", "django\ngunicorn"), ("manage.py", &manage)],
                    vec![("requirements.txt", "django\ngunicorn"), ("manage.py", "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'x.settings')")],
                ),
                (vec![("pyproject.toml", &pyproject), ("main.py", "")], vec![("pyproject.toml", "[project]\nname = \"x\"\ndependencies = [\"requests\", \"x\"]\n"), ("main.py", "")]),
            ];
            for (hostile, plain) in repos {
                let plain = rendered(&plain, None, &options()).dockerfile;
                let (expected, expected_skeleton) = (instructions(&plain), skeleton(&plain));
                let Ok(detection) = detect(&MemoryRepo::of(&hostile), None) else { continue };
                if let Ok(rendered) = render(&detection, &options()) {
                    prop_assert_eq!(skeleton(&rendered.dockerfile), expected_skeleton, "{}", rendered.dockerfile);
                    prop_assert_eq!(instructions(&rendered.dockerfile), expected, "{}", rendered.dockerfile);
                }
            }
        }

        /// Whatever the values and the commands, the Dockerfile has the template's
        /// instructions and no more: it is either rendered with the values intact or
        /// refused naming the field.
        #[test]
        fn arbitrary_values_never_add_instructions(value in hostile_text(), command in hostile_text(), build in hostile_text(), static_site in any::<bool>()) {
            let detection = if static_site {
                detect(&MemoryRepo::of(&[("index.html", "")]), None).expect("detect")
            } else {
                go_detection()
            };
            let plain = TemplateOptions {
                start_command: Some("x".into()),
                build_command: Some("x".into()),
                variables: [("VALUE".to_owned(), "x".to_owned())].into(),
                ..options()
            };
            let plain = render(&detection, &plain).expect("plain").dockerfile;
            let (expected, expected_skeleton) = (instructions(&plain), skeleton(&plain));
            let given = TemplateOptions {
                start_command: Some(format!("x{command}")),
                build_command: Some(format!("x{build}")),
                variables: [("VALUE".to_owned(), value.clone())].into(),
                ..options()
            };
            match render(&detection, &given) {
                Ok(rendered) => {
                    prop_assert_eq!(instructions(&rendered.dockerfile), expected);
                    prop_assert_eq!(skeleton(&rendered.dockerfile), expected_skeleton);
                    for line in rendered.dockerfile.lines() {
                        if let Some(env) = line.strip_prefix("ENV VALUE=") {
                            prop_assert_eq!(unquote(env), value.clone());
                        }
                        if let Some(cmd) = line.strip_prefix("CMD [\"sh\"") {
                            let args: Vec<String> = serde_json::from_str(&format!("[\"sh\"{cmd}")).expect("json");
                            prop_assert_eq!(&args[2], &format!("x{command}"));
                        }
                    }
                }
                Err(err) => prop_assert!(
                    ["nixpacks_config.variables.VALUE", "nixpacks_config.start_command", "static_config.build_command"].iter().any(|field| err.starts_with(field)),
                    "unexpected error {}", err
                ),
            }
        }
    }
}
