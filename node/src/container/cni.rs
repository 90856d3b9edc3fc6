//! Container networking with the standard CNI plugins (Debian's
//! containernetworking-plugins): a network namespace per container, joined to
//! the node's bridge by the `bridge` plugin with `host-local` addresses, and
//! outbound traffic masqueraded by one iptables rule for the whole subnet that
//! the node installs with its first container (or adopted one) and removes
//! when it stops, if it installed it ([`Masquerade`]; the plugin's `ipMasq`
//! would run iptables some eight times per container, at each ADD and DEL).
//!
//! The namespace is made in-process as `ip netns add` makes it (a thread
//! unshares its network namespace and bind-mounts it on `/run/netns/NAME`, and
//! brings loopback up in it) before the OCI runtime starts, and connected
//! ([`Cni::connect`]) while the runtime creates the container (which waits for
//! it: `bundle::BundleSpec::network_gate`). It is removed after the plugin's
//! DEL, so a stopped container leaves neither an address reservation nor a
//! namespace. One node per machine owns the bridge and its subnet.
//!
//! Published ports (`host_port`) are chained to the bridge's result through the
//! `portmap` plugin (iptables DNAT from every node address, loopback included);
//! its DEL needs the same mappings, so the caller keeps them with the container.

use skiff_api::PortMapping;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The node's bridge.
pub const BRIDGE: &str = "skiff0";
/// Addresses handed to containers.
pub const SUBNET: &str = "10.89.0.0/16";
/// Whether `ip` is in [`SUBNET`] (a unit test holds the two together).
pub fn in_subnet(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[..2] == [10, 89])
}

/// Where Debian installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// Where named network namespaces live (iproute2's place: `ip netns` lists them).
const NETNS_DIR: &str = "/run/netns";
/// Marks the node's masquerade rule in `iptables-save`.
const MASQUERADE_COMMENT: &str = "skiff: outbound traffic of containers on skiff0";

/// The CNI setup of a node.
#[derive(Debug, Clone)]
pub struct Cni {
    plugins: PathBuf,
    ipam_dir: PathBuf,
    /// Whether the portmap plugin is installed (published ports need it).
    portmap: bool,
    /// The masquerade rule, once this daemon's containers need it.
    masquerade: Arc<Mutex<Option<Masquerade>>>,
}

impl Cni {
    /// CNI networking, when the bridge and host-local plugins and `iptables` are installed.
    pub fn find(data_dir: &Path) -> Result<Cni, String> {
        let plugins = PathBuf::from(PLUGIN_DIR);
        for p in ["bridge", "host-local"] {
            if !plugins.join(p).is_file() {
                return Err(format!("the CNI plugin {} is missing (install containernetworking-plugins)", p));
            }
        }
        let iptables = Command::new("iptables").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !iptables.is_ok_and(|s| s.success()) {
            return Err("`iptables` is missing (install iptables)".into());
        }
        let portmap = plugins.join("portmap").is_file();
        let ipam_dir = data_dir.join("containers").join("cni");
        Ok(Cni { plugins, ipam_dir, portmap, masquerade: Arc::default() })
    }

    /// Makes sure the node's masquerade rule is in place (checked once per
    /// daemon). Blocking.
    pub fn masquerade(&self) -> Result<(), String> {
        let mut m = self.masquerade.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            *m = Some(Masquerade::install()?);
        }
        Ok(())
    }

    /// Removes the masquerade rule if this daemon installed it (the node stops). Blocking.
    pub fn unmasquerade(&self) {
        drop(self.masquerade.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Leaves the masquerade rule in place when this daemon stops: the
    /// containers it leaves running keep their outbound traffic.
    pub fn keep_masquerade(&self) {
        if let Some(m) = self.masquerade.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            m.added = false;
        }
    }

    /// The namespace file of container `id`.
    pub fn netns(id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(netns_name(id))
    }

    /// The bridge plugin's configuration. `plugin_masquerade`: with the plugin's
    /// own per-container masquerade rules, as daemons before [`Masquerade`] set
    /// up their containers (their DEL must remove those rules).
    fn config(&self, plugin_masquerade: bool) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": plugin_masquerade,
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

    fn plugin(&self, command: &str, id: &str, plugin_masquerade: bool) -> Result<String, String> {
        self.run_plugin("bridge", command, id, &self.config(plugin_masquerade))
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

    /// Makes container `id`'s namespace ([`Cni::netns`]), with loopback up and
    /// not yet connected (that is [`Cni::connect`]). Blocking.
    pub fn create(&self, id: &str, ports: &[PortMapping]) -> Result<(), String> {
        if ports.iter().any(|p| p.host_port.is_some()) && !self.portmap {
            return Err(format!(
                "cannot publish host ports: the CNI plugin portmap is missing from {} (install containernetworking-plugins)",
                self.plugins.display()
            ));
        }
        std::fs::create_dir_all(&self.ipam_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.ipam_dir.display()))?;
        self.masquerade()?;
        add_netns(&Self::netns(id))
    }

    /// Connects container `id`'s namespace (made by [`Cni::create`]) to the
    /// bridge, publishing the ports with a `host_port`; returns its address
    /// (`10.89.0.2/16`). On failure what was done is undone, the namespace
    /// removed. Blocking.
    pub fn connect(&self, id: &str, ports: &[PortMapping]) -> Result<String, String> {
        let published = ports.iter().any(|p| p.host_port.is_some());
        let result = self.plugin("ADD", id, false).and_then(|stdout| {
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
            self.del(id, ports, false);
        }
        result
    }

    /// Unpublishes container `id`'s `ports`, disconnects it (releasing its
    /// address; `plugin_masquerade`: and removing the bridge plugin's masquerade
    /// rules, see [`Cni::config`]) and removes its namespace; whatever is
    /// already gone is fine. Blocking.
    pub fn del(&self, id: &str, ports: &[PortMapping], plugin_masquerade: bool) {
        if self.portmap
            && ports.iter().any(|p| p.host_port.is_some())
            && let Err(e) = self.run_plugin("portmap", "DEL", id, &Self::portmap_config(ports, None))
        {
            tracing::warn!(container = id, "{e}");
        }
        // DEL even without the namespace: it releases the address reservation.
        if let Err(e) = self.plugin("DEL", id, plugin_masquerade) {
            tracing::warn!(container = id, "{e}");
        }
        delete_netns(&Self::netns(id));
    }
}

/// Makes the named network namespace `path` (under [`NETNS_DIR`]) as
/// `ip netns add` does, with loopback up, without running `ip` twice (some
/// 3 ms each). Blocking.
fn add_netns(path: &Path) -> Result<(), String> {
    use nix::fcntl::OFlag;
    use nix::mount::{MsFlags, mount};
    use nix::sys::stat::Mode;
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {NETNS_DIR}: {e}"))?;
    // Shared, so that the namespace also shows in mount namespaces made from
    // this one earlier (iproute2 does the same); a plain directory is made a
    // mount point first.
    let share = || mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    if let Err(nix::errno::Errno::EINVAL) = share() {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| format!("cannot make {NETNS_DIR} a mount point: {e}"))?;
    }
    share().map_err(|e| format!("cannot make {NETNS_DIR} a shared mount: {e}"))?;
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    drop(fd);
    // A thread of its own enters the new namespace, pins it there and ends:
    // no other thread of the daemon ever changes namespace.
    let target = path.to_path_buf();
    let made = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || -> Result<(), String> {
            // SAFETY: unshare(2) with CLONE_NEWNET moves only the calling
            // thread into a new network namespace; it touches no memory.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("cannot make a network namespace: {}", std::io::Error::last_os_error()));
            }
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| format!("cannot bind the network namespace to {}: {e}", target.display()))?;
            // runc brings up loopback only in namespaces it makes itself.
            loopback_up().map_err(|e| format!("cannot bring up loopback in {}: {e}", target.display()))
        })
        .map_err(|e| format!("cannot start a thread to make a network namespace: {e}"))
        .and_then(|t| t.join().unwrap_or_else(|_| Err("the network namespace thread panicked".into())));
    if made.is_err() {
        delete_netns(path);
    }
    made
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) takes no pointers; the descriptor it returns is owned
    // (closed) by the OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a valid descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write an ifreq, which
    // `req` is, named with a NUL-terminated name; its union holds the flags.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes the named network namespace `path` as `ip netns delete` does; one
/// that is not there is fine. Blocking.
fn delete_netns(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        tracing::warn!("cannot unmount {}: {e}", path.display());
    }
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// The node's one masquerade rule for its containers' outbound traffic
/// (nat POSTROUTING: from the subnet to anywhere outside it), installed
/// unless it is there already (a daemon that was killed leaves it, as it
/// leaves the bridge), and removed when dropped only if this installed it.
#[derive(Debug)]
pub struct Masquerade {
    added: bool,
}

impl Masquerade {
    /// Installs the rule unless it is there. Blocking.
    pub fn install() -> Result<Masquerade, String> {
        if iptables_rule("-C").is_ok() {
            return Ok(Masquerade { added: false });
        }
        iptables_rule("-A").map_err(|e| format!("cannot masquerade the containers' outbound traffic: {e}"))?;
        Ok(Masquerade { added: true })
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if self.added
            && let Err(e) = iptables_rule("-D")
        {
            tracing::warn!("cannot remove the containers' masquerade rule: {e}");
        }
    }
}

/// Runs `iptables -t nat OP POSTROUTING <the masquerade rule>`.
fn iptables_rule(op: &str) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", op, "POSTROUTING", "-s", SUBNET, "!", "-d", SUBNET])
        .args(["-m", "comment", "--comment", MASQUERADE_COMMENT, "-j", "MASQUERADE"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables {op} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn netns_name(id: &str) -> String {
    format!("skiff-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deletes the namespace even when the test fails.
    struct Gone(PathBuf);

    impl Drop for Gone {
        fn drop(&mut self) {
            delete_netns(&self.0);
        }
    }

    #[test]
    fn in_subnet_is_the_subnet() {
        let (net, bits) = SUBNET.split_once('/').expect("a CIDR");
        let net: std::net::Ipv4Addr = net.parse().expect("an IPv4 network");
        assert_eq!(bits, "16");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("an address");
        assert!(in_subnet(std::net::IpAddr::V4(net)));
        assert!(in_subnet(ip("10.89.255.254")) && in_subnet(ip("10.89.0.2")));
        assert!(!in_subnet(ip("10.88.0.2")) && !in_subnet(ip("127.0.0.1")) && !in_subnet(ip("::1")));
    }

    #[test]
    fn a_namespace_is_made_with_loopback_up_and_deleted() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: making network namespaces needs root");
            return;
        }
        let name = format!("skiff-unit-{}", std::process::id());
        let path = Path::new(NETNS_DIR).join(&name);
        let _gone = Gone(path.clone());
        add_netns(&path).expect("make the namespace");
        let out = Command::new("ip").args(["-n", &name, "-o", "link", "show", "lo"]).output().expect("run ip");
        let lo = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && lo.contains(",UP"), "lo in {name}: {lo}");
        // The node's own namespace is not the new one.
        let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let made = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("stat");
        assert!(!own.to_string_lossy().contains(&made.to_string()), "{own:?} is the new namespace");
        assert!(add_netns(&path).is_err(), "made twice");
        delete_netns(&path);
        assert!(!path.exists());
        delete_netns(&path);
    }

    #[test]
    fn the_masquerade_rule_is_removed_only_by_who_added_it() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: iptables needs root");
            return;
        }
        // In a network namespace of the test's own (iptables runs in the
        // calling thread's): the machine's rules are not touched, and the
        // namespace goes with the thread.
        std::thread::spawn(|| {
            // SAFETY: moves only this thread, which ends with the test.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
            let rules = || {
                let out = Command::new("iptables").args(["-w", "5", "-t", "nat", "-S", "POSTROUTING"]).output();
                let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                text.lines().filter(|l| l.contains(MASQUERADE_COMMENT)).count()
            };
            let first = Masquerade::install().expect("install");
            assert_eq!(rules(), 1);
            let second = Masquerade::install().expect("install again");
            assert_eq!(rules(), 1, "installed twice");
            drop(second);
            assert_eq!(rules(), 1, "removed by one that found it");
            drop(first);
            assert_eq!(rules(), 0, "left by the one that added it");
        })
        .join()
        .expect("the test thread");
    }
}
