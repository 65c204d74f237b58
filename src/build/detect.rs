//! Language detection: which template builds a repository, from the files at its root.
//!
//! [`detect`] looks at a checked-out repository through [`RepoFiles`] ([`DirRepo`] for a
//! workspace on disk, [`MemoryRepo`] in tests). A language given by the user wins
//! (`detected_from` is then `"language"`); otherwise the first marker found, in this
//! order, decides:
//!
//! | order | file(s) at the root                                             | language     |
//! |-------|-----------------------------------------------------------------|--------------|
//! | 1     | `Dockerfile`                                                    | `dockerfile` |
//! | 2     | `docker-compose.yml`, `docker-compose.yaml`, `compose.yaml`, `compose.yml` | `docker-compose` |
//! | 3     | `go.mod`                                                        | `go`         |
//! | 4     | `Cargo.toml`                                                    | `rust`       |
//! | 5     | `package.json`                                                  | `node`       |
//! | 6     | `pyproject.toml` (poetry), `Pipfile`, `requirements.txt`, `pyproject.toml` (`[project]`) | `python` |
//! | 7     | `pom.xml`, `build.gradle`, `build.gradle.kts`                   | `java`       |
//! | 8     | `main.py`, `app.py` (a script without a manifest)               | `python`     |
//! | 9     | `index.html` at the root or in `public/`, `dist/`, `build/`     | `static`     |
//!
//! A repository shipping its own Dockerfile or compose file is built with it, so those
//! come first; compiled languages come before `package.json` (a Go or Rust service with
//! a small JavaScript front end is still that service); Node comes before Python and
//! Java as the most common case of several manifests. Nothing found and no language
//! given is an error naming what was looked for; `generic` is never detected, only
//! chosen (it needs a start command).
//!
//! Detection also gathers what the templates need ([`Hints`]): the dependency manifests
//! to copy before the source, the package manager, the framework, the entry file, the
//! binary name. Every name taken from the repository and later written into a
//! Dockerfile is checked against a narrow alphabet here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest file [`DirRepo`] reads (larger files read as absent).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A language (or kind of build) a repository is built as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    /// Go modules (`go.mod`).
    Go,
    /// Node.js (`package.json`).
    Node,
    /// Python (`requirements.txt`, `pyproject.toml`, `Pipfile`).
    Python,
    /// Rust (`Cargo.toml`).
    Rust,
    /// Java with Maven or Gradle.
    Java,
    /// The repository's own `Dockerfile` (not templated).
    Dockerfile,
    /// A static site served by a small web server.
    Static,
    /// A compose file (not templated: its services are built one by one).
    Compose,
    /// Any repository, run with a given start command.
    Generic,
}

impl Language {
    /// Every language, in the order of [`Language::as_str`]'s table.
    pub const ALL: [Language; 9] = [
        Language::Go,
        Language::Node,
        Language::Python,
        Language::Rust,
        Language::Java,
        Language::Dockerfile,
        Language::Static,
        Language::Compose,
        Language::Generic,
    ];

    /// Canonical lower-case name, as reported and accepted.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Go => "go",
            Language::Node => "node",
            Language::Python => "python",
            Language::Rust => "rust",
            Language::Java => "java",
            Language::Dockerfile => "dockerfile",
            Language::Static => "static",
            Language::Compose => "docker-compose",
            Language::Generic => "generic",
        }
    }

    /// Whether the image is made from a rendered template (everything but the
    /// repository's own Dockerfile or compose file).
    pub fn is_templated(self) -> bool {
        !matches!(self, Language::Dockerfile | Language::Compose)
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names [`Language::from_str`] accepts.
pub const LANGUAGE_NAMES: &[&str] = &[
    "go",
    "golang",
    "node",
    "nodejs",
    "node.js",
    "javascript",
    "js",
    "typescript",
    "ts",
    "python",
    "py",
    "rust",
    "java",
    "dockerfile",
    "docker",
    "static",
    "docker-compose",
    "compose",
    "generic",
];

impl FromStr for Language {
    type Err = String;

    /// A language name or alias, case-insensitive.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "go" | "golang" => Language::Go,
            "node" | "nodejs" | "node.js" | "javascript" | "js" | "typescript" | "ts" => Language::Node,
            "python" | "py" => Language::Python,
            "rust" => Language::Rust,
            "java" => Language::Java,
            "dockerfile" | "docker" => Language::Dockerfile,
            "static" => Language::Static,
            "docker-compose" | "compose" => Language::Compose,
            "generic" => Language::Generic,
            _ => return Err(format!("unknown language {s:?} (accepted: {})", LANGUAGE_NAMES.join(", "))),
        })
    }
}

/// A web framework recognised in the dependencies (it decides the start command and
/// the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Framework {
    /// Flask (`flask run`, port 5000).
    Flask,
    /// Django (`manage.py runserver` or gunicorn, port 8000).
    Django,
    /// FastAPI (uvicorn, port 8000).
    FastApi,
    /// Express (`npm start`, port 3000).
    Express,
    /// Next.js (`next build` then `next start`, port 3000).
    Next,
    /// Spring Boot (an executable jar, port 8080).
    SpringBoot,
}

impl Framework {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Flask => "flask",
            Framework::Django => "django",
            Framework::FastApi => "fastapi",
            Framework::Express => "express",
            Framework::Next => "next",
            Framework::SpringBoot => "spring-boot",
        }
    }
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tool that installs a repository's dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageManager {
    /// npm (`package-lock.json` or no lock file).
    Npm,
    /// Yarn (`yarn.lock`).
    Yarn,
    /// pnpm (`pnpm-lock.yaml`).
    Pnpm,
    /// pip (`requirements.txt`, `pyproject.toml` `[project]`).
    Pip,
    /// Poetry (`[tool.poetry]` or `poetry.lock`).
    Poetry,
    /// Pipenv (`Pipfile`).
    Pipenv,
    /// Maven (`pom.xml`).
    Maven,
    /// Gradle (`build.gradle`, `build.gradle.kts`).
    Gradle,
    /// Cargo (`Cargo.toml`).
    Cargo,
    /// Go modules (`go.mod`).
    GoModules,
}

impl PackageManager {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::Yarn => "yarn",
            PackageManager::Pnpm => "pnpm",
            PackageManager::Pip => "pip",
            PackageManager::Poetry => "poetry",
            PackageManager::Pipenv => "pipenv",
            PackageManager::Maven => "maven",
            PackageManager::Gradle => "gradle",
            PackageManager::Cargo => "cargo",
            PackageManager::GoModules => "go-modules",
        }
    }
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the templates need besides the language, gathered from the repository. Every
/// string here is either a fixed file name or checked against a narrow alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hints {
    /// Dependency manifests present at the root, copied before the source (`go.mod`,
    /// `go.sum`; `package.json`, `yarn.lock`; `requirements.txt`; `Cargo.toml`,
    /// `Cargo.lock`; `pom.xml`; ...).
    pub manifests: Vec<String>,
    /// Python: the script or module file to run (`app.py`, `main.py`, ...).
    pub entry: Option<String>,
    /// Python: dependency names (normalised: lower case, `-` for `_` and `.`).
    pub python_packages: BTreeSet<String>,
    /// Python `[project] dependencies` of a `pyproject.toml` (installed by name, as
    /// there is no lock file to copy).
    pub pyproject_requirements: Vec<String>,
    /// Django: the project package holding `settings.py` and `wsgi.py` (from
    /// `manage.py`).
    pub django_project: Option<String>,
    /// Node: `package.json` has a `start` script.
    pub node_start_script: bool,
    /// Node: `package.json` has a `build` script.
    pub node_build_script: bool,
    /// Node: `package.json` `main` (run with `node` when there is no start script).
    pub node_main: Option<String>,
    /// Node: Yarn 2 or later (`packageManager: yarn@2+` or `.yarnrc.yml`).
    pub yarn_berry: bool,
    /// Go: the main package to build (`.` or `./cmd/NAME`).
    pub go_package: Option<String>,
    /// Rust: the binary to run (`default-run`, the first `[[bin]]`, else the package
    /// name).
    pub binary: Option<String>,
    /// Static: the directory holding `index.html` (`.`, `public`, `dist` or `build`).
    pub static_root: Option<String>,
}

/// The outcome of detection: what to build the repository as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The language.
    pub language: Language,
    /// The file that gave the language away (`go.mod`), or `"language"` when given.
    pub detected_from: String,
    /// The framework, when one is recognised.
    pub framework: Option<Framework>,
    /// The package manager, when there is one.
    pub package_manager: Option<PackageManager>,
    /// The port the app listens on by default (Go, Rust, Java, static, generic: 8080;
    /// Node: 3000; Flask: 5000; other Python: 8000; a Dockerfile: its first `EXPOSE`,
    /// else 8080; compose: 8080, not meaningful).
    pub port: u16,
    /// What the templates need.
    pub hints: Hints,
}

/// Read access to a checked-out repository. Paths are relative, `/`-separated, without
/// `..`; `""` is the root.
pub trait RepoFiles {
    /// Whether a regular file or a directory (never a symbolic link) is at `path`.
    fn exists(&self, path: &str) -> bool;
    /// A regular file's contents (invalid UTF-8 replaced); `None` when absent, not a
    /// regular file, reached through a symbolic link, or too large.
    fn read(&self, path: &str) -> Option<String>;
    /// Names of the entries of the directory at `path`, sorted (empty when it is not a
    /// directory).
    fn list(&self, path: &str) -> Vec<String>;
}

/// A repository in memory: path → contents (directories are implied by the paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryRepo(pub BTreeMap<String, String>);

impl MemoryRepo {
    /// A repository of these files.
    pub fn of(files: &[(&str, &str)]) -> Self {
        MemoryRepo(files.iter().map(|(path, text)| ((*path).to_owned(), (*text).to_owned())).collect())
    }
}

impl RepoFiles for MemoryRepo {
    fn exists(&self, path: &str) -> bool {
        if path.is_empty() {
            return true;
        }
        let prefix = format!("{path}/");
        self.0.contains_key(path) || self.0.keys().any(|key| key.starts_with(&prefix))
    }

    fn read(&self, path: &str) -> Option<String> {
        self.0.get(path).cloned()
    }

    fn list(&self, path: &str) -> Vec<String> {
        let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
        let names: BTreeSet<String> = self
            .0
            .keys()
            .filter_map(|key| key.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('/').next())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        names.into_iter().collect()
    }
}

/// A repository checked out in a directory. It never follows a symbolic link: every
/// component of a path is checked with `symlink_metadata`, the file is opened with
/// `O_NOFOLLOW` and must be a regular file, and at most [`MAX_FILE_BYTES`] are read (a
/// larger file reads as absent). A hostile repository's `requirements.txt ->
/// /etc/shadow` is therefore absent, never read. The checks of the intermediate
/// directories and the final open are separate steps: the checkout must not change
/// while it is read (it is the builder's own clone; the repository's content cannot run
/// before the build starts).
#[derive(Debug, Clone)]
pub struct DirRepo {
    root: PathBuf,
}

impl DirRepo {
    /// The repository checked out at `root`.
    pub fn new(root: &Path) -> Self {
        DirRepo { root: root.to_path_buf() }
    }

    /// The path of `relative` under the root when every component exists and none is
    /// a symbolic link; `None` otherwise (or for an absolute path, `..`, `.`).
    fn resolve(&self, relative: &str) -> Option<(PathBuf, std::fs::Metadata)> {
        let mut path = self.root.clone();
        // The root is the builder's own choice (it may be reached through a link);
        // everything under it comes from the repository.
        let mut meta = std::fs::metadata(&path).ok()?;
        if !meta.is_dir() {
            return None;
        }
        if relative.is_empty() {
            return Some((path, meta));
        }
        if relative.starts_with('/') || relative.contains('\0') {
            return None;
        }
        for part in relative.split('/') {
            if part.is_empty() || part == "." || part == ".." || !meta.is_dir() {
                return None;
            }
            path.push(part);
            meta = std::fs::symlink_metadata(&path).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
        }
        Some((path, meta))
    }
}

impl RepoFiles for DirRepo {
    fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some_and(|(_, meta)| meta.is_file() || meta.is_dir())
    }

    fn read(&self, path: &str) -> Option<String> {
        let (full, meta) = self.resolve(path)?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return None;
        }
        let file =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK).open(&full).ok()?;
        let opened = file.metadata().ok()?;
        if !opened.is_file() || opened.len() > MAX_FILE_BYTES {
            return None;
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).ok()?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return None;
        }
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn list(&self, path: &str) -> Vec<String> {
        let Some((full, meta)) = self.resolve(path) else { return Vec::new() };
        if !meta.is_dir() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(full) else { return Vec::new() };
        let mut names: Vec<String> = entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        names
    }
}

/// Compose file names, in the order they are looked for.
pub const COMPOSE_FILES: &[&str] = &["docker-compose.yml", "docker-compose.yaml", "compose.yaml", "compose.yml"];

/// Directories (besides the root) a static site's `index.html` is looked for in.
pub const STATIC_DIRS: &[&str] = &["public", "dist", "build"];

/// What detection looks for, in order (for the "nothing detected" error).
const LOOKED_FOR: &str = "Dockerfile, docker-compose.yml/compose.yaml, go.mod, Cargo.toml, package.json, pyproject.toml, \
                          Pipfile, requirements.txt, pom.xml, build.gradle(.kts), main.py/app.py, index.html (root, public/, dist/, build/)";

/// The language a build asks for, if any: the `static` buildpack builds a static site,
/// `dockerfile` and `docker-compose` the repository's own files; otherwise the spec's
/// `language` field (an error naming `language` when it is not a known name).
pub fn spec_language(spec: &super::BuildSpec) -> Result<Option<Language>, String> {
    use super::Buildpack;
    match &spec.buildpack {
        Buildpack::Static { .. } => Ok(Some(Language::Static)),
        Buildpack::Dockerfile { .. } => Ok(Some(Language::Dockerfile)),
        Buildpack::Compose { .. } => Ok(Some(Language::Compose)),
        Buildpack::Detect | Buildpack::Nixpacks { .. } => {
            spec.language.as_deref().map(|name| name.parse().map_err(|e| format!("language: {e}"))).transpose()
        }
    }
}

/// Decides how to build the repository: the given language wins, else the first marker
/// in the order of the module documentation. An error when nothing is recognised and
/// no language is given, naming what was looked for.
pub fn detect(repo: &dyn RepoFiles, language: Option<Language>) -> Result<Detection, String> {
    if let Some(language) = language {
        return Ok(examine(repo, language, "language".to_owned()));
    }
    let (language, from) = find_language(repo).ok_or_else(|| {
        format!("no detectable language: none of {LOOKED_FOR} is in the repository; give a language (or a start command with \"generic\")")
    })?;
    Ok(examine(repo, language, from))
}

/// The language markers, in order of precedence.
fn find_language(repo: &dyn RepoFiles) -> Option<(Language, String)> {
    let file = |name: &str| repo.read(name).is_some();
    if file("Dockerfile") {
        return Some((Language::Dockerfile, "Dockerfile".into()));
    }
    if let Some(name) = COMPOSE_FILES.iter().find(|name| file(name)) {
        return Some((Language::Compose, (*name).into()));
    }
    for (name, language) in [("go.mod", Language::Go), ("Cargo.toml", Language::Rust), ("package.json", Language::Node)] {
        if file(name) {
            return Some((language, name.into()));
        }
    }
    if let Some(from) = python_manifest(repo) {
        return Some((Language::Python, from.into()));
    }
    if let Some(name) = ["pom.xml", "build.gradle", "build.gradle.kts"].into_iter().find(|name| file(name)) {
        return Some((Language::Java, name.into()));
    }
    if let Some(name) = ["main.py", "app.py"].into_iter().find(|name| file(name)) {
        return Some((Language::Python, name.into()));
    }
    static_root(repo).map(|root| (Language::Static, if root == "." { "index.html".into() } else { format!("{root}/index.html") }))
}

/// The Python manifest that decides the package manager: a poetry `pyproject.toml`,
/// a `Pipfile`, a `requirements.txt`, a `pyproject.toml` with a `[project]` table.
fn python_manifest(repo: &dyn RepoFiles) -> Option<&'static str> {
    let pyproject = repo.read("pyproject.toml").and_then(|text| text.parse::<toml::Table>().ok());
    let poetry = pyproject.as_ref().is_some_and(|t| t.get("tool").and_then(|tool| tool.get("poetry")).is_some());
    if pyproject.is_some() && (poetry || repo.read("poetry.lock").is_some()) {
        return Some("pyproject.toml");
    }
    if repo.read("Pipfile").is_some() {
        return Some("Pipfile");
    }
    if repo.read("requirements.txt").is_some() {
        return Some("requirements.txt");
    }
    if repo.read("pyproject.toml").is_some() {
        return Some("pyproject.toml");
    }
    None
}

/// Where `index.html` is: the root, else `public`, `dist`, `build`.
fn static_root(repo: &dyn RepoFiles) -> Option<String> {
    if repo.read("index.html").is_some() {
        return Some(".".into());
    }
    STATIC_DIRS.iter().find(|dir| repo.read(&format!("{dir}/index.html")).is_some()).map(|dir| (*dir).to_owned())
}

/// Gathers the package manager, framework, port and hints of `language`.
fn examine(repo: &dyn RepoFiles, language: Language, detected_from: String) -> Detection {
    let mut detection = Detection { language, detected_from, framework: None, package_manager: None, port: 8080, hints: Hints::default() };
    let present =
        |names: &[&str]| -> Vec<String> { names.iter().filter(|name| repo.read(name).is_some()).map(|name| (*name).to_owned()).collect() };
    match language {
        Language::Go => {
            detection.package_manager = Some(PackageManager::GoModules);
            detection.hints.manifests = present(&["go.mod", "go.sum"]);
            detection.hints.go_package = Some(go_package(repo));
        }
        Language::Rust => {
            detection.package_manager = Some(PackageManager::Cargo);
            detection.hints.manifests = present(&["Cargo.toml", "Cargo.lock"]);
            detection.hints.binary = repo.read("Cargo.toml").and_then(|text| rust_binary(&text));
        }
        Language::Node => {
            examine_node(repo, &mut detection);
            detection.port = 3000;
        }
        Language::Python => examine_python(repo, &mut detection),
        Language::Java => {
            if repo.read("pom.xml").is_some() {
                detection.package_manager = Some(PackageManager::Maven);
                detection.hints.manifests = present(&["pom.xml"]);
            } else if repo.read("build.gradle").is_some() || repo.read("build.gradle.kts").is_some() {
                detection.package_manager = Some(PackageManager::Gradle);
                detection.hints.manifests =
                    present(&["settings.gradle", "settings.gradle.kts", "build.gradle", "build.gradle.kts", "gradle.properties"]);
            }
            let build = ["pom.xml", "build.gradle", "build.gradle.kts"].iter().filter_map(|name| repo.read(name)).collect::<String>();
            if build.contains("spring-boot") {
                detection.framework = Some(Framework::SpringBoot);
            }
        }
        Language::Static => {
            detection.hints.static_root = static_root(repo);
            if repo.read("package.json").is_some() {
                examine_node(repo, &mut detection);
                detection.framework = None;
            }
        }
        Language::Dockerfile => {
            detection.port = repo.read("Dockerfile").and_then(|text| first_expose(&text)).unwrap_or(8080);
        }
        Language::Compose | Language::Generic => {}
    }
    detection
}

/// The first port of the first `EXPOSE` instruction.
fn first_expose(dockerfile: &str) -> Option<u16> {
    dockerfile.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if !words.next()?.eq_ignore_ascii_case("EXPOSE") {
            return None;
        }
        words.next()?.split('/').next()?.parse().ok()
    })
}

/// A name safe to write into a Dockerfile path or argument: letters, digits, `.`, `_`,
/// `-`, not starting with `.` or `-`, at most 128 bytes.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The Go main package: the root when it holds `.go` files, else the first
/// `cmd/NAME` holding `main.go`, else the root.
fn go_package(repo: &dyn RepoFiles) -> String {
    if repo.list("").iter().any(|name| name.ends_with(".go")) {
        return ".".into();
    }
    repo.list("cmd")
        .into_iter()
        .find(|dir| is_plain_name(dir) && repo.read(&format!("cmd/{dir}/main.go")).is_some())
        .map_or_else(|| ".".into(), |dir| format!("./cmd/{dir}"))
}

/// The binary `cargo build` makes to run: `package.default-run`, else the first
/// `[[bin]]` name, else the package name.
fn rust_binary(cargo_toml: &str) -> Option<String> {
    let table: toml::Table = cargo_toml.parse().ok()?;
    let package = table.get("package");
    let default_run = package.and_then(|p| p.get("default-run")).and_then(|v| v.as_str());
    let first_bin =
        table.get("bin").and_then(|b| b.as_array()).and_then(|bins| bins.first()).and_then(|b| b.get("name")).and_then(|v| v.as_str());
    let name = package.and_then(|p| p.get("name")).and_then(|v| v.as_str());
    default_run.or(first_bin).or(name).filter(|name| is_plain_name(name)).map(str::to_owned)
}

fn examine_node(repo: &dyn RepoFiles, detection: &mut Detection) {
    let package: serde_json::Value =
        repo.read("package.json").and_then(|text| serde_json::from_str(&text).ok()).unwrap_or(serde_json::Value::Null);
    let declared = package.get("packageManager").and_then(|v| v.as_str()).unwrap_or_default();
    let manager = if repo.read("pnpm-lock.yaml").is_some() {
        PackageManager::Pnpm
    } else if repo.read("yarn.lock").is_some() {
        PackageManager::Yarn
    } else if repo.read("package-lock.json").is_some() || repo.read("npm-shrinkwrap.json").is_some() {
        PackageManager::Npm
    } else if declared.starts_with("pnpm@") {
        PackageManager::Pnpm
    } else if declared.starts_with("yarn@") {
        PackageManager::Yarn
    } else {
        PackageManager::Npm
    };
    detection.package_manager = Some(manager);
    let lock = match manager {
        PackageManager::Pnpm => "pnpm-lock.yaml",
        PackageManager::Yarn => "yarn.lock",
        _ if repo.read("npm-shrinkwrap.json").is_some() => "npm-shrinkwrap.json",
        _ => "package-lock.json",
    };
    let mut manifests = Vec::new();
    if repo.read("package.json").is_some() {
        manifests.push("package.json".to_owned());
    }
    if repo.read(lock).is_some() {
        manifests.push(lock.to_owned());
    }
    if manager == PackageManager::Yarn && repo.read(".yarnrc.yml").is_some() {
        manifests.push(".yarnrc.yml".to_owned());
    }
    detection.hints.manifests = manifests;
    detection.hints.yarn_berry = manager == PackageManager::Yarn
        && (repo.read(".yarnrc.yml").is_some() || declared.strip_prefix("yarn@").is_some_and(|v| !v.starts_with('1')));
    let has = |section: &str, name: &str| package.get(section).and_then(|deps| deps.get(name)).is_some();
    let depends = |name: &str| has("dependencies", name) || has("devDependencies", name);
    detection.framework = if depends("next") {
        Some(Framework::Next)
    } else if depends("express") {
        Some(Framework::Express)
    } else {
        None
    };
    detection.hints.node_start_script = package.get("scripts").and_then(|s| s.get("start")).and_then(|v| v.as_str()).is_some();
    detection.hints.node_build_script = package.get("scripts").and_then(|s| s.get("build")).and_then(|v| v.as_str()).is_some();
    detection.hints.node_main = package
        .get("main")
        .and_then(|v| v.as_str())
        .map(|main| main.trim_start_matches("./"))
        .filter(|main| is_relative_file(main))
        .map(str::to_owned)
        .or_else(|| ["server.js", "index.js", "app.js", "main.js"].into_iter().find(|name| repo.read(name).is_some()).map(str::to_owned));
}

/// A relative file path made of plain names (see [`is_plain_name`]) joined by `/`.
pub(crate) fn is_relative_file(path: &str) -> bool {
    path.len() <= 512 && path.split('/').all(is_plain_name)
}

fn examine_python(repo: &dyn RepoFiles, detection: &mut Detection) {
    let pyproject = repo.read("pyproject.toml").and_then(|text| text.parse::<toml::Table>().ok());
    let poetry_table = pyproject.as_ref().and_then(|t| t.get("tool")).and_then(|tool| tool.get("poetry"));
    let project_deps: Vec<String> = pyproject
        .as_ref()
        .and_then(|t| t.get("project"))
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array())
        .map(|deps| deps.iter().filter_map(|d| d.as_str()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut packages = BTreeSet::new();
    packages.extend(project_deps.iter().filter_map(|d| requirement_name(d)));
    if let Some(deps) = poetry_table.and_then(|p| p.get("dependencies")).and_then(|d| d.as_table()) {
        packages.extend(deps.keys().map(|k| normalise_package(k)).filter(|k| k != "python"));
    }
    if let Some(pipfile) = repo.read("Pipfile").and_then(|text| text.parse::<toml::Table>().ok())
        && let Some(deps) = pipfile.get("packages").and_then(|d| d.as_table())
    {
        packages.extend(deps.keys().map(|k| normalise_package(k)));
    }
    if let Some(text) = repo.read("requirements.txt") {
        packages.extend(text.lines().filter_map(requirement_name));
    }
    let (manager, manifests): (Option<PackageManager>, &[&str]) = match python_manifest(repo) {
        Some("pyproject.toml") if poetry_table.is_some() || repo.read("poetry.lock").is_some() => {
            (Some(PackageManager::Poetry), &["pyproject.toml", "poetry.lock"])
        }
        Some("Pipfile") => (Some(PackageManager::Pipenv), &["Pipfile", "Pipfile.lock"]),
        Some("requirements.txt") => (Some(PackageManager::Pip), &["requirements.txt"]),
        Some(_) => (Some(PackageManager::Pip), &["pyproject.toml"]),
        None => (None, &[]),
    };
    detection.package_manager = manager;
    detection.hints.manifests = manifests.iter().filter(|name| repo.read(name).is_some()).map(|name| (*name).to_owned()).collect();
    if manager == Some(PackageManager::Pip) && detection.hints.manifests == ["pyproject.toml"] {
        detection.hints.pyproject_requirements =
            project_deps.into_iter().filter(|d| !d.starts_with('-') && !d.chars().any(char::is_control) && d.len() <= 512).collect();
    }
    detection.framework = if packages.contains("django") {
        Some(Framework::Django)
    } else if packages.contains("fastapi") {
        Some(Framework::FastApi)
    } else if packages.contains("flask") {
        Some(Framework::Flask)
    } else {
        None
    };
    let candidates: &[&str] = match detection.framework {
        Some(Framework::Django) => &["manage.py"],
        Some(Framework::FastApi) => &["main.py", "app.py", "api.py", "server.py"],
        Some(Framework::Flask) => &["app.py", "wsgi.py", "main.py", "server.py"],
        _ => &["app.py", "main.py", "server.py", "run.py"],
    };
    detection.hints.entry = candidates.iter().find(|name| repo.read(name).is_some()).map(|name| (*name).to_owned());
    if detection.framework == Some(Framework::Django) {
        detection.hints.django_project = repo.read("manage.py").and_then(|text| django_project(&text));
    }
    detection.port = if detection.framework == Some(Framework::Flask) { 5000 } else { 8000 };
    detection.hints.python_packages = packages;
}

/// The name of a requirement (`Flask[async]>=2 ; python_version > "3"` → `flask`),
/// normalised; `None` for blank lines, comments and pip options (`-r`, `-e`, `--index-url`).
pub fn requirement_name(line: &str) -> Option<String> {
    let line = line.split_once(" #").map_or(line, |(before, _)| before).trim();
    if line.is_empty() || line.starts_with(['#', '-']) {
        return None;
    }
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).unwrap_or(line.len());
    let name = &line[..end];
    (!name.is_empty()).then(|| normalise_package(name))
}

/// A Python package name as compared: lower case, runs of `_`, `.` and `-` as one `-`.
pub fn normalise_package(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        if "._-".contains(c) {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The Django project package from `manage.py`'s
/// `os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")`.
fn django_project(manage_py: &str) -> Option<String> {
    let at = manage_py.find("DJANGO_SETTINGS_MODULE")?;
    let rest = &manage_py[at + "DJANGO_SETTINGS_MODULE".len()..];
    // Past the name's closing quote, the value is the next quoted string.
    let rest = rest.trim_start_matches(['"', '\'']);
    let rest = &rest[rest.find(['"', '\''])? + 1..];
    let value = &rest[..rest.find(['"', '\''])?];
    let project = value.strip_suffix(".settings").or_else(|| value.rsplit_once('.').map(|(p, _)| p))?;
    (!project.is_empty() && project.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')))
        .then(|| project.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository's files, for table tests.
    type Files = &'static [(&'static str, &'static str)];

    fn detected(files: &[(&str, &str)]) -> Detection {
        detect(&MemoryRepo::of(files), None).unwrap_or_else(|e| panic!("{files:?}: {e}"))
    }

    #[test]
    fn every_language_is_detected_from_its_marker() {
        let cases: &[(Files, Language, &str, Option<PackageManager>, u16)] = &[
            (&[("Dockerfile", "FROM scratch\nEXPOSE 9000/tcp\n")], Language::Dockerfile, "Dockerfile", None, 9000),
            (&[("Dockerfile", "FROM scratch\n")], Language::Dockerfile, "Dockerfile", None, 8080),
            (&[("docker-compose.yml", "services: {}")], Language::Compose, "docker-compose.yml", None, 8080),
            (&[("docker-compose.yaml", "services: {}")], Language::Compose, "docker-compose.yaml", None, 8080),
            (&[("compose.yaml", "services: {}")], Language::Compose, "compose.yaml", None, 8080),
            (&[("compose.yml", "services: {}")], Language::Compose, "compose.yml", None, 8080),
            (&[("go.mod", "module x\n"), ("main.go", "package main")], Language::Go, "go.mod", Some(PackageManager::GoModules), 8080),
            (&[("Cargo.toml", "[package]\nname = \"svc\"\n")], Language::Rust, "Cargo.toml", Some(PackageManager::Cargo), 8080),
            (&[("package.json", "{}")], Language::Node, "package.json", Some(PackageManager::Npm), 3000),
            (&[("requirements.txt", "requests\n")], Language::Python, "requirements.txt", Some(PackageManager::Pip), 8000),
            (&[("Pipfile", "[packages]\nrequests = \"*\"\n")], Language::Python, "Pipfile", Some(PackageManager::Pipenv), 8000),
            (
                &[("pyproject.toml", "[project]\nname = \"x\"\ndependencies = [\"requests\"]\n")],
                Language::Python,
                "pyproject.toml",
                Some(PackageManager::Pip),
                8000,
            ),
            (
                &[("pyproject.toml", "[tool.poetry]\nname = \"x\"\n[tool.poetry.dependencies]\npython = \"^3.12\"\n")],
                Language::Python,
                "pyproject.toml",
                Some(PackageManager::Poetry),
                8000,
            ),
            (&[("main.py", "print(1)")], Language::Python, "main.py", None, 8000),
            (&[("app.py", "print(1)")], Language::Python, "app.py", None, 8000),
            (&[("pom.xml", "<project/>")], Language::Java, "pom.xml", Some(PackageManager::Maven), 8080),
            (&[("build.gradle", "plugins {}")], Language::Java, "build.gradle", Some(PackageManager::Gradle), 8080),
            (&[("build.gradle.kts", "plugins {}")], Language::Java, "build.gradle.kts", Some(PackageManager::Gradle), 8080),
            (&[("index.html", "<html>")], Language::Static, "index.html", None, 8080),
            (&[("public/index.html", "<html>")], Language::Static, "public/index.html", None, 8080),
            (&[("dist/index.html", "<html>")], Language::Static, "dist/index.html", None, 8080),
            (&[("build/index.html", "<html>")], Language::Static, "build/index.html", None, 8080),
        ];
        for (files, language, from, manager, port) in cases {
            let d = detected(files);
            assert_eq!((d.language, d.detected_from.as_str(), d.package_manager, d.port), (*language, *from, *manager, *port), "{files:?}");
        }
    }

    #[test]
    fn the_first_marker_in_order_wins() {
        let all = [
            ("Dockerfile", "FROM scratch"),
            ("compose.yaml", "services: {}"),
            ("go.mod", "module x"),
            ("Cargo.toml", "[package]\nname = \"x\""),
            ("package.json", "{}"),
            ("requirements.txt", "flask"),
            ("pom.xml", "<project/>"),
            ("main.py", ""),
            ("index.html", ""),
        ];
        let order =
            ["Dockerfile", "compose.yaml", "go.mod", "Cargo.toml", "package.json", "requirements.txt", "pom.xml", "main.py", "index.html"];
        for (skip, expected) in order.iter().enumerate() {
            let d = detected(&all[skip..]);
            assert_eq!(d.detected_from, *expected, "markers from {expected} on");
        }
        // A Django app with a package.json for its front-end tooling is Node: the order
        // is fixed; the language field overrides it.
        let files = [("package.json", "{}"), ("requirements.txt", "django")];
        assert_eq!(detected(&files).language, Language::Node);
        let d = detect(&MemoryRepo::of(&files), Some(Language::Python)).expect("given");
        assert_eq!((d.language, d.detected_from.as_str(), d.framework), (Language::Python, "language", Some(Framework::Django)));
        // index.html next to a package.json is a Node project (its build makes the site).
        assert_eq!(detected(&[("package.json", "{}"), ("index.html", "")]).language, Language::Node);
        // Poetry's pyproject wins over a requirements.txt; a Pipfile wins over a requirements.txt.
        let poetry = [("pyproject.toml", "[tool.poetry]\nname = \"x\""), ("requirements.txt", "flask")];
        assert_eq!(detected(&poetry).package_manager, Some(PackageManager::Poetry));
        assert_eq!(detected(&[("Pipfile", ""), ("requirements.txt", "")]).package_manager, Some(PackageManager::Pipenv));
        assert_eq!(detected(&[("pyproject.toml", "[project]\nname = \"x\""), ("requirements.txt", "")]).detected_from, "requirements.txt");
    }

    #[test]
    fn a_given_language_wins_and_aliases_parse() {
        let repo = MemoryRepo::of(&[("go.mod", "module x")]);
        let d = detect(&repo, Some(Language::Static)).expect("given");
        assert_eq!((d.language, d.detected_from.as_str()), (Language::Static, "language"));
        let d = detect(&MemoryRepo::default(), Some(Language::Generic)).expect("generic needs no marker");
        assert_eq!(d.language, Language::Generic);
        for (name, language) in [
            ("go", Language::Go),
            ("golang", Language::Go),
            ("node", Language::Node),
            ("nodejs", Language::Node),
            ("javascript", Language::Node),
            ("js", Language::Node),
            ("typescript", Language::Node),
            ("Python", Language::Python),
            ("py", Language::Python),
            ("rust", Language::Rust),
            ("java", Language::Java),
            ("dockerfile", Language::Dockerfile),
            ("static", Language::Static),
            ("docker-compose", Language::Compose),
            ("compose", Language::Compose),
            ("generic", Language::Generic),
        ] {
            assert_eq!(name.parse::<Language>(), Ok(language), "{name}");
        }
        for language in Language::ALL {
            assert_eq!(language.as_str().parse::<Language>(), Ok(language));
        }
        let err = "cobol".parse::<Language>().unwrap_err();
        assert!(err.contains("cobol") && err.contains("golang") && err.contains("docker-compose"), "{err}");
    }

    #[test]
    fn nothing_detectable_is_an_error_naming_what_was_looked_for() {
        let err = detect(&MemoryRepo::of(&[("README.md", "hello"), ("src/lib.c", "")]), None).unwrap_err();
        for looked in ["no detectable language", "Dockerfile", "go.mod", "package.json", "requirements.txt", "pom.xml", "index.html"] {
            assert!(err.contains(looked), "{looked} missing from {err}");
        }
    }

    #[test]
    fn node_package_managers_and_frameworks() {
        let cases: &[(Files, PackageManager, &[&str])] = &[
            (&[("package.json", "{}")], PackageManager::Npm, &["package.json"]),
            (&[("package.json", "{}"), ("package-lock.json", "{}")], PackageManager::Npm, &["package.json", "package-lock.json"]),
            (&[("package.json", "{}"), ("yarn.lock", "")], PackageManager::Yarn, &["package.json", "yarn.lock"]),
            (&[("package.json", "{}"), ("pnpm-lock.yaml", "")], PackageManager::Pnpm, &["package.json", "pnpm-lock.yaml"]),
            (&[("package.json", r#"{"packageManager":"pnpm@9.1.0"}"#)], PackageManager::Pnpm, &["package.json"]),
            (&[("package.json", r#"{"packageManager":"yarn@1.22.0"}"#)], PackageManager::Yarn, &["package.json"]),
        ];
        for (files, manager, manifests) in cases {
            let d = detected(files);
            assert_eq!(d.package_manager, Some(*manager), "{files:?}");
            assert_eq!(d.hints.manifests, *manifests, "{files:?}");
        }
        let berry = detected(&[("package.json", r#"{"packageManager":"yarn@4.5.0"}"#), ("yarn.lock", "")]);
        assert!(berry.hints.yarn_berry);
        let berry = detected(&[("package.json", "{}"), (".yarnrc.yml", ""), ("yarn.lock", "")]);
        assert_eq!((berry.hints.yarn_berry, berry.hints.manifests.len()), (true, 3));
        // Without package.json (the language given), there is nothing to copy.
        let bare = detect(&MemoryRepo::of(&[("index.js", "")]), Some(Language::Node)).expect("given");
        assert!(bare.hints.manifests.is_empty());
        assert!(!detected(&[("package.json", "{}"), ("yarn.lock", "")]).hints.yarn_berry);

        let next = detected(&[(
            "package.json",
            r#"{"dependencies":{"next":"15","react":"19"},"scripts":{"build":"next build","start":"next start"}}"#,
        )]);
        assert_eq!((next.framework, next.hints.node_build_script, next.hints.node_start_script), (Some(Framework::Next), true, true));
        let express = detected(&[("package.json", r#"{"dependencies":{"express":"^4"},"main":"./src/server.js"}"#)]);
        assert_eq!((express.framework, express.hints.node_main.as_deref()), (Some(Framework::Express), Some("src/server.js")));
        let dev_only = detected(&[("package.json", r#"{"devDependencies":{"express":"^4"}}"#), ("index.js", "")]);
        assert_eq!((dev_only.framework, dev_only.hints.node_main.as_deref()), (Some(Framework::Express), Some("index.js")));
        // Not a dependency named express: a script mentioning it.
        assert_eq!(detected(&[("package.json", r#"{"scripts":{"start":"node express.js"}}"#)]).framework, None);
        // A main outside the repository is ignored.
        assert_eq!(detected(&[("package.json", r#"{"main":"../../etc/passwd"}"#)]).hints.node_main, None);
        // A broken package.json is still Node, with nothing known.
        assert_eq!(detected(&[("package.json", "{not json")]).language, Language::Node);
    }

    #[test]
    fn python_frameworks_are_package_names_not_substrings() {
        let framework = |requirements: &str| detected(&[("requirements.txt", requirements)]).framework;
        let cases: &[(&str, Option<Framework>)] = &[
            ("flask", Some(Framework::Flask)),
            ("Flask==3.0.2", Some(Framework::Flask)),
            ("flask-cors\n", None),
            ("flask_cors>=4\nrequests", None),
            ("flask-cors\nflask>=2 ; python_version >= '3.9'\n", Some(Framework::Flask)),
            ("  FLASK[async] ~= 3.0  # the web framework\n", Some(Framework::Flask)),
            ("# flask\nrequests", None),
            ("requests # flask is not used", None),
            ("-r base.txt\n--index-url https://pypi.example/simple\n-e git+https://x/flask.git#egg=flask\n", None),
            ("django-environ\n", None),
            ("Django>=5,<6\ngunicorn\n", Some(Framework::Django)),
            ("fastapi[standard]==0.115\n", Some(Framework::FastApi)),
            ("fastapi-utils\n", None),
            ("flask\nfastapi\n", Some(Framework::FastApi)),
        ];
        for (requirements, expected) in cases {
            assert_eq!(framework(requirements), *expected, "{requirements:?}");
        }
    }

    #[test]
    fn python_manifests_pyproject_poetry_and_pipfile() {
        let pep621 = detected(&[
            ("pyproject.toml", "[project]\nname = \"svc\"\ndependencies = [\"FastAPI>=0.110\", \"uvicorn[standard]\"]\n"),
            ("main.py", ""),
        ]);
        assert_eq!((pep621.framework, pep621.package_manager), (Some(Framework::FastApi), Some(PackageManager::Pip)));
        assert_eq!(pep621.hints.pyproject_requirements, ["FastAPI>=0.110", "uvicorn[standard]"]);
        assert_eq!(pep621.hints.entry.as_deref(), Some("main.py"));
        assert_eq!(pep621.port, 8000);

        let poetry = detected(&[
            ("pyproject.toml", "[tool.poetry]\nname = \"svc\"\n[tool.poetry.dependencies]\npython = \"^3.12\"\nFlask = \"^3\"\n"),
            ("poetry.lock", ""),
            ("app.py", ""),
        ]);
        assert_eq!((poetry.framework, poetry.package_manager, poetry.port), (Some(Framework::Flask), Some(PackageManager::Poetry), 5000));
        assert_eq!(poetry.hints.manifests, ["pyproject.toml", "poetry.lock"]);
        assert!(poetry.hints.pyproject_requirements.is_empty());

        let pipenv = detected(&[("Pipfile", "[packages]\ndjango = \"*\"\n[dev-packages]\nflask = \"*\"\n"), ("Pipfile.lock", "{}")]);
        assert_eq!((pipenv.framework, pipenv.package_manager), (Some(Framework::Django), Some(PackageManager::Pipenv)));
        assert_eq!(pipenv.hints.manifests, ["Pipfile", "Pipfile.lock"]);

        let django = detected(&[
            ("requirements.txt", "django\ngunicorn\n"),
            ("manage.py", "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"),
        ]);
        assert_eq!((django.hints.django_project.as_deref(), django.hints.entry.as_deref()), (Some("mysite"), Some("manage.py")));
        let hostile = detected(&[
            ("requirements.txt", "django"),
            ("manage.py", "os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"a b;rm.settings\")"),
        ]);
        assert_eq!(hostile.hints.django_project, None);
        // A plain script: the file that exists.
        assert_eq!(detected(&[("requirements.txt", "requests"), ("main.py", "")]).hints.entry.as_deref(), Some("main.py"));
        assert_eq!(detected(&[("requirements.txt", "requests"), ("app.py", ""), ("main.py", "")]).hints.entry.as_deref(), Some("app.py"));
    }

    #[test]
    fn go_rust_and_java_hints() {
        assert_eq!(detected(&[("go.mod", "module x"), ("go.sum", ""), ("main.go", "")]).hints.manifests, ["go.mod", "go.sum"]);
        assert_eq!(detected(&[("go.mod", "module x"), ("main.go", "")]).hints.go_package.as_deref(), Some("."));
        assert_eq!(detected(&[("go.mod", "module x"), ("cmd/server/main.go", "")]).hints.go_package.as_deref(), Some("./cmd/server"));
        let rust = |toml: &str| detected(&[("Cargo.toml", toml)]).hints.binary;
        assert_eq!(rust("[package]\nname = \"svc\"\n").as_deref(), Some("svc"));
        assert_eq!(rust("[package]\nname = \"svc\"\ndefault-run = \"api\"\n").as_deref(), Some("api"));
        assert_eq!(rust("[package]\nname = \"svc\"\n[[bin]]\nname = \"web\"\npath = \"src/web.rs\"\n").as_deref(), Some("web"));
        assert_eq!(rust("[workspace]\nmembers = [\"a\"]\n"), None);
        assert_eq!(rust("[package]\nname = \"$(reboot)\"\n"), None);
        let cargo = detected(&[("Cargo.toml", "[package]\nname = \"x\""), ("Cargo.lock", "")]);
        assert_eq!(cargo.hints.manifests, ["Cargo.toml", "Cargo.lock"]);
        let spring = detected(&[("pom.xml", "<parent><artifactId>spring-boot-starter-parent</artifactId></parent>")]);
        assert_eq!(spring.framework, Some(Framework::SpringBoot));
        let gradle = detected(&[("build.gradle.kts", ""), ("settings.gradle.kts", "")]);
        assert_eq!(gradle.hints.manifests, ["settings.gradle.kts", "build.gradle.kts"]);
    }

    #[test]
    fn requirement_names_normalise() {
        assert_eq!(requirement_name("Flask_SQLAlchemy>=3").as_deref(), Some("flask-sqlalchemy"));
        assert_eq!(requirement_name("zope.interface").as_deref(), Some("zope-interface"));
        assert_eq!(requirement_name("uvicorn[standard]@https://x").as_deref(), Some("uvicorn"));
        assert_eq!(requirement_name("   "), None);
        assert_eq!(
            django_project("os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", \"config.settings.prod\")").as_deref(),
            Some("config.settings")
        );
    }

    #[test]
    fn dir_repo_never_follows_symbolic_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("main.py"), "print('hi')").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", root.join("requirements.txt")).expect("symlink");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("index.html"), "secret").expect("write");
        std::fs::write(outside.path().join("go.mod"), "module secret").expect("write");
        std::os::unix::fs::symlink(outside.path(), root.join("public")).expect("dir symlink");
        std::os::unix::fs::symlink(outside.path().join("go.mod"), root.join("go.mod")).expect("symlink");
        std::os::unix::fs::symlink("dangling-target", root.join("Dockerfile")).expect("dangling");
        let repo = DirRepo::new(root);
        assert_eq!(repo.read("requirements.txt"), None, "a link to /etc/passwd is never read");
        assert!(!repo.exists("requirements.txt"));
        assert_eq!(repo.read("public/index.html"), None, "a linked directory is never entered");
        assert!(repo.list("public").is_empty());
        assert_eq!(repo.read("main.py").as_deref(), Some("print('hi')"));
        for hostile in ["../etc/passwd", "/etc/passwd", "./main.py", "a//b", "main.py/"] {
            assert_eq!(repo.read(hostile), None, "{hostile}");
        }
        // Detection sees the plain script only: the links are absent.
        let d = detect(&repo, None).expect("detect");
        assert_eq!((d.language, d.detected_from.as_str(), d.package_manager), (Language::Python, "main.py", None));
        assert_eq!(repo.list(""), ["Dockerfile", "go.mod", "main.py", "public", "requirements.txt"]);
    }

    #[test]
    fn dir_repo_reads_at_most_a_mebibyte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = "x".repeat(usize::try_from(MAX_FILE_BYTES).expect("size") + 1);
        std::fs::write(dir.path().join("package.json"), &big).expect("write");
        std::fs::write(dir.path().join("ok.txt"), "x".repeat(1000)).expect("write");
        std::fs::create_dir_all(dir.path().join("public/css")).expect("mkdir");
        std::fs::write(dir.path().join("public/index.html"), "<html>").expect("write");
        let repo = DirRepo::new(dir.path());
        assert_eq!(repo.read("package.json"), None, "larger than the limit: absent");
        std::fs::write(dir.path().join("exact.txt"), &big[1..]).expect("write");
        assert_eq!(repo.read("exact.txt").map(|t| t.len() as u64), Some(MAX_FILE_BYTES), "the limit itself is read");
        assert_eq!(repo.read("ok.txt").map(|t| t.len()), Some(1000));
        assert!(repo.exists("public") && repo.exists("public/index.html") && !repo.exists("public/nope"));
        assert_eq!(repo.read("public"), None, "a directory is not a file");
        assert_eq!(repo.list("public"), ["css", "index.html"]);
        assert_eq!(repo.list("public/index.html"), Vec::<String>::new());
        // An unreadable package.json is no marker: the site in public/ is found.
        assert_eq!(detect(&repo, None).expect("detect").language, Language::Static);
    }

    #[test]
    fn spec_languages() {
        use crate::build::{BuildSpec, Builder, Buildpack, DEFAULT_BUILD_TIMEOUT};
        let mut spec = BuildSpec {
            build_id: "b".into(),
            git_repo: "https://h/r".into(),
            git_branch: None,
            builder: Builder::Docker,
            image: "i".into(),
            push: false,
            buildpack: Buildpack::Detect,
            language: Some("javascript".into()),
            base_images: BTreeMap::new(),
            timeout: DEFAULT_BUILD_TIMEOUT,
        };
        assert_eq!(spec_language(&spec), Ok(Some(Language::Node)));
        spec.language = Some("cobol".into());
        assert!(spec_language(&spec).unwrap_err().starts_with("language:"));
        spec.buildpack = Buildpack::Static { build_command: String::new(), output_dir: String::new() };
        assert_eq!(spec_language(&spec), Ok(Some(Language::Static)));
        spec.language = None;
        spec.buildpack = Buildpack::Detect;
        assert_eq!(spec_language(&spec), Ok(None));
    }
}
