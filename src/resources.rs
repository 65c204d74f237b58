//! Images, networks and volumes of one runtime on one node: the operations the control
//! plane asks of an agent, what they answer, the checks every name passes before it
//! reaches a runtime, and their wire conversions.
//!
//! Diplo lists every image, network and volume of a runtime, but removes only networks
//! and volumes it created itself (they carry [`LABEL_MANAGED`]); the runtime's own
//! refusal (409) protects what containers still use. Lists are capped at
//! [`MAX_LISTED`] items, with `truncated` set when more exist.

use std::collections::BTreeMap;

use crate::pb;
use crate::wire::WireError;

/// Label Diplo puts on the networks and volumes it creates; only those are removed or
/// pruned through Diplo.
pub const LABEL_MANAGED: &str = "diplo.managed";

/// The most items one list returns; `truncated` says when there were more.
pub const MAX_LISTED: usize = 1_000;

/// The longest resource name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// The only network driver Diplo creates networks with.
pub const NETWORK_DRIVER: &str = "bridge";

/// Checks a network or volume name: 1 to 128 characters of letters, digits, `_`, `.`
/// and `-`, starting with a letter or digit (`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`).
pub fn validate_resource_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} must be 1-{MAX_NAME_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit"));
    }
    Ok(())
}

/// Whether `text` is an image id: `sha256:` and 64 hex digits, or 12 to 64 hex digits.
pub fn is_image_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    let full = text.starts_with("sha256:");
    let len_ok = if full { hex.len() == 64 } else { (12..=64).contains(&hex.len()) };
    len_ok && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Checks a CIDR subnet (`10.89.7.0/24`, `fd00:12::/64`): an address, `/`, and a
/// prefix length that fits it.
pub fn validate_subnet(subnet: &str) -> Result<(), String> {
    let bad = || format!("{subnet:?} is not a CIDR subnet such as 10.89.0.0/24");
    let (address, prefix) = subnet.split_once('/').ok_or_else(bad)?;
    let address: std::net::IpAddr = address.parse().map_err(|_| bad())?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{subnet:?}: the prefix length must be at most {max}"));
    }
    Ok(())
}

/// Checks the labels of a new network or volume: at most 64, keys 1-128 printable
/// characters without whitespace, values at most 1,024 characters, no `diplo.*` key
/// (Diplo sets those).
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > 64 {
        return Err(format!("{} labels; at most 64", labels.len()));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > 128 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("label key {key:?} must be 1-128 characters without whitespace"));
        }
        if crate::container::is_reserved_label(key) {
            return Err(format!("label key {key:?}: diplo.* labels are set by Diplo only"));
        }
        if value.len() > 1024 || value.chars().any(char::is_control) {
            return Err(format!("label {key:?}: the value must be at most 1,024 characters without control characters"));
        }
    }
    Ok(())
}

/// An image in a runtime's local store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// The runtime's id (`sha256:…`; containerd: the image name).
    pub id: String,
    /// Its tags (`repo:tag`).
    pub tags: Vec<String>,
    /// Its repository digests (`repo@sha256:…`).
    pub digests: Vec<String>,
    /// Size on disk as the runtime reports it (0 when it does not).
    pub size_bytes: u64,
    /// RFC 3339 creation time, empty when unknown.
    pub created: String,
}

/// A network to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Its name ([`validate_resource_name`]).
    pub name: String,
    /// Its driver: [`NETWORK_DRIVER`].
    pub driver: String,
    /// IPv4 or IPv6 CIDR; `None`: the runtime's choice.
    pub subnet: Option<String>,
    /// No route out of the network.
    pub internal: bool,
    /// Operator labels (no `diplo.*`).
    pub labels: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        validate_resource_name(&self.name).map_err(|m| ("name", m))?;
        if self.driver != NETWORK_DRIVER {
            return Err(("driver", format!("{:?} is not supported; use \"{NETWORK_DRIVER}\"", self.driver)));
        }
        if let Some(subnet) = &self.subnet {
            validate_subnet(subnet).map_err(|m| ("subnet", m))?;
        }
        validate_labels(&self.labels).map_err(|m| ("labels", m))
    }
}

/// A network of a runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The runtime's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its driver.
    pub driver: String,
    /// Its subnets (CIDR).
    pub subnets: Vec<String>,
    /// No route out.
    pub internal: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Names of the containers attached (filled by inspect).
    pub containers: Vec<String>,
}

impl NetworkInfo {
    /// Created through Diplo.
    pub fn managed(&self) -> bool {
        self.labels.contains_key(LABEL_MANAGED)
    }
}

/// A volume to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Its name ([`validate_resource_name`]).
    pub name: String,
    /// Operator labels (no `diplo.*`).
    pub labels: BTreeMap<String, String>,
}

impl VolumeSpec {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        validate_resource_name(&self.name).map_err(|m| ("name", m))?;
        validate_labels(&self.labels).map_err(|m| ("labels", m))
    }
}

/// A volume of a runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Its driver (`local`).
    pub driver: String,
    /// Where it lives on the host.
    pub mountpoint: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time, empty when unknown.
    pub created: String,
    /// Names of the containers mounting it, when the runtime says (inspect).
    pub containers: Vec<String>,
}

impl VolumeInfo {
    /// Created through Diplo.
    pub fn managed(&self) -> bool {
        self.labels.contains_key(LABEL_MANAGED)
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Ids or names removed.
    pub removed: Vec<String>,
    /// Space freed as the runtime reports it (0 when it does not).
    pub reclaimed_bytes: u64,
}

/// An image operation (pulls are [`crate::command::CommandOp::PullImage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOp {
    /// Every image (up to [`MAX_LISTED`]).
    List,
    /// One image by reference or id.
    Inspect(String),
    /// Remove an image.
    Remove {
        /// Reference or id.
        image: String,
        /// Remove it even when several tags or a stopped container hold it.
        force: bool,
    },
    /// Remove unused images: every unused one with `all`, else dangling ones only.
    Prune {
        /// Not only dangling images.
        all: bool,
    },
}

/// A network operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkOp {
    /// Create a network.
    Create(NetworkSpec),
    /// Every network (up to [`MAX_LISTED`]).
    List,
    /// One network by name or id.
    Inspect(String),
    /// Remove a network Diplo created.
    Remove(String),
    /// Attach one of Diplo's containers.
    Connect {
        /// Network name or id.
        network: String,
        /// Container id or name.
        container: String,
    },
    /// Detach one of Diplo's containers.
    Disconnect {
        /// Network name or id.
        network: String,
        /// Container id or name.
        container: String,
    },
}

/// A volume operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOp {
    /// Create a volume.
    Create(VolumeSpec),
    /// Every volume (up to [`MAX_LISTED`]).
    List,
    /// One volume by name.
    Inspect(String),
    /// Remove a volume Diplo created.
    Remove(String),
    /// Remove the volumes Diplo created that no container uses.
    Prune,
}

/// What an image, network or volume command returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceOutput {
    /// Images listed or inspected.
    pub images: Vec<ImageInfo>,
    /// Networks listed, inspected, created or (dis)connected.
    pub networks: Vec<NetworkInfo>,
    /// Volumes listed, inspected or created.
    pub volumes: Vec<VolumeInfo>,
    /// What a prune removed.
    pub prune: Option<PruneReport>,
    /// A list was cut at [`MAX_LISTED`].
    pub truncated: bool,
}

/// Caps a list at [`MAX_LISTED`]; returns whether it was cut.
pub fn cap<T>(items: &mut Vec<T>) -> bool {
    let cut = items.len() > MAX_LISTED;
    items.truncate(MAX_LISTED);
    cut
}

// ---------------------------------------------------------------------------------
// Wire conversions

fn labels_map(labels: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<&ImageInfo> for pb::ImageSummary {
    fn from(image: &ImageInfo) -> Self {
        pb::ImageSummary {
            id: image.id.clone(),
            tags: image.tags.clone(),
            digests: image.digests.clone(),
            size_bytes: image.size_bytes,
            created: image.created.clone(),
        }
    }
}

impl From<pb::ImageSummary> for ImageInfo {
    fn from(image: pb::ImageSummary) -> Self {
        ImageInfo { id: image.id, tags: image.tags, digests: image.digests, size_bytes: image.size_bytes, created: image.created }
    }
}

impl From<&NetworkInfo> for pb::NetworkSummary {
    fn from(network: &NetworkInfo) -> Self {
        pb::NetworkSummary {
            id: network.id.clone(),
            name: network.name.clone(),
            driver: network.driver.clone(),
            subnets: network.subnets.clone(),
            internal: network.internal,
            labels: labels_map(&network.labels),
            containers: network.containers.clone(),
            managed: network.managed(),
        }
    }
}

impl From<pb::NetworkSummary> for NetworkInfo {
    fn from(network: pb::NetworkSummary) -> Self {
        NetworkInfo {
            id: network.id,
            name: network.name,
            driver: network.driver,
            subnets: network.subnets,
            internal: network.internal,
            labels: network.labels.into_iter().collect(),
            containers: network.containers,
        }
    }
}

impl From<&VolumeInfo> for pb::VolumeSummary {
    fn from(volume: &VolumeInfo) -> Self {
        pb::VolumeSummary {
            name: volume.name.clone(),
            driver: volume.driver.clone(),
            mountpoint: volume.mountpoint.clone(),
            labels: labels_map(&volume.labels),
            created: volume.created.clone(),
            managed: volume.managed(),
            containers: volume.containers.clone(),
        }
    }
}

impl From<pb::VolumeSummary> for VolumeInfo {
    fn from(volume: pb::VolumeSummary) -> Self {
        VolumeInfo {
            name: volume.name,
            driver: volume.driver,
            mountpoint: volume.mountpoint,
            labels: volume.labels.into_iter().collect(),
            created: volume.created,
            containers: volume.containers,
        }
    }
}

impl From<&PruneReport> for pb::PruneReport {
    fn from(report: &PruneReport) -> Self {
        pb::PruneReport { removed: report.removed.clone(), reclaimed_bytes: report.reclaimed_bytes }
    }
}

impl From<pb::PruneReport> for PruneReport {
    fn from(report: pb::PruneReport) -> Self {
        PruneReport { removed: report.removed, reclaimed_bytes: report.reclaimed_bytes }
    }
}

fn missing(field: &str) -> WireError {
    WireError { field: field.into(), message: "an action is required".into() }
}

impl From<&ImageOp> for pb::ImageCommand {
    fn from(op: &ImageOp) -> Self {
        use pb::image_command::Action;
        let action = match op {
            ImageOp::List => Action::List(true),
            ImageOp::Inspect(image) => Action::Inspect(image.clone()),
            ImageOp::Remove { image, force } => Action::Remove(pb::RemoveImageCommand { image: image.clone(), force: *force }),
            ImageOp::Prune { all } => Action::Prune(*all),
        };
        pb::ImageCommand { action: Some(action) }
    }
}

impl TryFrom<pb::ImageCommand> for ImageOp {
    type Error = WireError;

    fn try_from(command: pb::ImageCommand) -> Result<Self, WireError> {
        use pb::image_command::Action;
        Ok(match command.action.ok_or_else(|| missing("image"))? {
            Action::List(_) => ImageOp::List,
            Action::Inspect(image) => ImageOp::Inspect(image),
            Action::Remove(remove) => ImageOp::Remove { image: remove.image, force: remove.force },
            Action::Prune(all) => ImageOp::Prune { all },
        })
    }
}

impl From<&NetworkOp> for pb::NetworkCommand {
    fn from(op: &NetworkOp) -> Self {
        use pb::network_command::Action;
        let attachment =
            |network: &String, container: &String| pb::NetworkAttachment { network: network.clone(), container: container.clone() };
        let action = match op {
            NetworkOp::Create(spec) => Action::Create(pb::CreateNetworkCommand {
                name: spec.name.clone(),
                driver: spec.driver.clone(),
                subnet: spec.subnet.clone().unwrap_or_default(),
                internal: spec.internal,
                labels: labels_map(&spec.labels),
            }),
            NetworkOp::List => Action::List(true),
            NetworkOp::Inspect(name) => Action::Inspect(name.clone()),
            NetworkOp::Remove(name) => Action::Remove(name.clone()),
            NetworkOp::Connect { network, container } => Action::Connect(attachment(network, container)),
            NetworkOp::Disconnect { network, container } => Action::Disconnect(attachment(network, container)),
        };
        pb::NetworkCommand { action: Some(action) }
    }
}

impl TryFrom<pb::NetworkCommand> for NetworkOp {
    type Error = WireError;

    fn try_from(command: pb::NetworkCommand) -> Result<Self, WireError> {
        use pb::network_command::Action;
        Ok(match command.action.ok_or_else(|| missing("network"))? {
            Action::Create(create) => NetworkOp::Create(NetworkSpec {
                name: create.name,
                driver: create.driver,
                subnet: (!create.subnet.is_empty()).then_some(create.subnet),
                internal: create.internal,
                labels: create.labels.into_iter().collect(),
            }),
            Action::List(_) => NetworkOp::List,
            Action::Inspect(name) => NetworkOp::Inspect(name),
            Action::Remove(name) => NetworkOp::Remove(name),
            Action::Connect(a) => NetworkOp::Connect { network: a.network, container: a.container },
            Action::Disconnect(a) => NetworkOp::Disconnect { network: a.network, container: a.container },
        })
    }
}

impl From<&VolumeOp> for pb::VolumeCommand {
    fn from(op: &VolumeOp) -> Self {
        use pb::volume_command::Action;
        let action = match op {
            VolumeOp::Create(spec) => Action::Create(pb::CreateVolumeCommand { name: spec.name.clone(), labels: labels_map(&spec.labels) }),
            VolumeOp::List => Action::List(true),
            VolumeOp::Inspect(name) => Action::Inspect(name.clone()),
            VolumeOp::Remove(name) => Action::Remove(name.clone()),
            VolumeOp::Prune => Action::Prune(true),
        };
        pb::VolumeCommand { action: Some(action) }
    }
}

impl TryFrom<pb::VolumeCommand> for VolumeOp {
    type Error = WireError;

    fn try_from(command: pb::VolumeCommand) -> Result<Self, WireError> {
        use pb::volume_command::Action;
        Ok(match command.action.ok_or_else(|| missing("volume"))? {
            Action::Create(create) => VolumeOp::Create(VolumeSpec { name: create.name, labels: create.labels.into_iter().collect() }),
            Action::List(_) => VolumeOp::List,
            Action::Inspect(name) => VolumeOp::Inspect(name),
            Action::Remove(name) => VolumeOp::Remove(name),
            Action::Prune(_) => VolumeOp::Prune,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_checked() {
        let long = "a".repeat(MAX_NAME_LEN);
        for good in ["a", "data", "web_1.net-2", "9lives", long.as_str()] {
            assert!(validate_resource_name(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "-x", ".x", "_x", "a b", "a/b", "../x", "x;rm", "é", "a\n", too_long.as_str(), "a:b", "a?b=c"] {
            assert!(validate_resource_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnets_are_checked() {
        for good in ["10.89.0.0/24", "192.168.7.0/30", "0.0.0.0/0", "fd00:12::/64", "10.0.0.0/32"] {
            assert!(validate_subnet(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "10.89.0.0",
            "10.89.0.0/",
            "10.89.0.0/33",
            "fd00::/129",
            "10.89.0/24",
            "x/24",
            "10.0.0.0/+8",
            "10.0.0.0/0008",
            " 10.0.0.0/8",
        ] {
            assert!(validate_subnet(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_ids_are_told_from_references() {
        assert!(is_image_id(&format!("sha256:{}", "a".repeat(64))));
        assert!(is_image_id("0123456789ab"));
        for not in ["busybox", "sha256:abc", "0123456789AB", "0123", &format!("sha256:{}", "a".repeat(65))] {
            assert!(!is_image_id(not), "{not}");
        }
    }

    #[test]
    fn specs_name_their_field() {
        let good = NetworkSpec { name: "net".into(), driver: NETWORK_DRIVER.into(), ..Default::default() };
        assert_eq!(good.validate(), Ok(()));
        let cases: Vec<(NetworkSpec, &str)> = vec![
            (NetworkSpec { name: "bad name".into(), ..good.clone() }, "name"),
            (NetworkSpec { driver: "host".into(), ..good.clone() }, "driver"),
            (NetworkSpec { driver: "".into(), ..good.clone() }, "driver"),
            (NetworkSpec { subnet: Some("10.0.0.0/99".into()), ..good.clone() }, "subnet"),
            (NetworkSpec { labels: [("diplo.managed".into(), "x".into())].into(), ..good.clone() }, "labels"),
            (NetworkSpec { labels: [("".into(), "x".into())].into(), ..good.clone() }, "labels"),
        ];
        for (spec, field) in cases {
            assert_eq!(spec.validate().expect_err(field).0, field, "{spec:?}");
        }
        let volume = VolumeSpec { name: "v".into(), labels: [("team".into(), "a".into())].into() };
        assert_eq!(volume.validate(), Ok(()));
        assert_eq!(VolumeSpec { name: "".into(), ..volume.clone() }.validate().expect_err("name").0, "name");
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(VolumeSpec { labels: many, ..volume }.validate().expect_err("labels").0, "labels");
    }

    #[test]
    fn lists_are_capped() {
        let mut items: Vec<u32> = (0..1_500).collect();
        assert!(cap(&mut items));
        assert_eq!(items.len(), MAX_LISTED);
        let mut few = vec![1, 2];
        assert!(!cap(&mut few));
    }

    #[test]
    fn operations_round_trip() {
        let spec = NetworkSpec {
            name: "n".into(),
            driver: "bridge".into(),
            subnet: Some("10.1.0.0/24".into()),
            internal: true,
            labels: [("a".into(), "b".into())].into(),
        };
        for op in
            [ImageOp::List, ImageOp::Inspect("x".into()), ImageOp::Remove { image: "x".into(), force: true }, ImageOp::Prune { all: true }]
        {
            assert_eq!(ImageOp::try_from(pb::ImageCommand::from(&op)), Ok(op));
        }
        for op in [
            NetworkOp::Create(spec),
            NetworkOp::List,
            NetworkOp::Inspect("n".into()),
            NetworkOp::Remove("n".into()),
            NetworkOp::Connect { network: "n".into(), container: "c".into() },
            NetworkOp::Disconnect { network: "n".into(), container: "c".into() },
        ] {
            assert_eq!(NetworkOp::try_from(pb::NetworkCommand::from(&op)), Ok(op));
        }
        for op in [
            VolumeOp::Create(VolumeSpec { name: "v".into(), labels: Default::default() }),
            VolumeOp::List,
            VolumeOp::Inspect("v".into()),
            VolumeOp::Remove("v".into()),
            VolumeOp::Prune,
        ] {
            assert_eq!(VolumeOp::try_from(pb::VolumeCommand::from(&op)), Ok(op));
        }
        assert_eq!(VolumeOp::try_from(pb::VolumeCommand { action: None }).expect_err("empty").field, "volume");
    }
}
