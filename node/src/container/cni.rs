//! Container networking with the standard CNI plugins (Debian's
//! containernetworking-plugins): a network namespace per container, joined to
//! the node's bridge by the `bridge` plugin with `host-local` addresses, and
//! outbound traffic masqueraded (iptables).
//!
//! The namespace is made with `ip netns add` and removed after the plugin's DEL,
//! so a stopped container leaves neither an address reservation nor a namespace.
//! One node per machine owns the bridge and its subnet.
//!
//! Published ports (`host_port`) are chained to the bridge's result through the
//! `portmap` plugin (iptables DNAT from every node address, loopback included);
//! its DEL needs the same mappings, so the caller keeps them with the container.

use skiff_api::PortMapping;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The node's bridge.
pub const BRIDGE: &str = "skiff0";
/// Addresses handed to containers.
pub const SUBNET: &str = "10.89.0.0/16";
/// Where Debian installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// The CNI setup of a node.
#[derive(Debug, Clone)]
pub struct Cni {
    plugins: PathBuf,
    ipam_dir: PathBuf,
    /// Whether the portmap plugin is installed (published ports need it).
    portmap: bool,
}

impl Cni {
    /// CNI networking, when the bridge and host-local plugins and `ip` are installed.
    pub fn find(data_dir: &Path) -> Result<Cni, String> {
        let plugins = PathBuf::from(PLUGIN_DIR);
        for p in ["bridge", "host-local"] {
            if !plugins.join(p).is_file() {
                return Err(format!("the CNI plugin {} is missing (install containernetworking-plugins)", p));
            }
        }
        let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !ip.is_ok_and(|s| s.success()) {
            return Err("`ip` is missing (install iproute2)".into());
        }
        let portmap = plugins.join("portmap").is_file();
        Ok(Cni { plugins, ipam_dir: data_dir.join("containers").join("cni"), portmap })
    }

    /// The namespace file of container `id`.
    pub fn netns(id: &str) -> PathBuf {
        Path::new("/run/netns").join(netns_name(id))
    }

    fn config(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir,
            },
        })
        .to_string()
    }

    /// The portmap plugin's configuration for `ports`, chained after `prev` (the
    /// bridge's result) on ADD.
    fn portmap_config(ports: &[PortMapping], prev: Option<serde_json::Value>) -> String {
        let mappings: Vec<serde_json::Value> = ports
            .iter()
            .filter_map(|p| {
                let host = p.host_port?;
                Some(serde_json::json!({
                    "hostPort": host, "containerPort": p.container_port, "protocol": p.protocol.to_string(),
                }))
            })
            .collect();
        let mut config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
            "runtimeConfig": { "portMappings": mappings },
        });
        if let Some(prev) = prev {
            config["prevResult"] = prev;
        }
        config.to_string()
    }

    fn plugin(&self, command: &str, id: &str) -> Result<String, String> {
        self.run_plugin("bridge", command, id, &self.config())
    }

    fn run_plugin(&self, plugin: &str, command: &str, id: &str, config: &str) -> Result<String, String> {
        let mut child = Command::new(self.plugins.join(plugin))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", Self::netns(id))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.plugins)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the CNI {plugin} plugin: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(config.as_bytes()).map_err(|e| format!("cannot configure the CNI {plugin} plugin: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("the CNI {plugin} plugin failed: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            // CNI errors are JSON on stdout: {"code":…,"msg":…}.
            let msg = serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            Err(format!("CNI {plugin} {command} failed: {msg}"))
        }
    }

    /// Makes container `id`'s namespace and connects it, publishing the ports
    /// with a `host_port`; returns its address (`10.89.0.2/16`). Blocking.
    pub fn add(&self, id: &str, ports: &[PortMapping]) -> Result<String, String> {
        let published = ports.iter().any(|p| p.host_port.is_some());
        if published && !self.portmap {
            return Err(format!(
                "cannot publish host ports: the CNI plugin portmap is missing from {} (install containernetworking-plugins)",
                self.plugins.display()
            ));
        }
        std::fs::create_dir_all(&self.ipam_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.ipam_dir.display()))?;
        let out = Command::new("ip")
            .args(["netns", "add", &netns_name(id)])
            .output()
            .map_err(|e| format!("cannot run ip netns add: {e}"))?;
        if !out.status.success() {
            return Err(format!("ip netns add failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // runc brings up loopback only in namespaces it makes itself.
        let lo = Command::new("ip").args(["-n", &netns_name(id), "link", "set", "lo", "up"]).output();
        if !lo.as_ref().is_ok_and(|o| o.status.success()) {
            self.del(id, &[]);
            return Err(format!("cannot bring up loopback in {}", netns_name(id)));
        }
        let result = self.plugin("ADD", id).and_then(|stdout| {
            let v: serde_json::Value =
                serde_json::from_str(&stdout).map_err(|e| format!("the CNI plugin answered nonsense: {e}"))?;
            let address = v
                .pointer("/ips/0/address")
                .and_then(|a| a.as_str())
                .map(str::to_owned)
                .ok_or_else(|| "the CNI plugin gave no address".to_string())?;
            if published {
                self.run_plugin("portmap", "ADD", id, &Self::portmap_config(ports, Some(v)))?;
            }
            Ok(address)
        });
        if result.is_err() {
            self.del(id, ports);
        }
        result
    }

    /// Unpublishes container `id`'s `ports`, disconnects it (releasing its
    /// address) and removes its namespace; whatever is already gone is fine.
    /// Blocking.
    pub fn del(&self, id: &str, ports: &[PortMapping]) {
        if self.portmap
            && ports.iter().any(|p| p.host_port.is_some())
            && let Err(e) = self.run_plugin("portmap", "DEL", id, &Self::portmap_config(ports, None))
        {
            tracing::warn!(container = id, "{e}");
        }
        // DEL even without the namespace: it releases the address reservation.
        if let Err(e) = self.plugin("DEL", id) {
            tracing::warn!(container = id, "{e}");
        }
        if Self::netns(id).exists() {
            let _ = Command::new("ip").args(["netns", "delete", &netns_name(id)]).output();
        }
    }
}

fn netns_name(id: &str) -> String {
    format!("skiff-{id}")
}
