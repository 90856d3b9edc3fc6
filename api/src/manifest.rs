//! YAML manifests: one deployment per document, several documents per file.
//!
//! ```yaml
//! name: worker
//! wasm: ./worker.wasm        # relative to the manifest
//! replicas: 3
//! resources: { cpu: 100m, memory: 64Mi }
//! env: { GREETING: hello }
//! restart: always            # always | on-failure | never
//! constraints: { zone: a }   # node labels
//! allowed_hosts: [api.example.com]   # outbound HTTP the replicas may make
//! ```

use crate::quantity::{Cpu, Memory};
use crate::types::RestartPolicy;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// Largest replica count one deployment may ask for.
pub const MAX_REPLICAS: u32 = 100_000;

/// A name that is a DNS label: 1–63 characters of `a-z`, `0-9` and `-`, starting
/// and ending with a letter or digit. Names become paths, cgroups and host names.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("name {name:?} must be 1 to 63 characters long"));
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if !ok_chars || !ok_ends {
        return Err(format!(
            "name {name:?} must use only lowercase letters, digits and '-', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks an entry of `allowed_hosts`: a host name or IPv4 address, optionally
/// `*.` for any subdomain and `:PORT` for one port (`api.example.com`,
/// `*.example.com`, `10.0.0.5:8080`); no scheme, no path.
pub fn validate_allowed_host(entry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("allowed host {entry:?} {why}; write a host such as api.example.com[:8080]"));
    if entry.contains("://") || entry.contains('/') {
        return bad("has a scheme or a path");
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (entry, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().ok().is_none_or(|p| p == 0)) {
        return bad("has an invalid port");
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad("is not a host name");
    }
    Ok(())
}

/// Checks an environment variable name: a C identifier.
pub fn validate_env_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "environment variable name {key:?} must be letters, digits and '_', not starting with a digit"
        ));
    }
    Ok(())
}

thread_local! {
    /// The raw text of the last value our own deserializers refused. serde_norway
    /// places a custom error at the start of the enclosing mapping, not at the
    /// value; [`parse_manifest`] uses this to point at the value itself.
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

pub(crate) fn refuse<E: serde::de::Error>(value: impl ToString, message: String) -> E {
    REFUSED.with(|r| *r.borrow_mut() = Some(value.to_string()));
    E::custom(message)
}

/// Checks a deployment's use of a secret: a valid secret name, valid variable
/// names, and an absolute, plain directory path.
pub fn validate_secret_ref(r: &crate::types::SecretRef) -> Result<(), String> {
    validate_name(&r.secret).map_err(|e| format!("secret {e}"))?;
    for var in r.env.keys() {
        validate_env_key(var)?;
    }
    if let Some(path) = &r.path
        && !is_plain_abs_path(path)
    {
        return Err(format!(
            "secret path {path:?} must be an absolute directory path without '.' or '..', such as /secrets/db"
        ));
    }
    if r.env.is_empty() && r.path.is_none() {
        return Err(format!("secret {:?} is referenced but used neither as env nor as path", r.secret));
    }
    Ok(())
}

/// Checks a deployment's volumes: valid names, absolute plain paths, no name or
/// path twice, and at most one replica when one is mounted read-write.
pub fn validate_volumes(volumes: &[crate::types::VolumeMount], replicas: u32) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    let mut paths = std::collections::BTreeSet::new();
    for v in volumes {
        validate_name(&v.name).map_err(|e| format!("volume {e}"))?;
        if !is_plain_abs_path(&v.path) {
            return Err(format!("volume path {:?} must be an absolute directory path without '.' or '..'", v.path));
        }
        if !names.insert(&v.name) || !paths.insert(&v.path) {
            return Err(format!("volume {} or its path {} is given twice", v.name, v.path));
        }
        if !v.read_only && replicas > 1 {
            return Err(format!(
                "volume {} is mounted read-write, which only one replica may do; use replicas: 1 or read_only: true",
                v.name
            ));
        }
    }
    Ok(())
}

/// A volume lease guards read-write volumes; without one it would mean nothing.
pub fn validate_volume_lease(lease: bool, volumes: &[crate::types::VolumeMount]) -> Result<(), String> {
    if lease && volumes.iter().all(|v| v.read_only) {
        return Err("volume_lease needs a volume mounted read-write".into());
    }
    Ok(())
}

fn is_plain_abs_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 255
        && path.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Checks health checks: each sets exactly one of http, tcp or exec, with a path
/// that starts with `/` and sane timing.
pub fn validate_probes(p: &crate::types::Probes) -> Result<(), String> {
    for (what, probe) in [("liveness", &p.liveness), ("readiness", &p.readiness), ("startup", &p.startup)] {
        let Some(probe) = probe else { continue };
        let kinds = probe.http.is_some() as u8 + probe.tcp.is_some() as u8 + probe.exec.is_some() as u8;
        if kinds != 1 {
            return Err(format!("{what} probe must set exactly one of http, tcp or exec"));
        }
        if let Some(h) = &probe.http
            && (!h.path.starts_with('/') || h.path.len() > 1024 || h.path.chars().any(char::is_whitespace))
        {
            return Err(format!("{what} probe path {:?} must start with '/' and hold no spaces", h.path));
        }
        if probe.period_seconds == 0 || probe.timeout_seconds == 0 || probe.failure_threshold == 0 {
            return Err(format!("{what} probe period, timeout and failure threshold must be at least 1"));
        }
        if probe.exec.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(format!("{what} probe exec needs a command"));
        }
    }
    Ok(())
}

/// Checks a container's ports and network: ports 1-65535, no host port twice,
/// and with `network: host` no host port other than the container's own.
/// `image`: whether the workload is an image (ports and host networking are
/// for containers only).
pub fn validate_ports(
    ports: &[crate::types::PortMapping],
    network: crate::types::NetworkMode,
    image: bool,
) -> Result<(), String> {
    use crate::types::NetworkMode;
    if !image && (!ports.is_empty() || network != NetworkMode::Bridge) {
        return Err("ports and network: host are for images; a Wasm workload has neither".into());
    }
    let mut held = std::collections::BTreeSet::new();
    for p in ports {
        if p.container_port == 0 || p.host_port == Some(0) {
            return Err("ports must be 1-65535".into());
        }
        if network == NetworkMode::Host && p.host_port.is_some_and(|h| h != p.container_port) {
            return Err(format!(
                "with network: host the container's port {} is the node's port; drop host_port {} or make them equal",
                p.container_port,
                p.host_port.unwrap_or_default()
            ));
        }
    }
    for h in crate::types::host_ports(ports, network) {
        if !held.insert(h) {
            return Err(format!("host port {h} is given twice"));
        }
    }
    Ok(())
}

/// A deployment name checked by [`validate_name`] as it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        validate_name(&s).map_err(|m| refuse(&s, m))?;
        Ok(Name(s))
    }
}

fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            validate_env_key(&k).map_err(|m| refuse(&k, m))?;
            let v = match v {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
            };
            Ok((k, v))
        })
        .collect()
}

fn replica_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = u32::deserialize(d)?;
    if n > MAX_REPLICAS {
        return Err(refuse(n, format!("replicas must be at most {MAX_REPLICAS}, got {n}")));
    }
    Ok(Some(n))
}

/// What each replica requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestResources {
    /// CPU, `100m` by default.
    #[serde(default = "default_cpu")]
    pub cpu: Cpu,
    /// Memory and its hard limit, `64Mi` by default.
    #[serde(default = "default_memory")]
    pub memory: Memory,
}

/// The default CPU request: `100m`.
pub fn default_cpu() -> Cpu {
    Cpu(100)
}

/// The default memory request and limit: `64Mi`.
pub fn default_memory() -> Memory {
    Memory(64 << 20)
}

impl Default for ManifestResources {
    fn default() -> Self {
        ManifestResources { cpu: default_cpu(), memory: default_memory() }
    }
}

/// One deployment as a manifest declares it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDeployment {
    /// The deployment's name.
    pub name: Name,
    /// Path to a `.wasm` file, relative to the manifest.
    #[serde(default)]
    pub wasm: Option<String>,
    /// An OCI image reference.
    #[serde(default)]
    pub image: Option<String>,
    /// Desired replicas; when absent, 1 for a new deployment, and an existing one
    /// keeps the count it has.
    #[serde(default, deserialize_with = "replica_count")]
    pub replicas: Option<u32>,
    /// Requests per replica.
    #[serde(default)]
    pub resources: ManifestResources,
    /// Environment variables.
    #[serde(default, deserialize_with = "env_map")]
    pub env: BTreeMap<String, String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Node labels required.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Secrets read as env vars or files.
    #[serde(default)]
    pub secrets: Vec<crate::types::SecretRef>,
    /// How a new revision replaces the old one.
    #[serde(default)]
    pub strategy: crate::types::UpdateStrategy,
    /// Named node-local volumes.
    #[serde(default)]
    pub volumes: Vec<crate::types::VolumeMount>,
    /// Health checks.
    #[serde(default)]
    pub probes: crate::types::Probes,
    /// Hosts the replicas may call over HTTP.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The port an image serves HTTP on, routed by the ingress.
    #[serde(default)]
    pub http_port: Option<u16>,
    /// Scaling by load between `min` and `max` replicas.
    #[serde(default)]
    pub autoscale: Option<crate::types::Autoscale>,
    /// Ports an image listens on, published at `host_port` on its node.
    #[serde(default)]
    pub ports: Vec<crate::types::PortMapping>,
    /// `bridge` (default) or `host`: the node's own network namespace.
    #[serde(default)]
    pub network: crate::types::NetworkMode,
    /// SIGTERM to SIGKILL when a container stops (`10s`; default 5s).
    #[serde(default)]
    pub stop_grace_period: Option<crate::types::GracePeriod>,
    /// Stop a replica whose node has lost the scheduler for the node grace
    /// (see [`crate::types::WorkloadSpec::volume_lease`]).
    #[serde(default)]
    pub volume_lease: bool,
}

/// A manifest that could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l} column {c}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

/// The largest manifest read, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most entries in each list or map of a spec (env, args, constraints, secrets,
/// allowed hosts, volumes, ports).
pub const MAX_SPEC_ENTRIES: usize = 256;
/// The longest value of one env variable, argument, label or constraint.
pub const MAX_VALUE_BYTES: usize = 32 << 10;
/// The most env and args bytes of one spec together.
pub const MAX_SPEC_TEXT_BYTES: usize = 256 << 10;

/// Refuses a spec with more entries or longer values than skiff carries: every
/// revision is stored, sent to nodes and shown, so its size is bounded.
pub fn validate_spec_sizes(spec: &crate::types::WorkloadSpec) -> Result<(), String> {
    let counts = [
        ("env", spec.env.len()),
        ("args", spec.args.len()),
        ("constraints", spec.constraints.len()),
        ("secrets", spec.secrets.len()),
        ("allowed_hosts", spec.allowed_hosts.len()),
        ("volumes", spec.volumes.len()),
        ("ports", spec.ports.len()),
    ];
    for (what, n) in counts {
        if n > MAX_SPEC_ENTRIES {
            return Err(format!("{what} has {n} entries; at most {MAX_SPEC_ENTRIES} are allowed"));
        }
    }
    let values = spec
        .env
        .iter()
        .map(|(k, v)| (format!("env {k}"), v))
        .chain(spec.args.iter().enumerate().map(|(i, a)| (format!("argument {}", i + 1), a)))
        .chain(spec.constraints.iter().map(|(k, v)| (format!("constraint {k}"), v)));
    let mut total = 0;
    for (what, v) in values {
        if v.len() > MAX_VALUE_BYTES {
            return Err(format!("{what} is {} bytes long; at most {MAX_VALUE_BYTES} are allowed", v.len()));
        }
        total += v.len();
    }
    total += spec.env.keys().chain(spec.constraints.keys()).map(String::len).sum::<usize>();
    if total > MAX_SPEC_TEXT_BYTES {
        return Err(format!(
            "env, args and constraints hold {total} bytes together; at most {MAX_SPEC_TEXT_BYTES} are allowed \
             (put large configuration in a secret file or a volume)"
        ));
    }
    for k in spec.constraints.keys() {
        if k.is_empty() || k.len() > 253 {
            return Err(format!("constraint key {k:?} must be 1 to 253 characters"));
        }
    }
    Ok(())
}

/// The longest autoscale window (`window_seconds` and both stabilizations): the
/// scheduler keeps this much usage history.
pub const MAX_AUTOSCALE_WINDOW_SECONDS: u32 = 600;

/// Checks an apply as the scheduler does once its replica count is settled
/// (`req.replicas` absent counts as 1): everything a manifest checks, plus sizes
/// and resources. One copy for the server and the fuzzers.
pub fn validate_apply(name: &str, req: &crate::types::ApplyRequest) -> Result<(), String> {
    let replicas = req.replicas.unwrap_or(1);
    validate_volumes(&req.spec.volumes, replicas)
        .and_then(|()| validate_volume_lease(req.spec.volume_lease, &req.spec.volumes))?;
    validate_probes(&req.spec.probes)?;
    validate_spec_sizes(&req.spec)?;
    let image = matches!(req.spec.workload, crate::types::Workload::Image(_));
    validate_ports(&req.spec.ports, req.spec.network, image)?;
    if let Some(a) = &req.autoscale {
        a.validate()?;
        let longest = a.window_seconds.max(a.stabilization_seconds).max(a.scale_up_stabilization_seconds);
        if longest > MAX_AUTOSCALE_WINDOW_SECONDS {
            return Err(format!(
                "autoscale windows must be at most {MAX_AUTOSCALE_WINDOW_SECONDS} seconds, got {longest}"
            ));
        }
        validate_volumes(&req.spec.volumes, a.max)?;
    }
    for r in &req.spec.secrets {
        validate_secret_ref(r)?;
    }
    validate_name(name)?;
    if replicas > MAX_REPLICAS {
        return Err(format!("replicas must be at most {MAX_REPLICAS}, got {replicas}"));
    }
    let res = req.spec.resources;
    if res.cpu.0 == 0 || res.memory.0 < (1 << 20) {
        return Err("resources must request at least 1m of cpu and 1Mi of memory".into());
    }
    for k in req.spec.env.keys() {
        validate_env_key(k)?;
    }
    for h in &req.spec.allowed_hosts {
        validate_allowed_host(h)?;
    }
    Ok(())
}

/// Largest secret, keys and values together.
pub const MAX_SECRET_BYTES: usize = 256 << 10;

/// Secret keys become file names: letters, digits, `.`, `_` and `-`, not starting with `.`.
pub fn validate_secret_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("secret key {key:?} must be letters, digits, '.', '_' and '-', not starting with '.'"))
    }
}

/// Checks a secret as the scheduler does before sealing it: a valid name, at
/// least one key, keys that are file names, and at most [`MAX_SECRET_BYTES`].
pub fn validate_secret(name: &str, req: &crate::types::SecretRequest) -> Result<(), String> {
    validate_name(name).map_err(|e| format!("secret {e}"))?;
    if req.data.is_empty() {
        return Err("a secret needs at least one key: --from-literal K=V or --from-file K=PATH".into());
    }
    let mut total = 0;
    for (k, v) in &req.data {
        validate_secret_key(k)?;
        total += k.len() + v.len();
    }
    if total > MAX_SECRET_BYTES {
        return Err(format!("secret {name} holds {total} bytes; at most {MAX_SECRET_BYTES}"));
    }
    Ok(())
}

/// Reads every deployment in a YAML text of one or more documents.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestDeployment>, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(plain(format!(
            "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are read (split it into several files)",
            text.len()
        )));
    }
    REFUSED.with(|r| r.borrow_mut().take());
    let mut deployments = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        match Option::<ManifestDeployment>::deserialize(doc) {
            Ok(Some(d)) => deployments.push(d),
            Ok(None) => {}
            Err(e) => return Err(locate_refused(text, yaml_error(e))),
        }
    }
    if deployments.is_empty() {
        return Err(ManifestError { line: None, column: None, message: "manifest holds no deployment".into() });
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in &deployments {
        match (&d.wasm, &d.image) {
            (Some(_), Some(_)) => {
                return Err(plain(format!("deployment {:?}: set either wasm or image, not both", d.name.0)));
            }
            (None, None) => return Err(plain(format!("deployment {:?}: set wasm (a .wasm file) or image", d.name.0))),
            _ => {}
        }
        validate_volumes(&d.volumes, d.replicas.unwrap_or(1))
            .and_then(|()| validate_volume_lease(d.volume_lease, &d.volumes))
            .map_err(|e| plain(format!("deployment {:?}: {e}", d.name.0)))?;
        validate_probes(&d.probes).map_err(|e| plain(format!("deployment {:?}: {e}", d.name.0)))?;
        if let Some(a) = &d.autoscale {
            a.validate().map_err(|e| plain(format!("deployment {:?}: {e}", d.name.0)))?;
        }
        validate_ports(&d.ports, d.network, d.image.is_some())
            .map_err(|e| plain(format!("deployment {:?}: {e}", d.name.0)))?;
        if d.stop_grace_period.is_some() && d.image.is_none() {
            return Err(plain(format!(
                "deployment {:?}: stop_grace_period is for images; a Wasm replica stops at once",
                d.name.0
            )));
        }
        match d.http_port {
            Some(0) => return Err(plain(format!("deployment {:?}: http_port must be 1-65535", d.name.0))),
            Some(_) if d.image.is_none() => {
                return Err(plain(format!(
                    "deployment {:?}: http_port is for images; a Wasm HTTP component is served without one",
                    d.name.0
                )));
            }
            _ => {}
        }
        if !seen.insert(d.name.0.clone()) {
            return Err(plain(format!("deployment {:?} appears twice in the manifest", d.name.0)));
        }
    }
    Ok(deployments)
}

/// Moves a custom error from its mapping's start to the refused value, found as a
/// whole token on or after the reported line.
fn locate_refused(text: &str, mut err: ManifestError) -> ManifestError {
    // An empty value is found everywhere (and `find("")` never moves on): keep
    // the mapping's place.
    let Some(value) = REFUSED.with(|r| r.borrow_mut().take()).filter(|v| !v.is_empty()) else { return err };
    let from = err.line.unwrap_or(1);
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let mut start = 0;
        while let Some(pos) = line[start..].find(value.as_str()) {
            let at = start + pos;
            let before = line[..at].chars().next_back();
            let after = line[at + value.len()..].chars().next();
            let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
            if boundary(before) && boundary(after) {
                err.line = Some(i + 1);
                err.column = Some(line[..at].chars().count() + 1);
                return err;
            }
            start = at + value.len();
        }
    }
    err
}

fn plain(message: String) -> ManifestError {
    ManifestError { line: None, column: None, message }
}

fn yaml_error(e: serde_norway::Error) -> ManifestError {
    let loc = e.location();
    let mut message = e.to_string();
    // serde_norway appends " at line L column C"; we print the place first instead.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ManifestError { line: loc.as_ref().map(|l| l.line()), column: loc.as_ref().map(|l| l.column()), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn check(text: &str, expected: Expect) {
        let out = match parse_manifest(text) {
            Ok(ds) => ds
                .iter()
                .map(|d| {
                    let n = d.replicas.map_or("-".to_string(), |n| n.to_string());
                    format!("{} x{n} {:?}\n", d.name.0, d.resources)
                })
                .collect(),
            Err(e) => format!("error: {e}"),
        };
        expected.assert_eq(&out);
    }

    #[test]
    fn oversized_and_deeply_nested_input_is_refused_in_one_line() {
        let big = format!("name: a\nwasm: a.wasm\nenv: {{X: \"{}\"}}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse_manifest(&big).unwrap_err().to_string();
        assert!(e.starts_with("the manifest is 1048") && e.contains("at most 1048576"), "{e}");
        // Nesting where a string is expected: the parser's recursion limit, not a stack overflow.
        let deep = format!("name: a\nwasm: a.wasm\nenv: {{X: {}{}}}\n", "[".repeat(1000), "]".repeat(1000));
        let e = parse_manifest(&deep).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("recursion limit") || e.contains("invalid type"), "{e}");

        let mut spec: crate::types::WorkloadSpec = serde_json::from_value(serde_json::json!({
            "workload": { "wasm": "sha256:00" }, "resources": { "cpu": "100m", "memory": "64Mi" },
        }))
        .expect("spec");
        assert_eq!(validate_spec_sizes(&spec), Ok(()));
        spec.args = vec!["a".into(); MAX_SPEC_ENTRIES + 1];
        assert_eq!(validate_spec_sizes(&spec), Err("args has 257 entries; at most 256 are allowed".into()));
        spec.args = vec!["a".repeat(MAX_VALUE_BYTES + 1)];
        assert_eq!(validate_spec_sizes(&spec), Err("argument 1 is 32769 bytes long; at most 32768 are allowed".into()));
        spec.args = vec!["a".repeat(MAX_VALUE_BYTES); 9];
        assert!(validate_spec_sizes(&spec).unwrap_err().starts_with("env, args and constraints hold 294912 bytes"));
    }

    #[test]
    fn an_empty_refused_value_is_located_without_hanging() {
        // Found by fuzz/ (manifest): locating the empty name looped forever.
        for yaml in
            ["name: \nwasm: w.wasm\n", "name: \"\"\nwasm: w.wasm\n", "wasm: w.wasm\nenv: {\"\": x}\nname: \"\"\n"]
        {
            let e = parse_manifest(yaml).expect_err(yaml).to_string();
            assert!(e.contains("must be") && !e.contains('\n'), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn several_documents() {
        check(
            "name: a\nwasm: a.wasm\nreplicas: 3\nresources: {cpu: 250m, memory: 1Gi}\n---\nname: b\nwasm: b.wasm\n---\n",
            expect![[r#"
                a x3 ManifestResources { cpu: Cpu(250), memory: Memory(1073741824) }
                b x- ManifestResources { cpu: Cpu(100), memory: Memory(67108864) }
            "#]],
        );
    }

    #[test]
    fn ports_network_and_stop_grace_period() {
        let yaml = "name: web\nimage: web\nports: [{container_port: 80, host_port: 8081}, {container_port: 53, protocol: udp}]\nstop_grace_period: 10s\n";
        let d = &parse_manifest(yaml).expect("manifest")[0];
        assert_eq!(d.ports.len(), 2);
        assert_eq!(d.ports[0].host_port, Some(8081));
        assert_eq!(d.ports[1].protocol, crate::types::Protocol::Udp);
        assert_eq!(d.stop_grace_period, Some(crate::types::GracePeriod(10_000)));
        let host = &parse_manifest(
            "name: h\nimage: h\nnetwork: host\nports: [{container_port: 8080}]\nstop_grace_period: 1500ms\n",
        )
        .expect("manifest")[0];
        assert_eq!(host.network, crate::types::NetworkMode::Host);
        assert_eq!(host.stop_grace_period.map(|g| g.to_string()).as_deref(), Some("1500ms"));
        check(
            "name: w\nimage: w\nstop_grace_period: 11m\n",
            expect![[r#"error: line 3 column 20: stop grace period "11m" is too long; at most 10m"#]],
        );
        check(
            "name: w\nimage: w\nstop_grace_period: 5h\n",
            expect![[r#"error: line 3 column 20: invalid stop grace period "5h": unknown unit "h"; use ms, s or m"#]],
        );
        check(
            "name: w\nimage: w\nports: [{container_port: 80, host_port: 8081}, {container_port: 81, host_port: 8081}]\n",
            expect![[r#"error: deployment "w": host port 8081 is given twice"#]],
        );
        check(
            "name: w\nimage: w\nnetwork: host\nports: [{container_port: 80, host_port: 8081}]\n",
            expect![[
                r#"error: deployment "w": with network: host the container's port 80 is the node's port; drop host_port 8081 or make them equal"#
            ]],
        );
        check(
            "name: w\nwasm: w.wasm\nports: [{container_port: 80}]\n",
            expect![[r#"error: deployment "w": ports and network: host are for images; a Wasm workload has neither"#]],
        );
    }

    #[test]
    fn http_port_is_for_images() {
        let ok = parse_manifest("name: web\nimage: localhost:5000/web:1\nhttp_port: 8080\n").expect("manifest");
        assert_eq!(ok[0].http_port, Some(8080));
        let err = parse_manifest("name: web\nwasm: web.wasm\nhttp_port: 8080\n").expect_err("wasm with a port");
        assert!(err.to_string().contains("http_port is for images"), "{err}");
        let err = parse_manifest("name: web\nimage: web\nhttp_port: 0\n").expect_err("port 0");
        assert!(err.to_string().contains("http_port must be 1-65535"), "{err}");
    }

    #[test]
    fn allowed_hosts_are_hosts() {
        for ok in ["api.example.com", "*.example.com", "10.0.0.5:8080", "localhost"] {
            assert_eq!(validate_allowed_host(ok), Ok(()), "{ok}");
        }
        for bad in ["http://api.example.com", "api.example.com/x", "a..b", "", "*.", "host:0", "host:http", "-a.com"] {
            assert!(validate_allowed_host(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_allowed_host("https://x.io").unwrap_err(),
            r#"allowed host "https://x.io" has a scheme or a path; write a host such as api.example.com[:8080]"#
        );
    }

    #[test]
    fn validation_messages() {
        check(
            "name: a\nwasm: a.wasm\nreplica: 3\n",
            expect![
                "error: line 3 column 1: unknown field `replica`, expected one of `name`, `wasm`, `image`, `replicas`, `resources`, `env`, `args`, `restart`, `constraints`, `secrets`, `strategy`, `volumes`, `probes`, `allowed_hosts`, `http_port`, `autoscale`, `ports`, `network`, `stop_grace_period`, `volume_lease`"
            ],
        );
        check(
            "name: a\nwasm: a.wasm\nvolumes: [{name: d, path: /d, read_only: true}]\nvolume_lease: true\n",
            expect![[r#"error: deployment "a": volume_lease needs a volume mounted read-write"#]],
        );
        check(
            "name: Bad_Name\nwasm: a.wasm\n",
            expect![[
                r#"error: line 1 column 7: name "Bad_Name" must use only lowercase letters, digits and '-', and start and end with a letter or digit"#
            ]],
        );
        check(
            "name: a\nwasm: a.wasm\nresources:\n  memory: 64m\n",
            expect![[
                r#"error: line 4 column 11: resources: invalid memory quantity "64m": `m` means thousandths; did you mean Mi (mebibytes)?"#
            ]],
        );
        check(
            "name: a\nwasm: a.wasm\nreplicas: -1\n",
            expect!["error: line 3 column 11: replicas: invalid type: integer `-1`, expected u32"],
        );
        check(
            "name: a\nwasm: a.wasm\nrestart: sometimes\n",
            expect![
                "error: line 3 column 10: restart: unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`"
            ],
        );
        check(
            "name: a\nwasm: [a\n",
            expect!["error: line 2 column 7: wasm: invalid type: sequence, expected a string"],
        );
        check("name: a\nwasm: x\nenv: {A: 1\n", expect!["error: line 4 column 1: did not find expected ',' or '}'"]);
        check(
            "name: web\nwasm: w.wasm\nreplicas: lots\n",
            expect![[r#"error: line 3 column 11: replicas: invalid type: string "lots", expected u32"#]],
        );
        check("name: a\n", expect![[r#"error: deployment "a": set wasm (a .wasm file) or image"#]]);
        check(
            "name: a\nwasm: x\n---\nname: a\nwasm: y\n",
            expect![[r#"error: deployment "a" appears twice in the manifest"#]],
        );
        check("", expect!["error: manifest holds no deployment"]);
        check(
            "name: a\nwasm: x\nenv: {1X: y}\n",
            expect![[
                r#"error: line 3 column 7: environment variable name "1X" must be letters, digits and '_', not starting with a digit"#
            ]],
        );
        check(
            "name: a\nwasm: x\nreplicas: 1000000\n",
            expect!["error: line 3 column 11: replicas must be at most 100000, got 1000000"],
        );
    }
}
