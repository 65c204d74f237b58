//! Container networking with the CNI plugins (bridge + host-local, and portmap when the
//! container publishes ports), run by hand per the CNI spec: `CNI_*` in the environment,
//! the network config on stdin, the result on stdout, `prevResult` passed along the chain.
//!
//! No per-container `firewall` plugin: the driver makes sure once (see
//! [`ensure_bridge_forward_rules`]) that the filter table's `FORWARD` chain accepts the
//! bridge's traffic, which is all the plugin's rules did (Docker sets the policy to `DROP`).
//!
//! Each container gets a network namespace of its own pinned at
//! `/var/run/netns/diplo-<id>` (`ip netns add`) before its task exists, so CNI ADD runs
//! before the process starts and CNI DEL still finds the namespace after it exited —
//! bridge's masquerade rules are removed only while the namespace exists.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use diplo_api::container::{PortMapping, Protocol};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// CNI's spec version Diplo speaks (containernetworking-plugins ≥ 1.0).
const CNI_VERSION: &str = "1.0.0";
/// Where pinned namespaces live (`ip netns`).
const NETNS_DIR: &str = "/var/run/netns";
/// Serialises checking and inserting the `FORWARD` rules across processes.
const FORWARD_LOCK: &str = "/run/diplo-forward.lock";

/// Diplo's container network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Network name (CNI `name`; part of chain names and comments).
    pub name: String,
    /// Linux bridge.
    pub bridge: String,
    /// IPv4 subnet, CIDR.
    pub subnet: String,
    /// Where the CNI plugins are.
    pub plugin_dir: PathBuf,
    /// host-local's allocation store.
    pub ipam_dir: PathBuf,
}

impl Network {
    /// The pinned network namespace of container `id`.
    pub fn netns_path(id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(netns_name(id))
    }

    /// Creates the pinned namespace (replacing a stale one).
    pub async fn create_netns(id: &str) -> Result<PathBuf, String> {
        let path = Self::netns_path(id);
        if path.exists() {
            Self::delete_netns(id).await?;
        }
        run_ip(&["netns", "add", &netns_name(id)]).await?;
        // Bring up loopback now; a process without `lo` cannot talk to itself.
        run_ip(&["-n", &netns_name(id), "link", "set", "lo", "up"]).await?;
        Ok(path)
    }

    /// Removes the pinned namespace if it exists.
    pub async fn delete_netns(id: &str) -> Result<(), String> {
        if !Self::netns_path(id).exists() {
            return Ok(());
        }
        run_ip(&["netns", "delete", &netns_name(id)]).await
    }

    /// The plugin types of the chain for a container publishing `ports`: `portmap` only
    /// when there is a port to publish.
    pub fn chain(ports: &[PortMapping]) -> Vec<String> {
        let mut chain = vec!["bridge".to_owned()];
        if !ports.is_empty() {
            chain.push("portmap".to_owned());
        }
        chain
    }

    /// The chain attached by earlier versions of the driver (state without a chain).
    pub fn legacy_chain() -> Vec<String> {
        ["bridge", "portmap", "firewall"].map(str::to_owned).to_vec()
    }

    fn plugins(&self, chain: &[String], ports: &[PortMapping]) -> Vec<Value> {
        chain.iter().map(|plugin| self.plugin(plugin, ports)).collect()
    }

    fn plugin(&self, plugin: &str, ports: &[PortMapping]) -> Value {
        match plugin {
            "bridge" => json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.ipam_dir,
                },
            }),
            "portmap" => {
                let mappings: Vec<Value> = ports
                    .iter()
                    .map(|p| {
                        json!({
                            "hostPort": p.host_port,
                            "containerPort": p.container_port,
                            "protocol": match p.protocol { Protocol::Tcp => "tcp", Protocol::Udp => "udp" },
                        })
                    })
                    .collect();
                json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "snat": true,
                    "runtimeConfig": {"portMappings": mappings},
                })
            }
            "firewall" => json!({"type": "firewall", "backend": "iptables"}),
            other => json!({"type": other}),
        }
    }

    /// Makes sure this network's [`bridge_forward_rules`] are at the top of `FORWARD`
    /// ([`ensure_bridge_forward_rules`]).
    pub async fn ensure_forward_rules(&self) -> Result<(), String> {
        ensure_bridge_forward_rules(&self.bridge, &self.subnet).await
    }

    /// CNI ADD of the whole chain into `netns`; returns the final result. On failure
    /// whatever was set up is deleted again.
    pub async fn add(&self, id: &str, netns: &Path, chain: &[String], ports: &[PortMapping]) -> Result<Value, String> {
        let mut previous: Option<Value> = None;
        for plugin in self.plugins(chain, ports) {
            let config = self.plugin_config(plugin, previous.as_ref());
            match self.exec("ADD", id, netns, "eth0", &config).await {
                Ok(result) => previous = Some(result),
                Err(error) => {
                    if let Err(cleanup) = self.del(id, netns, chain, ports, previous.as_ref()).await {
                        tracing::warn!(id, error = %cleanup, "CNI cleanup after a failed ADD failed");
                    }
                    return Err(error);
                }
            }
        }
        previous.ok_or_else(|| "CNI chain returned no result".to_owned())
    }

    /// CNI DEL of the whole chain, last plugin first, each given the cached ADD result.
    /// Idempotent; every plugin is tried and the first error returned.
    pub async fn del(&self, id: &str, netns: &Path, chain: &[String], ports: &[PortMapping], cached: Option<&Value>) -> Result<(), String> {
        let mut first_error = None;
        for plugin in self.plugins(chain, ports).into_iter().rev() {
            let config = self.plugin_config(plugin, cached);
            if let Err(error) = self.exec("DEL", id, netns, "eth0", &config).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn plugin_config(&self, mut plugin: Value, previous: Option<&Value>) -> Value {
        plugin["cniVersion"] = json!(CNI_VERSION);
        plugin["name"] = json!(self.name);
        if let Some(previous) = previous {
            plugin["prevResult"] = previous.clone();
        }
        plugin
    }

    async fn exec(&self, command: &str, id: &str, netns: &Path, ifname: &str, config: &Value) -> Result<Value, String> {
        let plugin = config["type"].as_str().unwrap_or_default().to_owned();
        let binary = self.plugin_dir.join(&plugin);
        let netns_arg = if netns.exists() { netns.display().to_string() } else { String::new() };
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns_arg)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.plugin_dir)
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_owned()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run CNI plugin {}: {e}", binary.display()))?;
        let input = serde_json::to_vec(config).map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await.map_err(|e| format!("CNI {plugin}: writing config: {e}"))?;
        }
        let output = child.wait_with_output().await.map_err(|e| format!("CNI {plugin}: {e}"))?;
        if !output.status.success() {
            let error: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let message = match (error.get("msg").and_then(Value::as_str), error.get("details").and_then(Value::as_str)) {
                (Some(msg), Some(details)) if !details.is_empty() => format!("{msg}: {details}"),
                (Some(msg), _) => msg.to_owned(),
                _ => {
                    let out = String::from_utf8_lossy(&output.stdout);
                    let err = String::from_utf8_lossy(&output.stderr);
                    format!("{} {}", out.trim(), err.trim()).trim().to_owned()
                }
            };
            return Err(format!("CNI {plugin} {command} failed: {message}"));
        }
        if command == "DEL" || output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(config.get("prevResult").cloned().unwrap_or(Value::Null));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| format!("CNI {plugin}: bad result: {e}"))
    }
}

/// The container's IPv4 address in a CNI result.
pub fn ip_of(result: &Value) -> Option<String> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .map(|a| a.split('/').next().unwrap_or(a).to_owned())
}

/// Fails with the first host port already taken: bound by some process (tried by
/// binding it) or forwarded by an iptables DNAT rule (portmap and others do not bind).
pub async fn check_ports_free(ports: &[PortMapping]) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut seen = Vec::new();
    for port in ports {
        if seen.contains(&(port.host_port, port.protocol)) {
            return Err(format!("host port {} is published twice", port.host_port));
        }
        seen.push((port.host_port, port.protocol));
        let in_use = |e: &std::io::Error| e.kind() == std::io::ErrorKind::AddrInUse;
        let result = match port.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", port.host_port)).map(drop),
            Protocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", port.host_port)).map(drop),
        };
        if let Err(e) = &result
            && in_use(e)
        {
            return Err(format!("host port {} is already in use", port.host_port));
        }
    }
    let output = tokio::process::Command::new("iptables").args(["-w", "-t", "nat", "-S"]).output().await;
    if let Ok(output) = output
        && output.status.success()
    {
        let rules = String::from_utf8_lossy(&output.stdout);
        for port in ports {
            if dnat_rule_for(&rules, port.host_port) {
                return Err(format!("host port {} is already forwarded to a container", port.host_port));
            }
        }
    }
    Ok(())
}

fn dnat_rule_for(rules: &str, port: u16) -> bool {
    let needle = format!("--dport {port}");
    rules
        .lines()
        .any(|line| line.contains("DNAT") && line.split(&needle).nth(1).is_some_and(|after| after.is_empty() || after.starts_with(' ')))
}

fn netns_name(id: &str) -> String {
    format!("diplo-{id}")
}

async fn run_ip(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("ip").args(args).output().await.map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() { Ok(()) } else { Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())) }
}

/// The two filter-table `FORWARD` rules that let a container bridge's traffic through: all
/// of it from the containers on `bridge` in `subnet` (out of the bridge, and container to
/// container), and into the containers what answers their connections or was forwarded to
/// a published port (`DNAT`). The same as the CNI `firewall` plugin's per-address rules,
/// plus published ports reached from other hosts. Docker sets the `FORWARD` policy to
/// `DROP`, and with bridge netfilter on, even traffic between two containers on one bridge
/// passes that chain.
pub(crate) fn bridge_forward_rules(bridge: &str, subnet: &str) -> [Vec<String>; 2] {
    let comment = format!("diplo: containers on {bridge}");
    let rule = |args: &[&str]| -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).chain(["-m", "comment", "--comment", &comment, "-j", "ACCEPT"].map(str::to_owned)).collect()
    };
    [rule(&["-i", bridge, "-s", subnet]), rule(&["-o", bridge, "-d", subnet, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT"])]
}

/// Makes sure [`bridge_forward_rules`] are at the top of `FORWARD` (idempotent; check and
/// insert under a host-wide `flock` so that agents starting together do not insert them
/// twice).
pub(crate) async fn ensure_bridge_forward_rules(bridge: &str, subnet: &str) -> Result<(), String> {
    const CHECK_OR_INSERT: &str = r#"iptables -w -C FORWARD "$@" 2>/dev/null || iptables -w -I FORWARD 1 "$@""#;
    for rule in bridge_forward_rules(bridge, subnet).iter().rev() {
        let output = tokio::process::Command::new("flock")
            .args(["-w", "30", FORWARD_LOCK, "sh", "-c", CHECK_OR_INSERT, "sh"])
            .args(rule)
            .output()
            .await
            .map_err(|e| format!("cannot run flock and iptables: {e}"))?;
        if !output.status.success() {
            return Err(format!("iptables -I FORWARD 1 {}: {}", rule.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_give_the_ipv4_address() {
        let result = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.89.0.7/16", "gateway": "10.89.0.1"}]});
        assert_eq!(ip_of(&result).as_deref(), Some("10.89.0.7"));
        assert_eq!(ip_of(&json!({})), None);
    }

    #[test]
    fn dnat_rules_are_recognised() {
        let rules = "-A CNI-DN-1 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.89.0.2:80\n-A X -p tcp --dport 80 -j ACCEPT\n";
        assert!(dnat_rule_for(rules, 18080));
        assert!(!dnat_rule_for(rules, 1808));
        assert!(!dnat_rule_for(rules, 80));
    }

    #[test]
    fn chain_configs_carry_name_version_and_ports() {
        let network = Network {
            name: "diplo".into(),
            bridge: "diplo0".into(),
            subnet: "10.89.0.0/16".into(),
            plugin_dir: "/usr/lib/cni".into(),
            ipam_dir: "/state/ipam".into(),
        };
        let ports = [PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp }];
        assert_eq!(Network::chain(&[]), ["bridge"]);
        assert_eq!(Network::chain(&ports), ["bridge", "portmap"]);
        let plugins = network.plugins(&Network::chain(&ports), &ports);
        assert_eq!(plugins[0]["ipam"]["dataDir"], "/state/ipam");
        assert_eq!(plugins[1]["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        let config = network.plugin_config(plugins[1].clone(), Some(&json!({"ips": []})));
        assert_eq!(config["name"], "diplo");
        assert_eq!(config["cniVersion"], CNI_VERSION);
        assert!(config.get("prevResult").is_some());
        assert_eq!(network.plugins(&Network::legacy_chain(), &[])[2]["type"], "firewall");
        let [from, to] = bridge_forward_rules(&network.bridge, &network.subnet);
        assert_eq!(from[..4], ["-i", "diplo0", "-s", "10.89.0.0/16"]);
        assert_eq!(to[..4], ["-o", "diplo0", "-d", "10.89.0.0/16"]);
        assert_eq!(to.last().map(String::as_str), Some("ACCEPT"));
    }
}
