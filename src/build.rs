//! Builds from git: what the control plane asks a builder node to build
//! ([`BuildSpec`]), how it ended ([`BuildReport`]), the checks every field passes before
//! it becomes a `git` argument, a path in a workspace or a build argument, and the wire
//! conversions.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::pb;
use crate::wire::WireError;

pub mod detect;
pub mod template;

pub use detect::{Detection, DirRepo, Framework, Language, MemoryRepo, PackageManager, RepoFiles, detect};
pub use template::{BaseImages, Rendered, TemplateOptions, default_images, parse_base_images, render, supported_languages};

/// Longest repository URL accepted.
pub const MAX_REPO_URL: usize = 2048;
/// Longest branch name accepted.
pub const MAX_BRANCH: usize = 255;
/// Longest build id accepted.
pub const MAX_BUILD_ID: usize = 64;
/// Most build arguments or variables in one build.
pub const MAX_BUILD_ARGS: usize = 128;
/// Longest value of a build argument, a variable or a command.
pub const MAX_ARG_VALUE: usize = 4096;
/// Default time a build may take, clone included.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest build time anyone may ask for.
pub const MAX_BUILD_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// A program that turns a build context into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    /// Docker's build API.
    Docker,
    /// Podman's (Docker-compatible) build API.
    Podman,
    /// `buildah`, on nodes with neither (containerd or LXC only).
    Buildah,
}

impl Builder {
    /// Lower-case name, as on the wire and in fingerprints.
    pub fn as_str(self) -> &'static str {
        match self {
            Builder::Docker => "docker",
            Builder::Podman => "podman",
            Builder::Buildah => "buildah",
        }
    }

    /// Every builder, in the order a node's builders are preferred.
    pub const ALL: [Builder; 3] = [Builder::Docker, Builder::Podman, Builder::Buildah];
}

impl fmt::Display for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Builder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Builder::Docker),
            "podman" => Ok(Builder::Podman),
            "buildah" => Ok(Builder::Buildah),
            other => Err(format!("unknown builder {other:?} (docker, podman or buildah)")),
        }
    }
}

/// How the image is made from the repository (mikrocloud's `buildpack_type` and its
/// per-type configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Buildpack {
    /// Detect the language and render its template (a `Dockerfile` in the repository
    /// wins).
    #[default]
    Detect,
    /// The repository's own Dockerfile.
    Dockerfile {
        /// Path of the Dockerfile inside the repository (`Dockerfile` when empty).
        path: String,
        /// `--build-arg`s.
        build_args: BTreeMap<String, String>,
    },
    /// A static site: an optional build command, then the output directory served by a
    /// small web server image.
    Static {
        /// Shell command producing the site (`npm run build`), if any.
        build_command: String,
        /// Directory (inside the repository) served; empty: the repository root, or
        /// the usual `dist`/`build`/`public` when present.
        output_dir: String,
    },
    /// `nixpacks` when the node has it, else detection and templates honouring the
    /// start command and the variables.
    Nixpacks {
        /// Command that starts the app, replacing the template's.
        start_command: String,
        /// Environment for build and run.
        variables: BTreeMap<String, String>,
    },
    /// Every service with a `build:` section of a compose file, built and pushed.
    Compose {
        /// Compose file inside the repository (`docker-compose.yml` when empty).
        compose_file: String,
        /// Only this service; empty: all services with a `build:` section.
        service: String,
    },
}

impl Buildpack {
    /// The `buildpack_type` name (`""` for detection).
    pub fn kind(&self) -> &'static str {
        match self {
            Buildpack::Detect => "",
            Buildpack::Dockerfile { .. } => "dockerfile",
            Buildpack::Static { .. } => "static",
            Buildpack::Nixpacks { .. } => "nixpacks",
            Buildpack::Compose { .. } => "docker-compose",
        }
    }
}

/// One build for a builder node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The build's id (also names its workspace and labels its images).
    pub build_id: String,
    /// Repository URL (`https://`, `http://`, `git://`, `ssh://`, `file://`).
    pub git_repo: String,
    /// Branch or tag; `None`: the repository's default branch.
    pub git_branch: Option<String>,
    /// Which builder runs it.
    pub builder: Builder,
    /// Full image reference to tag (and push), e.g. `127.0.0.1:5000/app:abc`.
    pub image: String,
    /// Push the image to its registry once built.
    pub push: bool,
    /// How to build.
    pub buildpack: Buildpack,
    /// Language overriding detection (`go`, `node`, `python`, ...).
    pub language: Option<String>,
    /// Base images per language key, overriding the defaults.
    pub base_images: BTreeMap<String, String>,
    /// Time allowed, clone included.
    pub timeout: Duration,
}

/// Where a build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    /// Accepted, waiting for a builder.
    Queued,
    /// Cloning or building on its node.
    Running,
    /// The image is built (and pushed).
    Succeeded,
    /// It failed; the message says why.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl BuildStatus {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        matches!(self, BuildStatus::Succeeded | BuildStatus::Failed | BuildStatus::Cancelled)
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BuildStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queued" => Ok(BuildStatus::Queued),
            "running" => Ok(BuildStatus::Running),
            "succeeded" => Ok(BuildStatus::Succeeded),
            "failed" => Ok(BuildStatus::Failed),
            "cancelled" => Ok(BuildStatus::Cancelled),
            other => Err(format!("unknown build status {other:?}")),
        }
    }
}

/// How a build ended, as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The build.
    pub build_id: String,
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub status: BuildStatus,
    /// Why it failed (empty otherwise).
    pub error: String,
    /// The image built, `repository:tag@sha256:…` once pushed.
    pub image: String,
    /// `sha256:…` of the image's manifest (pushed) or of its config (local only).
    pub digest: String,
    /// Language built for (detected or given).
    pub language: String,
    /// The file that gave the language away (`go.mod`), or `"language"` when given.
    pub detected_from: String,
    /// The commit built.
    pub commit: String,
    /// For the compose buildpack: service name → image.
    pub service_images: BTreeMap<String, String>,
}

impl BuildReport {
    /// A failed build's report.
    pub fn failed(build_id: impl Into<String>, error: impl Into<String>) -> Self {
        BuildReport {
            build_id: build_id.into(),
            status: BuildStatus::Failed,
            error: error.into(),
            image: String::new(),
            digest: String::new(),
            language: String::new(),
            detected_from: String::new(),
            commit: String::new(),
            service_images: BTreeMap::new(),
        }
    }
}

/// A build id: 1 to 64 of letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_build_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_BUILD_ID
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(format!("{id:?} is not a build id (1-{MAX_BUILD_ID} letters, digits, '-' or '_')")) }
}

/// A repository URL `git` may be given: `https://`, `http://`, `git://`, `ssh://` or
/// `file://` (absolute path), no whitespace or control character, no `-` at the start
/// (never an option), no `ext::`-style transport, bounded length.
pub fn validate_repo_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("a repository URL is required".into());
    }
    if url.len() > MAX_REPO_URL {
        return Err(format!("repository URL longer than {MAX_REPO_URL} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("repository URL contains whitespace or control characters".into());
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?}: expected https://, http://, git://, ssh:// or file://"))?;
    match scheme {
        "https" | "http" | "git" | "ssh" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            if host.is_empty() || host.starts_with('-') {
                return Err(format!("{url:?}: the URL has no host"));
            }
            Ok(())
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(format!("{url:?}: a file:// URL needs an absolute path"));
            }
            if rest.split('/').any(|part| part == "..") {
                return Err(format!("{url:?}: '..' is not allowed in a file:// path"));
            }
            Ok(())
        }
        other => Err(format!("{url:?}: scheme {other:?} is not allowed (https, http, git, ssh or file)")),
    }
}

/// A branch or tag name as `git check-ref-format --branch` accepts it, more strictly:
/// letters, digits and `._/-+`, no `..`, no leading `-`, `/` or `.`, bounded length.
pub fn validate_branch(branch: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{branch:?} is not a branch name: {why}"));
    if branch.is_empty() || branch.len() > MAX_BRANCH {
        return bad(&format!("1 to {MAX_BRANCH} characters"));
    }
    if !branch.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-+".contains(&b)) {
        return bad("letters, digits and . _ / - + only");
    }
    if branch.starts_with(['-', '/', '.']) || branch.ends_with(['/', '.']) || branch.contains("..") || branch.contains("//") {
        return bad("no leading '-', '/' or '.', no '..' or '//'");
    }
    if branch.ends_with(".lock") || branch.split('/').any(|part| part.starts_with('.')) {
        return bad("no component starting with '.' or ending in .lock");
    }
    Ok(())
}

/// A path inside the repository (a Dockerfile, an output directory, a compose file):
/// relative, no `..` component, no NUL, bounded length. The builder still resolves it
/// without following symbolic links out of the workspace.
pub fn validate_repo_path(field: &str, path: &str) -> Result<(), String> {
    if path.len() > 1024 || path.contains('\0') {
        return Err(format!("{field}: path too long or contains NUL"));
    }
    if path.starts_with('/') || path.split(['/', '\\']).any(|part| part == "..") {
        return Err(format!("{field}: {path:?} must be a relative path inside the repository without '..'"));
    }
    Ok(())
}

/// Build arguments and variables: names like environment variables, bounded values
/// and count.
pub fn validate_args(field: &str, args: &BTreeMap<String, String>) -> Result<(), String> {
    if args.len() > MAX_BUILD_ARGS {
        return Err(format!("{field}: more than {MAX_BUILD_ARGS} entries"));
    }
    for (name, value) in args {
        let valid = name.len() <= 256
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("{field}: {name:?} is not a valid name (letters, digits and '_')"));
        }
        if value.len() > MAX_ARG_VALUE || value.contains('\0') {
            return Err(format!("{field}.{name}: value longer than {MAX_ARG_VALUE} bytes or contains NUL"));
        }
    }
    Ok(())
}

/// A shell command given in a build configuration: bounded, no NUL or newline.
pub fn validate_command(field: &str, command: &str) -> Result<(), String> {
    if command.len() > MAX_ARG_VALUE || command.contains(['\0', '\n', '\r']) {
        return Err(format!("{field}: longer than {MAX_ARG_VALUE} bytes or contains NUL or a line break"));
    }
    Ok(())
}

impl BuildSpec {
    /// Checks every field; the error names the field at fault (`(field, message)`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        fn at(field: &'static str) -> impl Fn(String) -> (String, String) {
            move |message| (field.to_owned(), message)
        }
        validate_build_id(&self.build_id).map_err(at("id"))?;
        validate_repo_url(&self.git_repo).map_err(at("git_repo"))?;
        if let Some(branch) = &self.git_branch {
            validate_branch(branch).map_err(at("git_branch"))?;
        }
        if self.image.is_empty() || self.image.len() > 512 || self.image.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(("image_tag".into(), format!("{:?} is not an image reference", self.image)));
        }
        if let Some(language) = &self.language
            && (language.is_empty()
                || language.len() > 32
                || !language.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(("language".into(), format!("{language:?} is not a language name")));
        }
        for (key, image) in &self.base_images {
            if image.is_empty() || image.len() > 512 || image.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(("base_images".into(), format!("{key}={image:?} is not an image reference")));
            }
        }
        if self.timeout.is_zero() || self.timeout > MAX_BUILD_TIMEOUT {
            return Err(("timeout".into(), format!("must be between 1 s and {} s", MAX_BUILD_TIMEOUT.as_secs())));
        }
        match &self.buildpack {
            Buildpack::Detect => {}
            Buildpack::Dockerfile { path, build_args } => {
                validate_repo_path("dockerfile_config.dockerfile_path", path).map_err(at("dockerfile_config.dockerfile_path"))?;
                validate_args("dockerfile_config.build_args", build_args).map_err(at("dockerfile_config.build_args"))?;
            }
            Buildpack::Static { build_command, output_dir } => {
                validate_command("static_config.build_command", build_command).map_err(at("static_config.build_command"))?;
                validate_repo_path("static_config.output_dir", output_dir).map_err(at("static_config.output_dir"))?;
            }
            Buildpack::Nixpacks { start_command, variables } => {
                validate_command("nixpacks_config.start_command", start_command).map_err(at("nixpacks_config.start_command"))?;
                validate_args("nixpacks_config.variables", variables).map_err(at("nixpacks_config.variables"))?;
            }
            Buildpack::Compose { compose_file, service } => {
                validate_repo_path("compose_config.compose_file", compose_file).map_err(at("compose_config.compose_file"))?;
                if !service.is_empty() && !service.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    return Err(("compose_config.service".into(), format!("{service:?} is not a service name")));
                }
            }
        }
        Ok(())
    }
}

fn empty_none(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<&BuildSpec> for pb::BuildImage {
    fn from(spec: &BuildSpec) -> Self {
        let mut wire = pb::BuildImage {
            build_id: spec.build_id.clone(),
            git_repo: spec.git_repo.clone(),
            git_branch: spec.git_branch.clone().unwrap_or_default(),
            builder: spec.builder.as_str().into(),
            image: spec.image.clone(),
            push: spec.push,
            buildpack_type: spec.buildpack.kind().into(),
            language: spec.language.clone().unwrap_or_default(),
            base_images: spec.base_images.clone().into_iter().collect(),
            timeout_seconds: u32::try_from(spec.timeout.as_secs()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        match &spec.buildpack {
            Buildpack::Detect => {}
            Buildpack::Dockerfile { path, build_args } => {
                wire.dockerfile_path = path.clone();
                wire.build_args = build_args.clone().into_iter().collect();
            }
            Buildpack::Static { build_command, output_dir } => {
                wire.build_command = build_command.clone();
                wire.output_dir = output_dir.clone();
            }
            Buildpack::Nixpacks { start_command, variables } => {
                wire.start_command = start_command.clone();
                wire.variables = variables.clone().into_iter().collect();
            }
            Buildpack::Compose { compose_file, service } => {
                wire.compose_file = compose_file.clone();
                wire.compose_service = service.clone();
            }
        }
        wire
    }
}

/// Parses a `buildpack_type` and its configuration fields into a [`Buildpack`].
pub fn buildpack(
    kind: &str,
    dockerfile: (String, BTreeMap<String, String>),
    static_site: (String, String),
    nixpacks: (String, BTreeMap<String, String>),
    compose: (String, String),
) -> Result<Buildpack, String> {
    Ok(match kind {
        "" => Buildpack::Detect,
        "dockerfile" => Buildpack::Dockerfile { path: dockerfile.0, build_args: dockerfile.1 },
        "static" => Buildpack::Static { build_command: static_site.0, output_dir: static_site.1 },
        "nixpacks" => Buildpack::Nixpacks { start_command: nixpacks.0, variables: nixpacks.1 },
        "docker-compose" => Buildpack::Compose { compose_file: compose.0, service: compose.1 },
        other => return Err(format!("unknown buildpack_type {other:?} (nixpacks, static, dockerfile or docker-compose)")),
    })
}

impl TryFrom<pb::BuildImage> for BuildSpec {
    type Error = WireError;

    fn try_from(wire: pb::BuildImage) -> Result<Self, WireError> {
        let invalid = |field: &str, message: String| WireError { field: field.into(), message };
        let builder = wire.builder.parse().map_err(|e| invalid("builder", e))?;
        let buildpack = buildpack(
            &wire.buildpack_type,
            (wire.dockerfile_path, wire.build_args.into_iter().collect()),
            (wire.build_command, wire.output_dir),
            (wire.start_command, wire.variables.into_iter().collect()),
            (wire.compose_file, wire.compose_service),
        )
        .map_err(|e| invalid("buildpack_type", e))?;
        let spec = BuildSpec {
            build_id: wire.build_id,
            git_repo: wire.git_repo,
            git_branch: empty_none(wire.git_branch),
            builder,
            image: wire.image,
            push: wire.push,
            buildpack,
            language: empty_none(wire.language),
            base_images: wire.base_images.into_iter().collect(),
            timeout: Duration::from_secs(u64::from(wire.timeout_seconds)),
        };
        spec.validate().map_err(|(field, message)| WireError { field, message })?;
        Ok(spec)
    }
}

impl From<&BuildReport> for pb::BuildReport {
    fn from(report: &BuildReport) -> Self {
        pb::BuildReport {
            build_id: report.build_id.clone(),
            status: report.status.as_str().into(),
            error: report.error.clone(),
            image: report.image.clone(),
            digest: report.digest.clone(),
            language: report.language.clone(),
            detected_from: report.detected_from.clone(),
            commit: report.commit.clone(),
            service_images: report.service_images.clone().into_iter().collect(),
        }
    }
}

impl TryFrom<pb::BuildReport> for BuildReport {
    type Error = WireError;

    /// A node's report, bounded: every text is cut and escaped like any node message.
    fn try_from(wire: pb::BuildReport) -> Result<Self, WireError> {
        use crate::text::{NODE_MESSAGE_MAX, bounded, node_text};
        validate_build_id(&wire.build_id).map_err(|message| WireError { field: "build_id".into(), message })?;
        let status: BuildStatus = wire.status.parse().map_err(|message| WireError { field: "status".into(), message })?;
        if !status.is_final() {
            return Err(WireError { field: "status".into(), message: format!("{status} is not how a build ends") });
        }
        if wire.service_images.len() > MAX_BUILD_ARGS {
            return Err(WireError { field: "service_images".into(), message: format!("more than {MAX_BUILD_ARGS} services") });
        }
        Ok(BuildReport {
            build_id: wire.build_id,
            status,
            error: bounded(&wire.error, NODE_MESSAGE_MAX),
            image: node_text(&wire.image),
            digest: node_text(&wire.digest),
            language: node_text(&wire.language),
            detected_from: node_text(&wire.detected_from),
            commit: node_text(&wire.commit),
            service_images: wire.service_images.into_iter().map(|(k, v)| (node_text(&k), node_text(&v))).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BuildSpec {
        BuildSpec {
            build_id: "b-1".into(),
            git_repo: "https://git.example/app.git".into(),
            git_branch: Some("main".into()),
            builder: Builder::Docker,
            image: "127.0.0.1:5000/app:1".into(),
            push: true,
            buildpack: Buildpack::Dockerfile { path: "docker/Dockerfile".into(), build_args: [("V".into(), "1".into())].into() },
            language: None,
            base_images: BTreeMap::new(),
            timeout: DEFAULT_BUILD_TIMEOUT,
        }
    }

    #[test]
    fn specs_and_reports_round_trip() {
        let mut s = spec();
        assert_eq!(BuildSpec::try_from(pb::BuildImage::from(&s)), Ok(s.clone()));
        s.buildpack = Buildpack::Static { build_command: "make site".into(), output_dir: "public".into() };
        s.git_branch = None;
        assert_eq!(BuildSpec::try_from(pb::BuildImage::from(&s)), Ok(s.clone()));
        let mut report = BuildReport::failed("b-1", "boom");
        assert_eq!(BuildReport::try_from(pb::BuildReport::from(&report)), Ok(report.clone()));
        report.status = BuildStatus::Running;
        assert_eq!(BuildReport::try_from(pb::BuildReport::from(&report)).unwrap_err().field, "status");
    }

    #[test]
    fn hostile_fields_are_refused_naming_the_field() {
        type Mutation = fn(&mut BuildSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.git_repo = "--upload-pack=touch /tmp/x".into(), "git_repo"),
            (|s| s.git_repo = "ext::sh -c touch% /tmp/pwned".into(), "git_repo"),
            (|s| s.git_repo = "https://-oProxyCommand=x/repo".into(), "git_repo"),
            (|s| s.git_repo = "file://relative/repo".into(), "git_repo"),
            (|s| s.git_repo = "file:///srv/../etc".into(), "git_repo"),
            (|s| s.git_repo = "https://host/repo\n".into(), "git_repo"),
            (|s| s.git_branch = Some("--orphan".into()), "git_branch"),
            (|s| s.git_branch = Some("a..b".into()), "git_branch"),
            (|s| s.git_branch = Some("main;rm -rf /".into()), "git_branch"),
            (|s| s.build_id = "../x".into(), "id"),
            (|s| s.image = "bad image".into(), "image_tag"),
            (
                |s| s.buildpack = Buildpack::Dockerfile { path: "../../etc/passwd".into(), build_args: BTreeMap::new() },
                "dockerfile_config.dockerfile_path",
            ),
            (
                |s| s.buildpack = Buildpack::Dockerfile { path: "/etc/passwd".into(), build_args: BTreeMap::new() },
                "dockerfile_config.dockerfile_path",
            ),
            (
                |s| s.buildpack = Buildpack::Dockerfile { path: String::new(), build_args: [("A B".into(), "x".into())].into() },
                "dockerfile_config.build_args",
            ),
            (
                |s| s.buildpack = Buildpack::Static { build_command: "a\nb".into(), output_dir: String::new() },
                "static_config.build_command",
            ),
            (|s| s.timeout = Duration::ZERO, "timeout"),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate().unwrap_err().0, field, "{s:?}");
        }
        assert!(spec().validate().is_ok());
        for url in ["file:///srv/repos/app", "ssh://git@host/app.git", "git://host/app", "http://127.0.0.1:3000/a.git"] {
            assert_eq!(validate_repo_url(url), Ok(()), "{url}");
        }
    }
}
