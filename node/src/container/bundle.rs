//! The OCI runtime bundle's `config.json`, written with the oci-spec crate.
//!
//! Kept to runtime-spec 1.0.x fields: Debian's runc 1.1 reports 1.0.2-dev.
//! Defaults follow what container engines ship: pid, mount, ipc, uts and network
//! namespaces; Docker's default capability set (without `CAP_NET_RAW` in a
//! namespace with `isolation: namespace`); `noNewPrivileges`; the masked and
//! read-only paths of runc's spec; a seccomp profile that refuses the system calls
//! a container has no business making; and cgroup limits from the replica's
//! resources (memory without swap, CPU quota and shares, a pids limit).

use oci_spec::runtime::{
    Arch, Capability, HookBuilder, HooksBuilder, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};
use std::collections::{BTreeMap, HashSet};

/// Processes (and threads) a container may have at once: a fork bomb stops here.
pub const PIDS_LIMIT: i64 = 1024;
/// CPU quota period, microseconds.
pub const CPU_PERIOD: u64 = 100_000;
/// CPU a container that serves (an HTTP port or a readiness probe) may use
/// until it is first ready (or for [`STARTUP_BOOST_MAX`]), when it asks for
/// less; one that never reports ready (a batch job, a worker) keeps its
/// request from the start. Its quota then drops to its
/// request (`runc update`). At a request of 100m (10 ms a period) a start that
/// needs a little more CPU than that waited for the next 100 ms period: nginx
/// from zero answered in p50 154 ms at 100m and 74 ms at 1000m (#17). Its
/// shares (its weight against the runtime's own processes while it starts)
/// are a core's too until then.
pub const STARTUP_CPU_MILLIS: u64 = 1000;
/// Longest a container keeps its startup CPU.
pub const STARTUP_BOOST_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// The CFS shares (weight) of `cpu_millis`.
pub fn cpu_shares(cpu_millis: u64) -> u64 {
    (cpu_millis * 1024 / 1000).max(2)
}

/// The CFS quota, microseconds per [`CPU_PERIOD`], of `cpu_millis`.
pub fn cpu_quota(cpu_millis: u64) -> i64 {
    i64::try_from(cpu_millis * CPU_PERIOD / 1000).unwrap_or(i64::MAX).max(1000)
}
/// Every group may open ICMP echo sockets in a container's own network
/// namespace, so that a `ping` that falls back to them (iputils') works without
/// `CAP_NET_RAW` (Docker sets the same).
const PING_GROUP_RANGE: (&str, &str) = ("net.ipv4.ping_group_range", "0 2147483647");

/// What the container runs, after the image config and the spec are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// argv, the program first.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User and group ids.
    pub uid: u32,
    pub gid: u32,
}

/// Which network namespace a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// A new one with loopback only, made by the OCI runtime.
    New,
    /// This one (made by CNI).
    Join(std::path::PathBuf),
    /// The node's own (`network: host`): no network namespace of its own.
    Host,
}

/// Everything `config.json` is made from.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub hostname: String,
    pub process: Process,
    /// cgroup path relative to each hierarchy's root, such as `/skiff/<id>`.
    pub cgroups_path: String,
    /// Memory limit in bytes (0: none).
    pub memory: u64,
    /// CPU in millicores (0: no quota).
    pub cpu_millis: u64,
    /// Start with a core's CPU until ready ([`STARTUP_CPU_MILLIS`]).
    pub startup_boost: bool,
    /// The container's network namespace.
    pub netns: NetNs,
    /// Host paths bound into the container: (host, container path, writable).
    pub binds: Vec<(std::path::PathBuf, String, bool)>,
    /// A FIFO the runtime waits on before it starts the container (a
    /// `createRuntime` hook, in the runtime's namespaces, reading one line):
    /// it goes on when the node writes `ok`, fails on anything else or on the
    /// FIFO's end. The node connects the network meanwhile.
    pub network_gate: Option<std::path::PathBuf>,
    /// Of a namespace with `isolation: namespace` (#20): without `CAP_NET_RAW`,
    /// with which it could forge packets and answer ARP for another
    /// container's bridge address, by which the ingress names its caller.
    pub isolated: bool,
}

/// How long the runtime waits at the network gate, seconds.
const NETWORK_GATE_TIMEOUT: i64 = 60;

/// Merges the image's config with the replica's spec: the spec's args replace
/// the image's `Cmd` (the entrypoint stays), its env overrides the image's.
pub fn merge_process(
    image: Option<&oci_spec::image::Config>,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Process, String> {
    let entrypoint = image.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = if args.is_empty() { image.and_then(|c| c.cmd().clone()).unwrap_or_default() } else { args.to_vec() };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err("the image has no entrypoint or cmd and the deployment gives no args; set args".into());
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    let default_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string();
    let image_env = image.and_then(|c| c.env().clone()).unwrap_or_else(|| vec![default_path]);
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push((k.clone(), v.clone()));
    }
    let cwd = image.and_then(|c| c.working_dir().clone()).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    check_working_dir(&cwd)?;
    let (uid, gid) = parse_user(image.and_then(|c| c.user().clone()).unwrap_or_default().as_str())?;
    Ok(Process { args: argv, env: vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect(), cwd, uid, gid })
}

/// Refuses a working directory that is not absolute or that lies under `/proc`
/// once `.` and `..` are resolved: CVE-2024-21626 ("Leaky Vessels") starts a
/// container in `/proc/self/fd/N`, a descriptor the runtime leaked from the
/// host, and climbs out of it with `..`. No image needs to start in `/proc`, so
/// it is refused here whatever the installed runc would do. (A symlink in the
/// image that points into `/proc` is not followed here; runc 1.1.12+ checks the
/// directory it ends up in.)
fn check_working_dir(cwd: &str) -> Result<(), String> {
    if !cwd.starts_with('/') {
        return Err(format!("the image's working directory {cwd:?} is not absolute"));
    }
    let mut resolved: Vec<&str> = Vec::new();
    for part in cwd.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                resolved.pop();
            }
            p => resolved.push(p),
        }
    }
    if resolved.first() == Some(&"proc") {
        return Err(format!(
            "the image's working directory {cwd:?} is under /proc, where no container may start \
             (CVE-2024-21626); rebuild the image with another WORKDIR"
        ));
    }
    Ok(())
}

/// `""`, `root`, `1000`, `1000:1000`. Names other than root would need the
/// image's /etc/passwd, read from outside the container: not done.
fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let id = |s: &str, what: &str| -> Result<u32, String> {
        match s {
            "" | "root" => Ok(0),
            n => n.parse().map_err(|_| {
                format!("the image's {what} {n:?} is not numeric; only numeric ids and root are supported")
            }),
        }
    };
    let uid = id(u, "user")?;
    let gid = if g.is_empty() { if u.is_empty() || u == "root" { 0 } else { uid } } else { id(g, "group")? };
    Ok((uid, gid))
}

/// Docker's default capabilities.
fn default_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// System calls refused with EPERM: kernel modules, reboot, clock, keyrings,
/// tracing other processes, BPF and perf, mounting, swapping, namespaces of
/// their own. Most also need capabilities the container lacks; the profile
/// closes the rest (and the kernel attack surface behind them).
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The `config.json` of a bundle whose rootfs is `rootfs` (relative to it).
pub fn spec(b: &BundleSpec) -> Result<Spec, String> {
    let e = |e: oci_spec::OciSpecError| format!("cannot build config.json: {e}");
    let mut caps = default_capabilities();
    if b.isolated {
        caps.remove(&Capability::NetRaw);
    }
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(e)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(b.process.args.clone())
        .env(b.process.env.clone())
        .cwd(b.process.cwd.clone())
        .user(UserBuilder::default().uid(b.process.uid).gid(b.process.gid).build().map_err(e)?)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(e)?;

    let mut resources = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(PIDS_LIMIT).build().map_err(e)?)
        .devices(vec![]);
    if b.memory > 0 {
        let limit = i64::try_from(b.memory).unwrap_or(i64::MAX);
        // swap = limit: no swap beyond the memory itself.
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).swap(limit).build().map_err(e)?);
    }
    if b.cpu_millis > 0 {
        let start = if b.startup_boost { b.cpu_millis.max(STARTUP_CPU_MILLIS) } else { b.cpu_millis };
        let (shares, quota) = (cpu_shares(start), cpu_quota(start));
        resources = resources
            .cpu(LinuxCpuBuilder::default().shares(shares).quota(quota).period(CPU_PERIOD).build().map_err(e)?);
    }

    let namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .filter(|typ| *typ != LinuxNamespaceType::Network || b.netns != NetNs::Host)
    .map(|typ| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        if typ == LinuxNamespaceType::Network
            && let NetNs::Join(path) = &b.netns
        {
            ns.set_path(Some(path.clone()));
        }
        ns
    })
    .collect();

    let seccomp = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(DENIED_SYSCALLS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EPERM as u32)
                .build()
                .map_err(e)?,
        ])
        .build()
        .map_err(e)?;

    let defaults = oci_spec::runtime::Linux::default();
    // A network sysctl only in a namespace of the container's own: on the host
    // network it would change the node's (and runc refuses it there).
    let sysctl: std::collections::HashMap<String, String> = match b.netns {
        NetNs::Host => Default::default(),
        NetNs::New | NetNs::Join(_) => [(PING_GROUP_RANGE.0.to_string(), PING_GROUP_RANGE.1.to_string())].into(),
    };
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .sysctl(sysctl)
        .resources(resources.build().map_err(e)?)
        .cgroups_path(std::path::PathBuf::from(&b.cgroups_path))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .seccomp(seccomp)
        .build()
        .map_err(e)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    for (host, dest, writable) in &b.binds {
        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
            return Err(format!("cannot bind {} at {dest:?}: the path must be absolute, without '..'", host.display()));
        }
        let opts = ["rbind", if *writable { "rw" } else { "ro" }, "nosuid", "nodev"].map(String::from).to_vec();
        mounts
            .push(MountBuilder::default().destination(dest).typ("bind").source(host).options(opts).build().map_err(e)?);
    }

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_mounts(Some(mounts));
    spec.set_hostname(Some(b.hostname.clone()));
    spec.set_root(Some(RootBuilder::default().path("rootfs").readonly(false).build().map_err(e)?));
    spec.set_process(Some(process));
    spec.set_linux(Some(linux));
    spec.set_annotations(None);
    if let Some(gate) = &b.network_gate {
        let hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                r#"read -r said < "$1" && [ "$said" = ok ]"#.to_string(),
                "skiff-network-gate".to_string(),
                gate.to_string_lossy().into_owned(),
            ])
            .timeout(NETWORK_GATE_TIMEOUT)
            .build()
            .map_err(e)?;
        spec.set_hooks(Some(HooksBuilder::default().create_runtime(vec![hook]).build().map_err(e)?));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn image_config(json: &str) -> oci_spec::image::ImageConfiguration {
        serde_json::from_str(json).expect("image config")
    }

    #[test]
    fn spec_args_replace_cmd_and_env_overrides() {
        let img = image_config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Entrypoint":["/bin/busybox"],"Cmd":["sh"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/w","User":"1000"}}"#,
        );
        let env = BTreeMap::from([("A".to_string(), "2".to_string()), ("B".to_string(), "3".to_string())]);
        let p = merge_process(img.config().as_ref(), &["echo".into(), "hi".into()], &env).expect("merges");
        assert_eq!(p.args, ["/bin/busybox", "echo", "hi"]);
        assert_eq!(p.env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/w", 1000, 1000));
        let p = merge_process(img.config().as_ref(), &[], &BTreeMap::new()).expect("merges");
        assert_eq!(p.args, ["/bin/busybox", "sh"]);
        let err = merge_process(None, &[], &BTreeMap::new()).expect_err("nothing to run");
        assert!(err.contains("no entrypoint or cmd"), "{err}");
        assert!(parse_user("nobody").is_err());
        assert_eq!(parse_user("5:6"), Ok((5, 6)));
    }

    #[test]
    fn a_working_dir_under_proc_is_refused() {
        for bad in ["/proc/self/fd/7", "/proc", "/proc/", "//proc/1/cwd", "/x/../proc/self/cwd", "/./proc/./self"] {
            let img = image_config(&format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},
                    "config":{{"Cmd":["sh"],"WorkingDir":"{bad}"}}}}"#
            ));
            let err = merge_process(img.config().as_ref(), &[], &BTreeMap::new()).expect_err(bad);
            assert_eq!(
                err,
                format!(
                    "the image's working directory {bad:?} is under /proc, where no container may start \
                     (CVE-2024-21626); rebuild the image with another WORKDIR"
                )
            );
        }
        for ok in ["/", "/processes", "/srv/proc", "/proc/../srv", "/../.."] {
            assert_eq!(check_working_dir(ok), Ok(()), "{ok}");
        }
        assert!(check_working_dir("proc").unwrap_err().contains("is not absolute"));
    }

    #[test]
    fn host_network_has_no_network_namespace() {
        let b = BundleSpec {
            hostname: "h".into(),
            process: Process { args: vec!["/bin/true".into()], env: vec![], cwd: "/".into(), uid: 0, gid: 0 },
            cgroups_path: "/skiff/h".into(),
            memory: 0,
            cpu_millis: 0,
            startup_boost: false,
            netns: NetNs::Host,
            binds: vec![],
            network_gate: None,
            isolated: false,
        };
        let v = serde_json::to_value(spec(&b).expect("spec")).expect("json");
        let kinds: Vec<&str> = v
            .pointer("/linux/namespaces")
            .and_then(|n| n.as_array())
            .map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kinds, ["pid", "mount", "ipc", "uts"]);
        // No network sysctl on the node's own network.
        assert!(v.pointer("/linux/sysctl").and_then(|s| s.as_object()).is_none_or(|s| s.is_empty()), "{v}");
    }

    /// An isolated namespace's container has no `CAP_NET_RAW` in any set (#20).
    #[test]
    fn an_isolated_namespaces_container_cannot_make_raw_packets() {
        let b = |isolated| BundleSpec {
            hostname: "h".into(),
            process: Process { args: vec!["/bin/true".into()], env: vec![], cwd: "/".into(), uid: 0, gid: 0 },
            cgroups_path: "/skiff/h".into(),
            memory: 0,
            cpu_millis: 0,
            startup_boost: false,
            netns: NetNs::Join("/run/netns/skiff-h".into()),
            binds: vec![],
            network_gate: None,
            isolated,
        };
        let raw = |isolated| {
            let v = serde_json::to_value(spec(&b(isolated)).expect("spec")).expect("json");
            let caps = v.pointer("/process/capabilities").and_then(|c| c.as_object()).cloned().unwrap_or_default();
            caps.iter()
                .filter(|(_, list)| list.as_array().is_some_and(|l| l.iter().any(|c| c == "CAP_NET_RAW")))
                .map(|(set, _)| set.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(raw(false), ["bounding", "effective", "permitted"]);
        assert!(raw(true).is_empty(), "{:?}", raw(true));
    }

    #[test]
    fn config_json_snapshot() {
        let b = BundleSpec {
            hostname: "web-abc123".into(),
            process: Process {
                args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
            },
            cgroups_path: "/skiff/web-abc123".into(),
            memory: 64 << 20,
            cpu_millis: 250,
            startup_boost: true,
            netns: NetNs::Join("/run/netns/skiff-web-abc123".into()),
            binds: vec![("/var/lib/skiff/secrets/db".into(), "/run/secrets/db".into(), false)],
            network_gate: Some("/data/containers/run/web-abc123/network-gate".into()),
            isolated: false,
        };
        let mut v = serde_json::to_value(spec(&b).expect("spec")).expect("json");
        // Sets serialise in hash order: sort them so the snapshot is stable.
        if let Some(caps) = v.pointer_mut("/process/capabilities").and_then(|c| c.as_object_mut()) {
            for list in caps.values_mut() {
                if let Some(a) = list.as_array_mut() {
                    a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
                }
            }
        }
        // The long lists are checked by length, the rest in full.
        if let Some(names) = v.pointer_mut("/linux/seccomp/syscalls/0/names") {
            let n = names.as_array().map_or(0, Vec::len);
            assert_eq!(n, DENIED_SYSCALLS.len());
            *names = serde_json::Value::String(format!("<{n} names: DENIED_SYSCALLS>"));
        }
        let text = serde_json::to_string_pretty(&v).expect("pretty");
        expect![[r#"
            {
              "hooks": {
                "createRuntime": [
                  {
                    "args": [
                      "sh",
                      "-c",
                      "read -r said < \"$1\" && [ \"$said\" = ok ]",
                      "skiff-network-gate",
                      "/data/containers/run/web-abc123/network-gate"
                    ],
                    "path": "/bin/sh",
                    "timeout": 60
                  }
                ]
              },
              "hostname": "web-abc123",
              "linux": {
                "cgroupsPath": "/skiff/web-abc123",
                "maskedPaths": [
                  "/proc/acpi",
                  "/proc/asound",
                  "/proc/kcore",
                  "/proc/keys",
                  "/proc/latency_stats",
                  "/proc/timer_list",
                  "/proc/timer_stats",
                  "/proc/sched_debug",
                  "/sys/firmware",
                  "/proc/scsi"
                ],
                "namespaces": [
                  {
                    "type": "pid"
                  },
                  {
                    "type": "mount"
                  },
                  {
                    "type": "ipc"
                  },
                  {
                    "type": "uts"
                  },
                  {
                    "path": "/run/netns/skiff-web-abc123",
                    "type": "network"
                  }
                ],
                "readonlyPaths": [
                  "/proc/bus",
                  "/proc/fs",
                  "/proc/irq",
                  "/proc/sys",
                  "/proc/sysrq-trigger"
                ],
                "resources": {
                  "cpu": {
                    "period": 100000,
                    "quota": 100000,
                    "shares": 1024
                  },
                  "devices": [],
                  "memory": {
                    "limit": 67108864,
                    "swap": 67108864
                  },
                  "pids": {
                    "limit": 1024
                  }
                },
                "seccomp": {
                  "architectures": [
                    "SCMP_ARCH_X86_64",
                    "SCMP_ARCH_X86",
                    "SCMP_ARCH_X32"
                  ],
                  "defaultAction": "SCMP_ACT_ALLOW",
                  "syscalls": [
                    {
                      "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1,
                      "names": "<50 names: DENIED_SYSCALLS>"
                    }
                  ]
                },
                "sysctl": {
                  "net.ipv4.ping_group_range": "0 2147483647"
                }
              },
              "mounts": [
                {
                  "destination": "/proc",
                  "source": "proc",
                  "type": "proc"
                },
                {
                  "destination": "/dev",
                  "options": [
                    "nosuid",
                    "strictatime",
                    "mode=755",
                    "size=65536k"
                  ],
                  "source": "tmpfs",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/pts",
                  "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5"
                  ],
                  "source": "devpts",
                  "type": "devpts"
                },
                {
                  "destination": "/dev/shm",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "mode=1777",
                    "size=65536k"
                  ],
                  "source": "shm",
                  "type": "tmpfs"
                },
                {
                  "destination": "/dev/mqueue",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev"
                  ],
                  "source": "mqueue",
                  "type": "mqueue"
                },
                {
                  "destination": "/sys",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "ro"
                  ],
                  "source": "sysfs",
                  "type": "sysfs"
                },
                {
                  "destination": "/sys/fs/cgroup",
                  "options": [
                    "nosuid",
                    "noexec",
                    "nodev",
                    "relatime",
                    "ro"
                  ],
                  "source": "cgroup",
                  "type": "cgroup"
                },
                {
                  "destination": "/run/secrets/db",
                  "options": [
                    "rbind",
                    "ro",
                    "nosuid",
                    "nodev"
                  ],
                  "source": "/var/lib/skiff/secrets/db",
                  "type": "bind"
                }
              ],
              "ociVersion": "1.0.2",
              "process": {
                "args": [
                  "/bin/sh",
                  "-c",
                  "echo hi"
                ],
                "capabilities": {
                  "ambient": [],
                  "bounding": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ],
                  "effective": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ],
                  "inheritable": [],
                  "permitted": [
                    "CAP_AUDIT_WRITE",
                    "CAP_CHOWN",
                    "CAP_DAC_OVERRIDE",
                    "CAP_FOWNER",
                    "CAP_FSETID",
                    "CAP_KILL",
                    "CAP_MKNOD",
                    "CAP_NET_BIND_SERVICE",
                    "CAP_NET_RAW",
                    "CAP_SETFCAP",
                    "CAP_SETGID",
                    "CAP_SETPCAP",
                    "CAP_SETUID",
                    "CAP_SYS_CHROOT"
                  ]
                },
                "cwd": "/",
                "env": [
                  "PATH=/bin",
                  "GREETING=hi"
                ],
                "noNewPrivileges": true,
                "rlimits": [
                  {
                    "hard": 1024,
                    "soft": 1024,
                    "type": "RLIMIT_NOFILE"
                  }
                ],
                "terminal": false,
                "user": {
                  "gid": 0,
                  "uid": 0
                }
              },
              "root": {
                "path": "rootfs",
                "readonly": false
              }
            }"#]]
        .assert_eq(&text);
    }
}
