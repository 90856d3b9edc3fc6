//! Every rule a deployment, a secret or a name must follow, once: the scheduler
//! checks what it is sent with these, `parse_manifest` checks what it reads with
//! them, the CLI checks flags with them before uploading anything, and the
//! fuzzers hold them to their promises. Reading (serde, YAML) is elsewhere; a
//! rule here never depends on how the value arrived.

use crate::messages::{ApplyRequest, SecretRequest};
use crate::spec::{
    Autoscale, NetworkMode, PortMapping, Probes, SecretRef, VolumeMount, Workload, WorkloadSpec, host_ports,
};

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

/// Checks a deployment's use of a secret: a valid secret name, valid variable
/// names, and an absolute, plain directory path.
pub fn validate_secret_ref(r: &SecretRef) -> Result<(), String> {
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
pub fn validate_volumes(volumes: &[VolumeMount], replicas: u32) -> Result<(), String> {
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
pub fn validate_volume_lease(lease: bool, volumes: &[VolumeMount]) -> Result<(), String> {
    if lease && volumes.iter().all(|v| v.read_only) {
        return Err("volume_lease needs a volume mounted read-write".into());
    }
    Ok(())
}

/// Rebalancing moves replicas between nodes; a volume lives on one node and
/// pins its replicas there, so the two cannot go together.
pub fn validate_rebalance(rebalance: bool, volumes: &[VolumeMount]) -> Result<(), String> {
    match volumes.first() {
        Some(v) if rebalance => Err(format!(
            "rebalance moves replicas between nodes, but volume {} keeps them on its node; drop rebalance or the volume",
            v.name
        )),
        _ => Ok(()),
    }
}

fn is_plain_abs_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 255
        && path.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Checks health checks: each sets exactly one of http, tcp or exec, with a path
/// that starts with `/` and sane timing.
pub fn validate_probes(p: &Probes) -> Result<(), String> {
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
pub fn validate_ports(ports: &[PortMapping], network: NetworkMode, image: bool) -> Result<(), String> {
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
    for h in host_ports(ports, network) {
        if !held.insert(h) {
            return Err(format!("host port {h} is given twice"));
        }
    }
    Ok(())
}

/// Most entries in each list or map of a spec (env, args, constraints, secrets,
/// allowed hosts, volumes, ports).
pub const MAX_SPEC_ENTRIES: usize = 256;

/// The longest value of one env variable, argument, label or constraint.
pub const MAX_VALUE_BYTES: usize = 32 << 10;

/// The most env and args bytes of one spec together.
pub const MAX_SPEC_TEXT_BYTES: usize = 256 << 10;

/// Refuses a spec with more entries or longer values than skiff carries: every
/// revision is stored, sent to nodes and shown, so its size is bounded.
pub fn validate_spec_sizes(spec: &WorkloadSpec) -> Result<(), String> {
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

/// A rule an apply broke: what is wrong, and the value refused as the user wrote
/// it when one value is to blame (a manifest points at it by line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// One line that says what is wrong and what would be right.
    pub message: String,
    /// The refused value's text, such as a name or an env variable's name.
    pub value: Option<String>,
}

impl Invalid {
    fn at(value: impl ToString) -> impl FnOnce(String) -> Invalid {
        move |message| Invalid { message, value: Some(value.to_string()) }
    }
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid { message, value: None }
    }
}

/// Checks an apply as the scheduler does once its replica count is settled
/// (`req.replicas` absent counts as 1). The one copy of the rules: the server,
/// manifests (`parse_manifest`), the CLI's `deploy` and the fuzzers call it.
pub fn apply(name: &str, req: &ApplyRequest) -> Result<(), Invalid> {
    validate_name(name).map_err(Invalid::at(name))?;
    let replicas = req.replicas.unwrap_or(1);
    if replicas > MAX_REPLICAS {
        return Err(Invalid::at(replicas)(format!("replicas must be at most {MAX_REPLICAS}, got {replicas}")));
    }
    let spec = &req.spec;
    for k in spec.env.keys() {
        validate_env_key(k).map_err(Invalid::at(k))?;
    }
    validate_volumes(&spec.volumes, replicas).and_then(|()| validate_volume_lease(spec.volume_lease, &spec.volumes))?;
    validate_rebalance(spec.rebalance, &spec.volumes)?;
    validate_probes(&spec.probes)?;
    if let Some(a) = &req.autoscale {
        a.validate()?;
        let longest = a.window_seconds.max(a.stabilization_seconds).max(a.scale_up_stabilization_seconds);
        if longest > MAX_AUTOSCALE_WINDOW_SECONDS {
            return Err(format!(
                "autoscale windows must be at most {MAX_AUTOSCALE_WINDOW_SECONDS} seconds, got {longest}"
            )
            .into());
        }
        validate_volumes(&spec.volumes, a.max)?;
    }
    let image = matches!(spec.workload, Workload::Image(_));
    validate_ports(&spec.ports, spec.network, image)?;
    if spec.stop_grace_period.is_some() && !image {
        return Err("stop_grace_period is for images; a Wasm replica stops at once".to_string().into());
    }
    match spec.http_port {
        Some(0) => return Err("http_port must be 1-65535".to_string().into()),
        Some(_) if !image => {
            return Err("http_port is for images; a Wasm HTTP component is served without one".to_string().into());
        }
        _ => {}
    }
    validate_scale_to_zero(req)?;
    if let Some(c) = req.strategy.as_ref().and_then(|s| s.canary.as_ref()) {
        validate_canary(c, spec)?;
    }
    if let Some(b) = req.strategy.as_ref().and_then(|s| s.blue_green.as_ref()) {
        if req.strategy.as_ref().is_some_and(|s| s.canary.is_some()) {
            return Err("strategy takes canary or blue_green, not both".to_string().into());
        }
        if matches!(spec.workload, crate::spec::Workload::Image(_)) && spec.http_port.is_none() {
            return Err("blue_green switches HTTP requests: an image needs http_port (--port)".to_string().into());
        }
        if b.scale_down_delay.0 > 24 * 3600 {
            return Err(Invalid::at(b.scale_down_delay.0)(format!(
                "scale_down_delay must be at most 24h, got {}s",
                b.scale_down_delay.0
            )));
        }
    }
    validate_spec_sizes(spec)?;
    for r in &spec.secrets {
        validate_secret_ref(r)?;
    }
    let res = spec.resources;
    if res.cpu.0 == 0 || res.memory.0 < (1 << 20) {
        return Err("resources must request at least 1m of cpu and 1Mi of memory".to_string().into());
    }
    for h in &spec.allowed_hosts {
        validate_allowed_host(h).map_err(Invalid::at(h))?;
    }
    Ok(())
}

/// Longest `scale_to_zero.idle_seconds`: a week.
pub const MAX_IDLE_SECONDS: u32 = 7 * 24 * 3600;

/// Scaling to zero (`scale_to_zero`, or `autoscale` with `min: 0`) is for HTTP
/// deployments: the ingress holds the request that wakes one, so it must be
/// what the ingress serves. A Wasm digest does not say whether it is an HTTP
/// component; the CLI and the scheduler check the artifact itself.
fn validate_scale_to_zero(req: &ApplyRequest) -> Result<(), Invalid> {
    let by_autoscale = req.autoscale.is_some_and(|a| a.min == 0);
    if let Some(z) = &req.scale_to_zero
        && !(1..=MAX_IDLE_SECONDS).contains(&z.idle_seconds)
    {
        return Err(Invalid::at(z.idle_seconds)(format!(
            "scale_to_zero idle_seconds must be 1 to {MAX_IDLE_SECONDS}, got {}",
            z.idle_seconds
        )));
    }
    if (req.scale_to_zero.is_some() || by_autoscale)
        && matches!(req.spec.workload, Workload::Image(_))
        && req.spec.http_port.is_none()
    {
        let what = if by_autoscale { "autoscale min 0 (scaling to zero)" } else { "scale_to_zero" };
        return Err(format!(
            "{what} is for HTTP deployments: an image needs http_port, so that the ingress can hold a request while a replica starts"
        )
        .into());
    }
    Ok(())
}

/// [`apply`], its error as one line: what the scheduler answers a client with.
pub fn validate_apply(name: &str, req: &ApplyRequest) -> Result<(), String> {
    apply(name, req).map_err(|e| e.message)
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
pub fn validate_secret(name: &str, req: &SecretRequest) -> Result<(), String> {
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

/// The autoscaling rules live with the others; the method is where callers of
/// the API have always found them.
impl Autoscale {
    /// Checks the bounds and that exactly one target is set, with a usable value.
    pub fn validate(&self) -> Result<(), String> {
        if self.max == 0 || self.min > self.max {
            return Err(format!(
                "autoscale needs min <= max and max >= 1, got min {} and max {} (min 0 scales an HTTP deployment to zero when idle)",
                self.min, self.max
            ));
        }
        if self.max > MAX_REPLICAS {
            return Err(format!("autoscale max must be at most {MAX_REPLICAS}, got {}", self.max));
        }
        match (self.target_cpu_percent, self.target_requests_per_second) {
            (Some(0), _) => Err("autoscale target_cpu_percent must be above 0".into()),
            (None, Some(r)) if !(r.is_finite() && r > 0.0) => {
                Err("autoscale target_requests_per_second must be above 0".into())
            }
            (Some(_), None) | (None, Some(_)) => {
                if self.window_seconds == 0 {
                    Err("autoscale window_seconds must be above 0".into())
                } else {
                    Ok(())
                }
            }
            _ => Err("autoscale needs one target: target_cpu_percent or target_requests_per_second".into()),
        }
    }
}

/// A canary's steps and analysis (#18): weights growing within 1..=99, at
/// most 20 steps, an error rate within 0..1, an interval of 1 s to 1 h. Only
/// HTTP workloads can be weighed: an image needs its `http_port`.
pub fn validate_canary(c: &crate::spec::Canary, spec: &crate::spec::WorkloadSpec) -> Result<(), Invalid> {
    if c.steps.is_empty() {
        return Err("canary needs at least one step, such as steps: [{weight: 10, pause: 60s}]".to_string().into());
    }
    if c.steps.len() > 20 {
        return Err(format!("canary may have at most 20 steps, got {}", c.steps.len()).into());
    }
    let mut last = 0;
    for s in &c.steps {
        if s.weight == 0 || s.weight > 99 {
            return Err(Invalid::at(s.weight)(format!(
                "canary step weight must be 1-99 (100 is the promotion after the last step), got {}",
                s.weight
            )));
        }
        if s.weight <= last {
            return Err(Invalid::at(s.weight)(format!("canary step weights must grow, got {} after {last}", s.weight)));
        }
        last = s.weight;
        if let crate::spec::Pause::Seconds(n) = s.pause
            && n > 7 * 24 * 3600
        {
            return Err(Invalid::at(n)(format!("canary pause must be at most 7d, got {n}s")));
        }
    }
    let a = &c.analysis;
    if let Some(r) = a.max_error_rate
        && !(0.0..=1.0).contains(&r)
    {
        return Err(Invalid::at(r)(format!("max_error_rate is a share between 0 and 1 (0.01 = 1%), got {r}")));
    }
    if a.max_p99_ms == Some(0) {
        return Err("max_p99_ms must be at least 1".to_string().into());
    }
    if a.interval.0 == 0 || a.interval.0 > 3600 {
        return Err(Invalid::at(a.interval.0)(format!("analysis interval must be 1s-1h, got {}s", a.interval.0)));
    }
    if matches!(spec.workload, crate::spec::Workload::Image(_)) && spec.http_port.is_none() {
        return Err("a canary splits HTTP requests: an image needs http_port (--port)".to_string().into());
    }
    Ok(())
}

#[cfg(test)]
mod canary_tests {
    use crate::manifest::parse_manifest;

    fn err(strategy: &str) -> String {
        let text = format!("name: web\nwasm: sha256:00\nstrategy: {strategy}\n");
        match parse_manifest(&text) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn canary_steps_and_analysis_are_checked() {
        let good = "{canary: {steps: [{weight: 10, pause: 60s}, {weight: 50, pause: manual}], \
                    analysis: {max_error_rate: 0.01, max_p99_ms: 250, min_requests: 200, interval: 10s}}}";
        assert_eq!(err(good), "ok");
        assert!(err("{canary: {steps: []}}").contains("at least one step"));
        assert!(err("{canary: {steps: [{weight: 100}]}}").contains("weight must be 1-99"));
        assert!(err("{canary: {steps: [{weight: 50}, {weight: 10}]}}").contains("must grow"));
        assert!(err("{canary: {steps: [{weight: 10}], analysis: {max_error_rate: 5}}}").contains("between 0 and 1"));
        assert!(err("{canary: {steps: [{weight: 10, pause: soon}]}}").contains("invalid duration"));
        assert!(err("{canary: {steps: [{weight: 10}], analysis: {interval: 0s}}}").contains("interval must be 1s-1h"));
    }
}
