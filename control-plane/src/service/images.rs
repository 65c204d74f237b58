//! Image platforms, read from the registry and cached per image reference: the
//! scheduler's hard filter (an image runs only where it is built for). A fresh answer is kept for
//! [`PLATFORMS_TTL`]; after that it is still used while a background refresh asks the
//! registry again (a `HEAD` first: when the manifest digest did not move, nothing else is
//! fetched), so a reconcile pass only waits for the registry the first time it meets an
//! image. Failures are kept for [`FAILURE_TTL`], so an unreachable registry is not asked
//! every pass either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use diplo_api::registry::{ImagePlatforms, Reference, RegistryClient, RegistryConfig, RegistryError};

/// How long platforms read from a registry are used without asking again.
pub const PLATFORMS_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a failed look-up (unknown image, unreachable registry) is remembered.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Longest wait for one look-up.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the registry says about an image's platforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformLookup {
    /// The `(os, arch)` pairs it is built for.
    Known(Vec<(String, String)>),
    /// The registry does not have it (or refuses anonymous access): the normalised reference.
    UnknownImage(String),
    /// The reference does not parse.
    InvalidReference(String),
    /// The registry could not be asked or answered nonsense: why.
    Unavailable(String),
}

impl PlatformLookup {
    /// The scheduler's filter: `None` (not filtered) unless the platforms are known.
    pub fn platforms(&self) -> Option<Vec<(String, String)>> {
        match self {
            PlatformLookup::Known(platforms) => Some(platforms.clone()),
            _ => None,
        }
    }

    /// Why placement does not check platforms, for the deployment's message.
    pub fn note(&self, image: &str) -> Option<String> {
        match self {
            PlatformLookup::Known(_) => None,
            PlatformLookup::UnknownImage(reference) => Some(format!("image platforms not checked: {reference} is not in its registry")),
            PlatformLookup::InvalidReference(message) => Some(format!("image platforms not checked: {message}")),
            PlatformLookup::Unavailable(why) => Some(format!("image platforms of {image} not checked: {why}")),
        }
    }
}

struct Cached {
    at: Instant,
    lookup: PlatformLookup,
    /// Digest of the manifest the platforms were read from.
    digest: Option<String>,
    /// A background refresh is under way.
    refreshing: bool,
}

/// Image platforms per reference, cached.
pub struct PlatformCache {
    client: Option<RegistryClient>,
    /// Why there is no client.
    client_error: String,
    entries: Mutex<HashMap<String, Cached>>,
}

impl PlatformCache {
    /// A cache over a registry client with `config`.
    pub fn new(config: RegistryConfig) -> Arc<Self> {
        let (client, client_error) = match RegistryClient::new(config, concat!("diplo-control-plane/", env!("CARGO_PKG_VERSION"))) {
            Ok(client) => (Some(client), String::new()),
            Err(err) => (None, err.to_string()),
        };
        Arc::new(PlatformCache { client, client_error, entries: Mutex::new(HashMap::new()) })
    }

    /// Uses `config` (insecure registries, credentials) from now on; what was cached is
    /// forgotten, as new credentials may open images refused before.
    pub fn set_registry_config(&self, config: RegistryConfig) {
        if let Some(client) = &self.client {
            client.set_config(config);
        }
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// The platforms of `image`: cached when fresh; when stale, the cached answer while a
    /// refresh runs in the background; asked now (at most [`LOOKUP_TIMEOUT`]) only the
    /// first time.
    pub async fn lookup(self: &Arc<Self>, image: &str) -> PlatformLookup {
        let reference = match Reference::parse(image) {
            Ok(reference) => reference,
            Err(message) => return PlatformLookup::InvalidReference(message),
        };
        let key = reference.to_string();
        let stale = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get_mut(&key) {
                Some(entry) if entry.at.elapsed() < ttl(&entry.lookup) => return entry.lookup.clone(),
                Some(entry) => {
                    let start = !entry.refreshing;
                    entry.refreshing = true;
                    Some((entry.lookup.clone(), entry.digest.clone(), start))
                }
                None => None,
            }
        };
        match stale {
            Some((lookup, digest, start)) => {
                if start {
                    let this = self.clone();
                    tokio::spawn(async move { this.refresh(reference, digest).await });
                }
                lookup
            }
            None => self.fetch(reference).await,
        }
    }

    /// Asks the registry now, whatever is cached (a deploy wants a current answer
    /// unless a fresh one is known).
    pub async fn lookup_fresh(self: &Arc<Self>, image: &str) -> PlatformLookup {
        let reference = match Reference::parse(image) {
            Ok(reference) => reference,
            Err(message) => return PlatformLookup::InvalidReference(message),
        };
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.get(&reference.to_string())
                && matches!(entry.lookup, PlatformLookup::Known(_))
                && entry.at.elapsed() < PLATFORMS_TTL
            {
                return entry.lookup.clone();
            }
        }
        self.fetch(reference).await
    }

    async fn fetch(&self, reference: Reference) -> PlatformLookup {
        let (lookup, digest) = self.ask(&reference).await;
        self.store(reference.to_string(), lookup.clone(), digest);
        lookup
    }

    /// Asks again about a stale entry: for known platforms, only the digest when it did
    /// not move, and an unreachable registry keeps them.
    async fn refresh(&self, reference: Reference, digest: Option<String>) {
        let key = reference.to_string();
        if let (Some(client), Some(known)) = (&self.client, digest.as_deref()) {
            let head = tokio::time::timeout(LOOKUP_TIMEOUT, client.manifest_digest(&reference, reference.manifest_reference())).await;
            if let Ok(Ok(Some(current))) = head
                && current == known
            {
                let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = entries.get_mut(&key) {
                    entry.at = Instant::now();
                    entry.refreshing = false;
                }
                return;
            }
        }
        let (lookup, new_digest) = self.ask(&reference).await;
        if matches!(lookup, PlatformLookup::Unavailable(_)) && digest.is_some() {
            // A registry that cannot be reached now does not make known platforms unknown.
            tracing::warn!(image = %key, why = ?lookup, "could not refresh image platforms; keeping the last ones");
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.get_mut(&key) {
                entry.at = Instant::now();
                entry.refreshing = false;
            }
            return;
        }
        self.store(key, lookup, new_digest);
    }

    async fn ask(&self, reference: &Reference) -> (PlatformLookup, Option<String>) {
        let Some(client) = &self.client else {
            return (PlatformLookup::Unavailable(self.client_error.clone()), None);
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, client.platforms(reference)).await {
            Ok(Ok(ImagePlatforms { digest, platforms })) => {
                let pairs = platforms.into_iter().map(|p| (p.os, p.architecture)).fold(Vec::new(), |mut pairs, pair| {
                    if !pairs.contains(&pair) {
                        pairs.push(pair);
                    }
                    pairs
                });
                (PlatformLookup::Known(pairs), Some(digest))
            }
            Ok(Err(RegistryError::NotFound(reference))) => (PlatformLookup::UnknownImage(reference), None),
            // Registries answer 401 for images that do not exist as well (Docker Hub does
            // for any unknown repository): an image refused is treated as unknown.
            Ok(Err(RegistryError::Unauthorized(reference))) => (PlatformLookup::UnknownImage(reference), None),
            Ok(Err(err)) => (PlatformLookup::Unavailable(err.to_string()), None),
            Err(_) => (PlatformLookup::Unavailable(format!("the registry of {reference} did not answer within {LOOKUP_TIMEOUT:?}")), None),
        }
    }

    fn store(&self, key: String, lookup: PlatformLookup, digest: Option<String>) {
        if let PlatformLookup::Known(platforms) = &lookup {
            tracing::debug!(image = %key, ?platforms, "image platforms");
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Images no deployment uses any more go after a while.
        entries.retain(|_, entry| entry.at.elapsed() < 4 * PLATFORMS_TTL);
        entries.insert(key, Cached { at: Instant::now(), lookup, digest, refreshing: false });
    }
}

fn ttl(lookup: &PlatformLookup) -> Duration {
    match lookup {
        PlatformLookup::Known(_) => PLATFORMS_TTL,
        _ => FAILURE_TTL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_registry_busybox_is_linux_amd64_and_is_cached() {
        let cache = PlatformCache::new(RegistryConfig::default());
        let image = "127.0.0.1:5000/diplo/busybox:latest";
        match cache.lookup(image).await {
            PlatformLookup::Known(platforms) => assert_eq!(platforms, vec![("linux".to_owned(), "amd64".to_owned())]),
            PlatformLookup::Unavailable(why) => {
                diplo_tests::skip_or_fail(&format!("no local registry on 127.0.0.1:5000: {why}"));
                return;
            }
            other => panic!("{other:?}"),
        }
        assert!(cache.entries.lock().unwrap_or_else(PoisonError::into_inner).contains_key(image));
        let unknown = cache.lookup_fresh("127.0.0.1:5000/diplo/no-such-image:latest").await;
        assert_eq!(unknown, PlatformLookup::UnknownImage("127.0.0.1:5000/diplo/no-such-image:latest".into()));
        assert!(unknown.note("x").is_some_and(|n| n.contains("no-such-image")));
        assert!(matches!(cache.lookup("UPPER/case").await, PlatformLookup::InvalidReference(_)));
        // A port nothing listens on: unavailable, placement not blocked.
        let closed = cache.lookup("127.0.0.1:1/x/y:latest").await;
        assert!(matches!(&closed, PlatformLookup::Unavailable(why) if why.contains("cannot reach registry")), "{closed:?}");
        assert_eq!(closed.platforms(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_images_are_read_with_the_credentials_set_later() {
        use diplo_api::registry::RegistryCredential;
        let mut registry = match diplo_tests::private_registry::PrivateRegistry::start() {
            Ok(registry) => registry,
            Err(err) => return diplo_tests::skip_or_fail(&format!("no private registry: {err:#}")),
        };
        let image = registry.push(&diplo_tests::unique_name("platforms")).expect("push to the private registry");
        let cache = PlatformCache::new(RegistryConfig::default());
        // Refused without a credential: treated as an unknown image, as before.
        assert_eq!(cache.lookup_fresh(&image).await, PlatformLookup::UnknownImage(image.clone()));
        let mut config = RegistryConfig::default();
        config
            .credentials
            .insert(registry.addr.clone(), RegistryCredential { username: registry.username.clone(), password: registry.password.clone() });
        cache.set_registry_config(config);
        match cache.lookup(&image).await {
            PlatformLookup::Known(platforms) => assert!(platforms.iter().all(|(os, _)| os == "linux"), "{platforms:?}"),
            other => panic!("with the credential: {other:?}"),
        }
    }
}
