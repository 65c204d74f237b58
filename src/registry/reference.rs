//! Image references (`[registry/]repository[:tag][@digest]`), normalised the way
//! containerd and Docker name images: `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;

/// Docker Hub's name in image references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:...`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `reference`, filling in Docker Hub and `latest` like Docker does.
    pub fn parse(reference: &str) -> Result<Reference, String> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err("empty image reference".to_owned());
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let (algorithm, hex) = digest.split_once(':').ok_or_else(|| format!("{reference:?}: bad digest"))?;
                if algorithm != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{reference:?}: unsupported digest {digest:?}"));
                }
                (rest, Some(digest.to_ascii_lowercase()))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => (&rest[..last_slash + colon], Some(rest[last_slash + colon + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if tag.is_empty() || tag.len() > 128 || !tag.chars().all(ok) || tag.starts_with(['.', '-']) {
                return Err(format!("{reference:?}: bad tag {tag:?}"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_owned(), path.to_owned()),
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') { format!("library/{repository}") } else { repository };
        let component_ok = |part: &str| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
        };
        if !registry_host_ok(&registry) {
            return Err(format!("{reference:?}: invalid registry host {registry:?} (letters, digits, '.', '-', and an optional :port)"));
        }
        if registry.is_empty() || !repository.split('/').all(component_ok) {
            return Err(format!("{reference:?}: invalid repository name (lowercase letters, digits, '.', '_', '-', '/')"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// What to ask the registry's manifest endpoint for: the digest if any, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

/// `host[:port]` as a registry is named: DNS labels of letters, digits and `-` (not at either
/// end) separated by dots, or a bracketed IPv6 address; an optional numeric port. Nothing
/// else may reach a URL, a command line or a config file as a registry's name.
fn registry_host_ok(registry: &str) -> bool {
    let port_ok = |port: &str| !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        return v6.parse::<std::net::Ipv6Addr>().is_ok() && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    port.is_none_or(port_ok) && !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("127.0.0.1:5000/diplo/busybox:latest").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", "diplo/busybox", Some("latest")));
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.to_string(), "localhost/x:latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("example.com:443/a/b@{digest}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), digest);
        assert_eq!(r.to_string(), format!("example.com:443/a/b@{digest}"));
        for good in ["registry.local/a", "reg-1.example.com:5000/a", "[::1]:5000/a/b", "localhost:5000/x"] {
            assert!(Reference::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "UPPER/case",
            "x:",
            "x@sha256:12",
            "a//b",
            "-x.y/foo",
            "a.b#c/foo",
            "x.-y/foo",
            "a.b:port/foo",
            "a..b/foo",
            "[zz]:1/a",
            "a.b:123456/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
