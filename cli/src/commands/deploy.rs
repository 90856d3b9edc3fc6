//! `skiff deploy` and `skiff apply`: upload artifacts by digest, create or update
//! deployments, and optionally wait until their replicas run.

use super::{parse_duration, parse_env, parse_labels};
use crate::output;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};
use skiff_api::quantity::{Cpu, Memory};
use skiff_api::{ApplyOutcome, ApplyRequest, Client, NodeState, Resources, RestartPolicy, Workload, WorkloadSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The first four bytes of every WebAssembly binary, module or component.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestartArg {
    /// Restart whatever the exit status
    Always,
    /// Restart only after a failure
    OnFailure,
    /// Never restart
    Never,
}

impl From<RestartArg> for RestartPolicy {
    fn from(r: RestartArg) -> Self {
        match r {
            RestartArg::Always => RestartPolicy::Always,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Never => RestartPolicy::Never,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NetworkArg {
    /// Its own network namespace, with an address on the node's bridge
    Bridge,
    /// The node's network namespace: the container's ports are the node's
    Host,
}

impl From<NetworkArg> for skiff_api::NetworkMode {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Bridge => skiff_api::NetworkMode::Bridge,
            NetworkArg::Host => skiff_api::NetworkMode::Host,
        }
    }
}

/// `8081:80`, `5353:53/udp`: a published port.
fn parse_publish(s: &str) -> Result<skiff_api::PortMapping, String> {
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, skiff_api::Protocol::Tcp),
        Some((p, "udp")) => (p, skiff_api::Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}; use tcp or udp")),
        None => (s, skiff_api::Protocol::Tcp),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
    match ports.split_once(':').map(|(h, c)| (port(h), port(c))) {
        Some((Some(host), Some(container))) => {
            Ok(skiff_api::PortMapping { container_port: container, host_port: Some(host), protocol })
        }
        _ => Err("expected HOSTPORT:PORT with ports 1-65535, such as 8081:80 or 5353:53/udp".into()),
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The .wasm file (a WASI command module or component); or use --image
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    file: Option<PathBuf>,
    /// An imported OCI image to run as a container, NAME[:TAG] (see `skiff image import`)
    #[arg(long, value_name = "NAME[:TAG]")]
    image: Option<String>,
    /// The deployment's name (lowercase letters, digits and '-')
    #[arg(long)]
    name: String,
    /// How many replicas to run [default: 1 for a new deployment; an existing
    /// one keeps its count]. A deploy turns autoscaling off
    #[arg(long)]
    replicas: Option<u32>,
    /// CPU each replica requests (100m, 1)
    #[arg(long, default_value = "100m")]
    cpu: Cpu,
    /// Memory each replica requests; also its hard limit (64Mi, 1Gi)
    #[arg(long, default_value = "64Mi")]
    memory: Memory,
    /// An environment variable, KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// An argument passed to the program (repeatable)
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// What to do when a replica exits
    #[arg(long, value_enum, default_value = "always")]
    restart: RestartArg,
    /// A node label the nodes must carry, k=v (repeatable)
    #[arg(long = "label-selector", value_name = "K=V")]
    label_selector: Vec<String>,
    /// A named node-local volume, NAME:/DIR or NAME:/DIR:ro (repeatable); pins the
    /// replica to the volume's node
    #[arg(long = "volume", value_name = "NAME:/DIR[:ro]")]
    volume: Vec<String>,
    /// Stop the replica when its node has not reached the scheduler for the node
    /// grace, so a cut-off node stops writing its read-write volume
    #[arg(long)]
    volume_lease: bool,
    /// Move replicas back when a node joins or returns and the spread over the
    /// nodes is worse than it could be (surge first, one at a time)
    #[arg(long)]
    rebalance: bool,
    /// An environment variable set from a secret's key, VAR=SECRET:KEY (repeatable)
    #[arg(long = "secret-env", value_name = "VAR=SECRET:KEY")]
    secret_env: Vec<String>,
    /// A secret mounted read-only as files, one per key, SECRET:/DIR (repeatable)
    #[arg(long = "secret-dir", value_name = "SECRET:/DIR")]
    secret_dir: Vec<String>,
    /// A host the replicas may send HTTP requests to, such as api.example.com (repeatable)
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_host: Vec<String>,
    /// The port an --image serves HTTP on; the ingress routes NAME.skiff.local to it
    #[arg(long, value_name = "PORT", requires = "image", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Publish an --image's port on its node, HOSTPORT:PORT[/udp] (repeatable); at
    /// most one replica per node can hold a host port
    #[arg(long = "publish", short = 'p', value_name = "HOSTPORT:PORT[/udp]", value_parser = parse_publish)]
    publish: Vec<skiff_api::PortMapping>,
    /// Run an --image in the node's network namespace rather than its own
    #[arg(long, value_enum, default_value = "bridge")]
    network: NetworkArg,
    /// How long a stopping container gets between SIGTERM and SIGKILL (at most 10m)
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    stop_grace_period: skiff_api::GracePeriod,
    /// Go to zero replicas after this long without a request (300s, 5m); the
    /// name stays routable and the next request starts a replica. For HTTP
    /// deployments: a Wasm HTTP component, or an --image with --port
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    scale_to_zero: Option<Duration>,
    /// Wait until every replica of the new revision runs, or for one that
    /// serves (an HTTP component, --port) until the ingress routes to it; fail if
    /// a replica fails or restarts meanwhile
    #[arg(long)]
    wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The YAML manifest: one deployment per document
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Wait until every replica of every deployment runs (serving ones: ready and
    /// routed by the ingress); fail if a replica fails or restarts meanwhile
    #[arg(long)]
    wait: bool,
    /// How long --wait waits
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Turns `--volume NAME:/DIR[:ro]` flags into volume mounts.
fn parse_volumes(flags: &[String]) -> anyhow::Result<Vec<skiff_api::VolumeMount>> {
    flags
        .iter()
        .map(|f| {
            let mut parts = f.splitn(3, ':');
            let (Some(name), Some(path)) = (parts.next(), parts.next()) else {
                bail!("--volume {f:?} must be NAME:/DIR or NAME:/DIR:ro, such as data:/data");
            };
            let read_only = match parts.next() {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(other) => bail!("--volume {f:?}: {other:?} must be ro or rw"),
            };
            Ok(skiff_api::VolumeMount { name: name.into(), path: path.into(), read_only, size: None })
        })
        .collect()
}

/// Turns `--secret-env VAR=SECRET:KEY` and `--secret-dir SECRET:/DIR` into secret
/// references, one per secret.
fn parse_secret_refs(env: &[String], dirs: &[String]) -> anyhow::Result<Vec<skiff_api::SecretRef>> {
    let mut refs: std::collections::BTreeMap<String, skiff_api::SecretRef> = Default::default();
    fn entry<'a>(
        refs: &'a mut std::collections::BTreeMap<String, skiff_api::SecretRef>,
        secret: &str,
    ) -> &'a mut skiff_api::SecretRef {
        refs.entry(secret.to_string()).or_insert_with(|| skiff_api::SecretRef {
            secret: secret.to_string(),
            env: Default::default(),
            path: None,
        })
    }
    for e in env {
        let parsed = e.split_once('=').and_then(|(var, r)| r.split_once(':').map(|(s, k)| (var, s, k)));
        let Some((var, secret, key)) = parsed else {
            bail!("--secret-env {e:?} must be VAR=SECRET:KEY, such as DB_PASSWORD=db:password");
        };
        entry(&mut refs, secret).env.insert(var.to_string(), key.to_string());
    }
    for d in dirs {
        let Some((secret, dir)) = d.split_once(':') else {
            bail!("--secret-dir {d:?} must be SECRET:/DIR, such as tls:/secrets/tls");
        };
        entry(&mut refs, secret).path = Some(dir.to_string());
    }
    Ok(refs.into_values().collect())
}

pub async fn deploy(args: DeployArgs, client: &Client) -> anyhow::Result<()> {
    let network = skiff_api::NetworkMode::from(args.network);
    let mut ports = args.publish.clone();
    if network == skiff_api::NetworkMode::Host {
        // On the host network every port is the node's: publishing means listing.
        for p in &mut ports {
            if p.host_port == Some(p.container_port) {
                p.host_port = None;
            }
        }
    }
    let image = args.image.is_some();
    // The file's path until it is uploaded; the scheduler pins an image
    // reference to the imported manifest's digest.
    let workload = match (&args.file, &args.image) {
        (Some(file), _) => Workload::Wasm(file.display().to_string()),
        (None, Some(image)) => Workload::Image(image.trim().to_string()),
        (None, None) => bail!("give a .wasm file or --image NAME[:TAG]"),
    };
    let spec = WorkloadSpec {
        workload,
        resources: Resources { cpu: args.cpu, memory: args.memory },
        env: parse_env(&args.env)?,
        args: args.args,
        restart: args.restart.into(),
        constraints: parse_labels("--label-selector", &args.label_selector)?,
        allowed_hosts: args.allow_host,
        volumes: parse_volumes(&args.volume)?,
        probes: Default::default(),
        secrets: parse_secret_refs(&args.secret_env, &args.secret_dir)?,
        http_port: args.port,
        ports,
        network,
        // Only containers have a stop path with a grace period.
        stop_grace_period: image.then_some(args.stop_grace_period).filter(|g| *g != skiff_api::GracePeriod::DEFAULT),
        volume_lease: args.volume_lease,
        rebalance: args.rebalance,
    };
    let scale_to_zero = match args.scale_to_zero {
        Some(d) if d < Duration::from_secs(1) => bail!("--scale-to-zero must be at least 1s, got {d:?}"),
        // Whole seconds, rounded up: the API counts idle time in seconds.
        Some(d) => Some(skiff_api::ScaleToZero {
            idle_seconds: u32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(u32::MAX),
        }),
        None => None,
    };
    let request = ApplyRequest { replicas: args.replicas, spec, strategy: None, autoscale: None, scale_to_zero };
    let wasm = match args.file {
        Some(file) => {
            let bytes = read_wasm(&file)?;
            Some((file, bytes))
        }
        None => None,
    };
    let wait = args.wait.then_some(args.timeout);
    apply_all(client, vec![Prepared { name: args.name, request, wasm, namespace: None }], wait, "").await
}

pub async fn apply(args: ApplyArgs, client: &Client) -> anyhow::Result<()> {
    let file = &args.file;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read manifest {}", file.display()))?;
    let objects = skiff_api::manifest::parse_objects(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    // Jobs and crons (`kind: job|cron`) go their own way, after the deployments.
    let (mut manifest, mut jobs, mut crons) = (Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        match o {
            skiff_api::manifest::ManifestObject::Deployment(d) => manifest.push(d),
            skiff_api::manifest::ManifestObject::Job(name, spec, ns) => jobs.push((name, spec, ns)),
            skiff_api::manifest::ManifestObject::Cron(name, spec, ns) => crons.push((name, spec, ns)),
        }
    }

    // Read every artifact before changing anything, so that a typo in the third
    // deployment does not leave the first two applied.
    let mut prepared = Vec::new();
    for d in manifest {
        let wasm = match &d.spec.workload {
            Workload::Wasm(rel) => {
                let path = base.join(rel);
                let bytes = read_wasm(&path).with_context(|| format!("{}: deployment {}", file.display(), d.name))?;
                Some((path, bytes))
            }
            Workload::Image(_) => None,
        };
        prepared.push(Prepared { request: d.request(), name: d.name, wasm, namespace: d.namespace });
    }
    let wait = args.wait.then_some(args.timeout);
    let source = format!("{}: ", file.display());
    if !prepared.is_empty() {
        apply_all(client, prepared, wait, &source).await?;
    }
    super::job::apply(client, &base, jobs, crons, &source).await
}

/// One deployment ready to apply: its request, and the Wasm file to upload
/// first (its digest then becomes the workload).
struct Prepared {
    name: String,
    request: ApplyRequest,
    wasm: Option<(PathBuf, Vec<u8>)>,
    /// The document's `namespace:`.
    namespace: Option<String>,
}

/// The one apply path of `deploy` and `apply`: checks every deployment as the
/// scheduler will before anything is uploaded, then uploads, applies, warns when
/// no node fits, and with `wait` (the timeout) waits for each.
async fn apply_all(
    client: &Client,
    prepared: Vec<Prepared>,
    wait: Option<Duration>,
    source: &str,
) -> anyhow::Result<()> {
    for p in &prepared {
        skiff_api::validate::apply(&p.name, &p.request)
            .map_err(|e| anyhow::anyhow!("{source}deployment {}: {}", p.name, e.message))?;
        let zero = p.request.scale_to_zero.is_some() || p.request.autoscale.is_some_and(|a| a.min == 0);
        if let Some((path, bytes)) = &p.wasm
            && zero
            && !super::wait::is_http_component(bytes)
        {
            bail!(
                "{source}deployment {}: {} is not an HTTP component (it exports no wasi:http/incoming-handler); only HTTP deployments scale to zero",
                p.name,
                path.display()
            );
        }
    }
    let mut applied = Vec::new();
    for Prepared { name, mut request, wasm, namespace } in prepared {
        // A document's `namespace:` (#20), else the one the client acts in.
        let client = &match &namespace {
            Some(ns) => client.clone().with_namespace(ns),
            None => client.clone(),
        };
        let mut http_component = false;
        if let Some((path, bytes)) = wasm {
            http_component = super::wait::is_http_component(&bytes);
            request.spec.workload = Workload::Wasm(upload(client, &path, bytes).await?);
        }
        let resp = client.apply(&name, &request).await.with_context(|| format!("deployment {name}"))?;
        let outcome = match resp.outcome {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Updated => "updated",
            ApplyOutcome::Unchanged => "unchanged",
        };
        println!("deployment {name} {outcome} (revision {})", resp.deployment.revision);
        if resp.deployment.replicas > 0 {
            warn_if_no_node_fits(client, &name, &request.spec).await;
        }
        let serves = super::wait::serves(&request.spec, http_component);
        let d = resp.deployment;
        applied.push((name, d.revision, d.replicas, serves, d.updated_ms, client.clone()));
    }
    if let Some(timeout) = wait {
        let deadline = tokio::time::Instant::now() + timeout;
        for (name, revision, want, serves, since_ms, client) in &applied {
            let target =
                super::wait::Target { name, revision: *revision, want: *want, serves: *serves, since_ms: *since_ms };
            super::wait::until_up(client, &target, deadline, timeout).await?;
        }
    }
    Ok(())
}

/// Reads a file and checks that it is WebAssembly, before anything is uploaded.
pub(crate) fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !bytes.starts_with(WASM_MAGIC) {
        bail!(
            "{} is not a WebAssembly file (it does not start with \\0asm); build a WASI command, e.g. with `cargo build --target wasm32-wasip2`",
            path.display()
        );
    }
    Ok(bytes)
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uploads `bytes` unless the server has them already; returns their digest.
pub(crate) async fn upload(client: &Client, path: &Path, bytes: Vec<u8>) -> anyhow::Result<String> {
    let digest = digest_of(&bytes);
    let exists = client.blob_exists(&digest).await?;
    if !exists {
        client.put_blob(&digest, bytes).await.with_context(|| format!("cannot upload {}", path.display()))?;
        tracing::info!("uploaded {} as {digest}", path.display());
    }
    Ok(digest)
}

/// Tells the user at once when no node could ever hold one replica, rather than
/// leaving them to find a pending replica later. Only advice: any failure to list
/// the nodes is ignored.
async fn warn_if_no_node_fits(client: &Client, name: &str, spec: &WorkloadSpec) {
    let runtime = spec.workload.runtime();
    let request = spec.resources;
    let Ok(nodes) = client.nodes().await else {
        return;
    };
    let live: Vec<_> = nodes.iter().filter(|n| n.state != NodeState::Down && n.runtimes.contains(&runtime)).collect();
    if nodes.is_empty() {
        eprintln!("warning: no node has joined yet; the replicas of {name} stay pending until one does");
        return;
    }
    let labelled: Vec<_> =
        live.iter().filter(|n| spec.constraints.iter().all(|(k, v)| n.labels.get(k) == Some(v))).collect();
    if !live.is_empty() && labelled.is_empty() {
        eprintln!(
            "warning: no live node carries the labels {} that {name} requires; its replicas stay pending until one does (see `skiff get nodes`)",
            output::map_list(&spec.constraints)
        );
        return;
    }
    if labelled.iter().any(|n| n.capacity.covers(request)) {
        return;
    }
    let largest = labelled
        .iter()
        .max_by_key(|n| (n.capacity.memory, n.capacity.cpu))
        .map(|n| format!("the largest, {}, offers {}", n.name, output::resources(n.capacity)))
        .unwrap_or_else(|| format!("no live node runs {runtime} workloads"));
    eprintln!(
        "warning: no node is large enough for a replica of {name} ({}): {largest}; its replicas stay pending until a node that fits joins (or lower --cpu/--memory)",
        output::resources(request)
    );
}

#[cfg(test)]
mod tests {
    use super::digest_of;

    #[test]
    fn published_ports_parse() {
        let p = super::parse_publish("8081:80").expect("tcp");
        assert_eq!((p.host_port, p.container_port, p.protocol), (Some(8081), 80, skiff_api::Protocol::Tcp));
        assert_eq!(super::parse_publish("5353:53/udp").expect("udp").protocol, skiff_api::Protocol::Udp);
        for bad in ["80", "0:80", "8081:80/sctp", "x:80"] {
            assert!(super::parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(digest_of(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
