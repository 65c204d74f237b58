//! The compose buildpack: the services of a compose file that have a `build:` section,
//! each built from its context and Dockerfile (both inside the repository, reached
//! without following symbolic links) and tagged `<image repository>-<service>:<tag>`.

use std::collections::BTreeMap;

use diplo_api::build::{validate_args, validate_repo_path};
use serde::Deserialize;

use super::Target;

/// Largest compose file read.
pub const MAX_COMPOSE_BYTES: usize = 1024 * 1024;
/// Most services built from one compose file.
pub const MAX_SERVICES: usize = 64;

#[derive(Debug, Deserialize)]
struct ComposeFile {
    #[serde(default)]
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(default)]
    build: Option<Build>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Build {
    Context(String),
    Full {
        #[serde(default)]
        context: Option<String>,
        #[serde(default)]
        dockerfile: Option<String>,
        #[serde(default)]
        args: Option<Args>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Args {
    Map(BTreeMap<String, Option<serde_norway::Value>>),
    List(Vec<String>),
}

/// `registry/app:tag` and `web` → `registry/app-web:tag`.
pub fn service_image(image: &str, service: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let last_slash = name.rfind('/').map_or(0, |at| at + 1);
    let (repository, tag) = match name[last_slash..].rfind(':') {
        Some(at) => (&name[..last_slash + at], &name[last_slash + at + 1..]),
        None => (name, "latest"),
    };
    format!("{repository}-{service}:{tag}")
}

/// The targets of compose file `text` (found at `compose_path` in the repository):
/// every service with a `build:` section, or only `only` when given. Contexts are
/// relative to the compose file's directory and must stay inside the repository.
pub fn targets(text: &str, compose_path: &str, image: &str, only: &str) -> Result<Vec<Target>, String> {
    if text.len() > MAX_COMPOSE_BYTES {
        return Err(format!("{compose_path}: larger than {} KiB", MAX_COMPOSE_BYTES / 1024));
    }
    let file: ComposeFile = serde_norway::from_str(text).map_err(|e| format!("{compose_path}: {e}"))?;
    let base = compose_path.rsplit_once('/').map_or("", |(dir, _)| dir);
    let mut targets = Vec::new();
    for (service, definition) in &file.services {
        if !only.is_empty() && service != only {
            continue;
        }
        if service.is_empty() || !service.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("{compose_path}: {service:?} is not a service name"));
        }
        let Some(build) = &definition.build else { continue };
        let (context, dockerfile, args) = match build {
            Build::Context(context) => (context.clone(), None, None),
            Build::Full { context, dockerfile, args } => (context.clone().unwrap_or_else(|| ".".into()), dockerfile.clone(), args.as_ref()),
        };
        let context = join(base, &context);
        validate_repo_path(&format!("services.{service}.build.context"), &context)?;
        let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
        validate_repo_path(&format!("services.{service}.build.dockerfile"), &dockerfile)?;
        let build_args: BTreeMap<String, String> = match args {
            None => BTreeMap::new(),
            Some(Args::Map(map)) => map
                .iter()
                .filter_map(|(k, v)| {
                    let value = match v.as_ref()? {
                        serde_norway::Value::String(s) => s.clone(),
                        serde_norway::Value::Number(n) => n.to_string(),
                        serde_norway::Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), value))
                })
                .collect(),
            Some(Args::List(list)) => {
                list.iter().filter_map(|item| item.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
            }
        };
        validate_args(&format!("services.{service}.build.args"), &build_args)?;
        targets.push(Target { service: Some(service.clone()), image: service_image(image, service), context, dockerfile, build_args });
    }
    if targets.len() > MAX_SERVICES {
        return Err(format!("{compose_path}: more than {MAX_SERVICES} services to build"));
    }
    if targets.is_empty() {
        return Err(if only.is_empty() {
            format!("{compose_path}: no service has a build: section")
        } else {
            format!("{compose_path}: service {only:?} does not exist or has no build: section")
        });
    }
    Ok(targets)
}

/// `base/relative`, normalising `.` components (`..` and absolute paths are left for
/// the check to refuse).
fn join(base: &str, relative: &str) -> String {
    if relative.starts_with('/') {
        return relative.to_owned();
    }
    let parts: Vec<&str> = base.split('/').chain(relative.split('/')).filter(|p| !p.is_empty() && *p != ".").collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_with_a_build_section_become_targets() {
        let text = "services:\n  web:\n    build: ./web\n  api:\n    build:\n      context: api\n      dockerfile: docker/Dockerfile.prod\n      \
                    args:\n        VERSION: 2\n        MODE: prod\n  worker:\n    build:\n      args: [\"A=1\"]\n  db:\n    image: postgres:16\n";
        let targets = targets(text, "docker-compose.yml", "127.0.0.1:5000/shop:7", "").expect("targets");
        let summary: Vec<(String, String, String, String)> = targets
            .iter()
            .map(|t| (t.service.clone().unwrap_or_default(), t.image.clone(), t.context.clone(), t.dockerfile.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("api".into(), "127.0.0.1:5000/shop-api:7".into(), "api".into(), "docker/Dockerfile.prod".into()),
                ("web".into(), "127.0.0.1:5000/shop-web:7".into(), "web".into(), "Dockerfile".into()),
                ("worker".into(), "127.0.0.1:5000/shop-worker:7".into(), "".into(), "Dockerfile".into()),
            ]
        );
        assert_eq!(targets[0].build_args, [("MODE".to_owned(), "prod".to_owned()), ("VERSION".to_owned(), "2".to_owned())].into());
        assert_eq!(targets[2].build_args, [("A".to_owned(), "1".to_owned())].into());
        let only = super::targets(text, "deploy/compose.yaml", "app", "web").expect("one service");
        assert_eq!((only.len(), only[0].context.as_str(), only[0].image.as_str()), (1, "deploy/web", "app-web:latest"));
    }

    #[test]
    fn hostile_compose_files_are_refused() {
        for (text, expected) in [
            ("services:\n  x:\n    build: ../outside\n", "services.x.build.context"),
            ("services:\n  x:\n    build: /etc\n", "services.x.build.context"),
            ("services:\n  x:\n    build:\n      dockerfile: ../../etc/passwd\n", "services.x.build.dockerfile"),
            ("services:\n  x:\n    build:\n      args:\n        'A B': 1\n", "services.x.build.args"),
            ("services:\n  db:\n    image: postgres\n", "no service has a build"),
            ("services: [1, 2", "docker-compose.yml"),
        ] {
            let err = targets(text, "docker-compose.yml", "app:1", "").unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let big = format!("# {}\nservices: {{}}\n", "x".repeat(MAX_COMPOSE_BYTES));
        assert!(targets(&big, "c.yml", "a", "").unwrap_err().contains("larger than"));
        assert!(targets("services:\n  web:\n    build: .\n", "c.yml", "a", "api").unwrap_err().contains("\"api\" does not exist"));
    }
}
