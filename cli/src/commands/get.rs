//! `skiff get` and `skiff describe`: read-only views of the cluster.

use crate::output::{Format, Table, age, map_list, memory, or_dash, print_encoded, resources, short_workload};
use anyhow::{Context, bail};
use clap::Args;
use skiff_api::quantity::format_cpu;
use skiff_api::{Client, Deployment, Event, Node, Replica, ReplicaState};

/// What `get` and `describe` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nodes,
    Deployments,
    Replicas,
    Servers,
    Jobs,
    Crons,
    Runs,
}

impl Kind {
    fn parse(word: &str) -> anyhow::Result<Kind> {
        Ok(match word.to_ascii_lowercase().as_str() {
            "nodes" | "node" | "no" => Kind::Nodes,
            "deployments" | "deployment" | "deploy" | "deploys" | "dep" => Kind::Deployments,
            "replicas" | "replica" | "rs" | "rep" => Kind::Replicas,
            "servers" | "server" => Kind::Servers,
            "jobs" | "job" => Kind::Jobs,
            "crons" | "cron" | "cronjobs" | "cronjob" => Kind::Crons,
            "runs" | "run" => Kind::Runs,
            other => bail!("unknown kind {other:?}; use nodes, deployments, replicas, jobs, crons or servers"),
        })
    }
}

/// `get`'s `-o` choices: the common ones and `wide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GetFormat {
    /// Aligned columns for people
    Table,
    /// A table with more columns
    Wide,
    /// The API objects as pretty JSON
    Json,
    /// The API objects as YAML
    Yaml,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// nodes, deployments, replicas or servers (singular and short forms work too)
    kind: String,
    /// Show only this object
    name: Option<String>,
    /// Output format (wide: replicas with their ports, cpu time and memory)
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: GetFormat,
    /// Replicas: only those of this deployment
    #[arg(long)]
    deployment: Option<String>,
    /// Replicas: only those on this node
    #[arg(long)]
    node: Option<String>,
    /// Deployments, replicas, jobs, crons and runs of every namespace the token
    /// may see, in a NAMESPACE column
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// deployment or node
    kind: String,
    /// Its name
    name: String,
}

pub async fn get(args: GetArgs, client: &Client) -> anyhow::Result<()> {
    let kind = Kind::parse(&args.kind)?;
    let format = match args.output {
        GetFormat::Table | GetFormat::Wide => Format::Table,
        GetFormat::Json => Format::Json,
        GetFormat::Yaml => Format::Yaml,
    };
    match (kind, &args.name) {
        (Kind::Jobs, name) => super::job::get_jobs(client, name.as_deref(), format, args.all_namespaces).await?,
        (Kind::Crons, name) => super::job::get_crons(client, name.as_deref(), format, args.all_namespaces).await?,
        (Kind::Runs, job) => super::job::get_runs(client, job.as_deref(), format, args.all_namespaces).await?,
        (Kind::Nodes, None) => {
            let nodes = client.nodes().await?;
            if format == Format::Table {
                nodes_table(&nodes).print();
            } else {
                print_encoded(format, &nodes)?;
            }
        }
        (Kind::Nodes, Some(name)) => {
            let node = client.node(name).await?;
            if format == Format::Table {
                nodes_table(std::slice::from_ref(&node)).print();
            } else {
                print_encoded(format, &node)?;
            }
        }
        (Kind::Deployments, None) if args.all_namespaces => {
            let mut deployments = Vec::new();
            for ns in client.namespaces().await? {
                deployments.extend(client.clone().with_namespace(&ns.name).deployments().await?);
            }
            if format == Format::Table {
                deployments_table(&deployments, true).print();
            } else {
                print_encoded(format, &deployments)?;
            }
        }
        (Kind::Replicas, None) if args.all_namespaces => {
            // A replica has no namespace field: its deployment's key (NS/NAME)
            // says it in JSON and YAML, the NAMESPACE column in the table.
            let mut replicas = Vec::new();
            let mut spaces = Vec::new();
            for ns in client.namespaces().await? {
                let c = client.clone().with_namespace(&ns.name);
                for mut r in c.replicas(args.deployment.as_deref(), args.node.as_deref()).await? {
                    if format != Format::Table {
                        r.deployment = skiff_api::namespace::key(&ns.name, &r.deployment);
                    }
                    replicas.push(r);
                    spaces.push(ns.name.clone());
                }
            }
            if format == Format::Table {
                replicas_table_in(&replicas, true, Some(&spaces)).print();
            } else {
                print_encoded(format, &replicas)?;
            }
        }
        (Kind::Deployments, None) => {
            let deployments = client.deployments().await?;
            if format == Format::Table {
                deployments_table(&deployments, false).print();
            } else {
                print_encoded(format, &deployments)?;
            }
        }
        (Kind::Deployments, Some(name)) => {
            let d = client.deployment(name).await?;
            if format == Format::Table {
                deployments_table(std::slice::from_ref(&d), false).print();
            } else {
                print_encoded(format, &d)?;
            }
        }
        (Kind::Servers, _) => {
            let info = client.servers().await?;
            if format == Format::Table {
                servers_table(&info).print();
            } else {
                print_encoded(format, &info)?;
            }
        }
        (Kind::Replicas, name) => {
            let mut replicas = client.replicas(args.deployment.as_deref(), args.node.as_deref()).await?;
            if let Some(name) = name {
                // A replica id, or, as a convenience, a deployment's name.
                let by_id: Vec<Replica> = replicas.iter().filter(|r| &r.id == name).cloned().collect();
                replicas = if by_id.is_empty() {
                    replicas.into_iter().filter(|r| &r.deployment == name).collect()
                } else {
                    by_id
                };
                if replicas.is_empty() {
                    bail!(
                        "no replica {name:?} (and no deployment of that name with replicas); list them with `skiff get replicas`"
                    );
                }
                if format != Format::Table && replicas.len() == 1 && replicas[0].id == *name {
                    return print_encoded(format, &replicas[0]);
                }
            }
            if args.output == GetFormat::Wide {
                wide_replicas_table(client, &replicas).await?.print();
            } else if format == Format::Table {
                replicas_table(&replicas, true).print();
            } else {
                print_encoded(format, &replicas)?;
            }
        }
    }
    Ok(())
}

/// Replicas with where to reach them (their node's address and published ports)
/// and what they use (cpu time so far, memory now, as last reported).
async fn wide_replicas_table(client: &Client, replicas: &[Replica]) -> anyhow::Result<Table> {
    let nodes = client.nodes().await?;
    let deployments = client.deployments().await?;
    // Usage is extra: a table without it beats no table.
    let usage = client.replica_usage().await.unwrap_or_default();
    let mut t = Table::new(&[
        "ID",
        "DEPLOYMENT",
        "REV",
        "STATE",
        "NODE",
        "PORTS",
        "RESTARTS",
        "CPU",
        "MEMORY",
        "AGE",
        "REASON",
    ]);
    for r in replicas {
        let host = r
            .node
            .as_deref()
            .and_then(|n| nodes.iter().find(|x| x.name == n))
            .map(|n| url_host(&n.address).to_string());
        let spec = deployments.iter().find(|d| d.name == r.deployment).map(|d| &d.spec);
        let ports: Vec<String> = spec
            .map(|spec| {
                spec.ports
                    .iter()
                    .map(|p| {
                        let at = host.as_deref().unwrap_or("");
                        match (spec.network, p.host_port) {
                            (skiff_api::NetworkMode::Host, _) => format!("{at}:{}/{}", p.container_port, p.protocol),
                            (_, Some(h)) => format!("{at}:{h}->{}/{}", p.container_port, p.protocol),
                            (_, None) => format!("{}/{}", p.container_port, p.protocol),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (cpu, mem) = match usage.get(&r.id) {
            Some((cpu, mem)) if r.node.is_some() => (format!("{cpu:.2}s"), memory(*mem)),
            _ => ("-".to_string(), "-".to_string()),
        };
        t.row(vec![
            r.id.clone(),
            r.deployment.clone(),
            r.revision.to_string(),
            r.state.to_string(),
            or_dash(r.node.as_deref()),
            if ports.is_empty() { "-".to_string() } else { ports.join(",") },
            r.restarts.to_string(),
            cpu,
            mem,
            age(r.created_ms),
            reason_of(r),
        ]);
    }
    Ok(t)
}

/// `10.0.0.5` of `http://10.0.0.5:7071`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Why a replica is in its state, or its exit status.
fn reason_of(r: &Replica) -> String {
    match (&r.reason, r.exit_code) {
        (Some(reason), _) => reason.clone(),
        (None, Some(code)) if matches!(r.state, ReplicaState::Exited | ReplicaState::Failed) => format!("exit {code}"),
        _ => "-".to_string(),
    }
}

fn nodes_table(nodes: &[Node]) -> Table {
    let mut t = Table::new(&["NAME", "STATE", "CPU", "MEMORY", "REPLICAS", "RUNTIMES", "LABELS", "AGE"]);
    for n in nodes {
        t.row(vec![
            n.name.clone(),
            node_state(n),
            format!("{}/{}", format_cpu(n.allocated.cpu.0), format_cpu(n.capacity.cpu.0)),
            format!("{}/{}", memory(n.allocated.memory.0), memory(n.capacity.memory.0)),
            n.replicas.to_string(),
            n.runtimes.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            map_list(&n.labels),
            age(n.registered_ms),
        ]);
    }
    t
}

/// A node's state, with `cordoned`, `draining` or `drained` added.
fn node_state(n: &Node) -> String {
    match &n.drain {
        Some(d) if d.done => format!("{},drained", n.state),
        Some(_) => format!("{},draining", n.state),
        None if n.unschedulable => format!("{},cordoned", n.state),
        None => n.state.to_string(),
    }
}

/// A rollout's state in a word, `paused` added.
fn rollout_state(r: &skiff_api::Rollout) -> String {
    if r.paused { format!("{} (paused)", r.state) } else { r.state.to_string() }
}

/// With `all` (`get -A`), a NAMESPACE column first.
fn deployments_table(deployments: &[Deployment], all: bool) -> Table {
    // READY is ready/desired (passing readiness); AVAILABLE counts those ready
    // for the strategy's min_ready_seconds, as `kubectl get deployments` does.
    // ROLLOUT is where the latest rollout stands: `failed` when its revision never
    // became available by its progress deadline (`describe` says why). A
    // deployment scaled to zero says so in READY: its name is still routable.
    let mut header = if all { vec!["NAMESPACE"] } else { Vec::new() };
    header.extend(["NAME", "READY", "AVAILABLE", "RUNNING", "PENDING", "REVISION", "ROLLOUT", "WORKLOAD", "AGE"]);
    let mut t = Table::new(&header);
    for d in deployments {
        let mut row = Vec::new();
        if all {
            let ns = if d.namespace.is_empty() { skiff_api::namespace::DEFAULT } else { d.namespace.as_str() };
            row.push(ns.to_string());
        }
        row.extend([
            d.name.clone(),
            ready_column(d),
            d.status.available.to_string(),
            d.status.running.to_string(),
            d.status.pending.to_string(),
            d.revision.to_string(),
            rollout_state(&d.rollout),
            short_workload(&d.spec.workload),
            age(d.created_ms),
        ]);
        t.row(row);
    }
    t
}

/// READY of a deployment: ready/desired, `(scaled to zero)` added when it is
/// at zero by idleness (its replicas still stopping count as ready no more).
fn ready_column(d: &Deployment) -> String {
    if d.scaled_to_zero() {
        format!("{}/0 (scaled to zero)", d.status.ready)
    } else {
        format!("{}/{}", d.status.ready, d.replicas)
    }
}

fn replicas_table(replicas: &[Replica], with_deployment: bool) -> Table {
    replicas_table_in(replicas, with_deployment, None)
}

/// With `spaces` (`get -A`: each replica's namespace), a NAMESPACE column first.
fn replicas_table_in(replicas: &[Replica], with_deployment: bool, spaces: Option<&[String]>) -> Table {
    let mut header = if spaces.is_some() { vec!["NAMESPACE"] } else { Vec::new() };
    header.push("ID");
    if with_deployment {
        header.push("DEPLOYMENT");
    }
    header.extend(["REV", "STATE", "NODE", "RESTARTS", "AGE", "REASON"]);
    let mut t = Table::new(&header);
    for (i, r) in replicas.iter().enumerate() {
        let mut row = Vec::new();
        if let Some(spaces) = spaces {
            row.push(spaces.get(i).cloned().unwrap_or_default());
        }
        row.push(r.id.clone());
        if with_deployment {
            row.push(r.deployment.clone());
        }
        let reason = reason_of(r);
        row.extend([
            r.revision.to_string(),
            r.state.to_string(),
            or_dash(r.node.as_deref()),
            r.restarts.to_string(),
            age(r.created_ms),
            reason,
        ]);
        t.row(row);
    }
    t
}

fn events_table(events: &[Event]) -> Table {
    let mut t = Table::new(&["AGE", "OBJECT", "REASON", "MESSAGE"]);
    let start = events.len().saturating_sub(20);
    for e in &events[start..] {
        t.row(vec![age(e.time_ms), e.object.clone(), e.reason.clone(), e.message.clone()]);
    }
    t
}

/// The servers, then the store's members: who leads and whether the store is whole.
fn servers_table(info: &skiff_api::ServersInfo) -> Table {
    let mut t = Table::new(&["SERVER", "URL", "LEADER", "AGE"]);
    for s in &info.servers {
        t.row(vec![
            s.name.clone(),
            s.url.clone(),
            if s.leader { "*".into() } else { String::new() },
            age(s.started_ms),
        ]);
    }
    if info.leader.is_none() {
        t.row(vec!["(no leader)".into(), String::new(), String::new(), String::new()]);
    }
    t.row(vec![String::new(); 4]);
    t.row(vec![format!("STORE {}", info.store), "HEALTH".into(), "LEADER".into(), "VERSION".into()]);
    for m in &info.members {
        let health = if m.healthy { "healthy".to_string() } else { format!("unhealthy: {}", m.error) };
        t.row(vec![m.endpoint.clone(), health, if m.leader { "*".into() } else { String::new() }, m.version.clone()]);
    }
    t
}

pub async fn describe(args: DescribeArgs, client: &Client) -> anyhow::Result<()> {
    match Kind::parse(&args.kind)? {
        Kind::Deployments => describe_deployment(client, &args.name).await,
        Kind::Nodes => describe_node(client, &args.name).await,
        Kind::Replicas => {
            bail!("describe shows a deployment or a node; for replicas use `skiff get replicas {}`", args.name)
        }
        Kind::Servers => bail!("describe shows a deployment or a node; for servers use `skiff get servers`"),
        Kind::Jobs => super::job::describe_job(client, &args.name).await,
        Kind::Crons => super::job::describe_cron(client, &args.name).await,
        Kind::Runs => bail!("for a job's runs use `skiff get runs {}` or `skiff describe job`", args.name),
    }
}

async fn describe_deployment(client: &Client, name: &str) -> anyhow::Result<()> {
    let d = client.deployment(name).await?;
    let replicas = client.replicas(Some(name), None).await.context("listing its replicas")?;
    let events = client.events(Some(&format!("deployment/{name}"))).await.context("listing its events")?;
    let spec = &d.spec;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{:<13}{v}\n", format!("{k}:")));
    field(&mut out, "Name", d.name.clone());
    field(&mut out, "Revision", d.revision.to_string());
    field(&mut out, "Workload", spec.workload.to_string());
    field(&mut out, "Resources", format!("{} per replica (memory is also the limit)", resources(spec.resources)));
    field(&mut out, "Restart", spec.restart.to_string());
    field(&mut out, "Args", if spec.args.is_empty() { "<none>".into() } else { spec.args.join(" ") });
    if spec.env.is_empty() {
        field(&mut out, "Env", "<none>".into());
    } else {
        out.push_str("Env:\n");
        for (k, v) in &spec.env {
            out.push_str(&format!("  {k}={v}\n"));
        }
    }
    field(&mut out, "Constraints", map_list(&spec.constraints));
    let s = d.status;
    field(
        &mut out,
        "Replicas",
        format!(
            "{} desired, {} total, {} running, {} ready, {} available, {} pending, {} failed, {} restarts",
            d.replicas, s.total, s.running, s.ready, s.available, s.pending, s.failed, s.restarts
        ),
    );
    let rollout = match d.rollout.message.as_str() {
        "" => rollout_state(&d.rollout),
        why => format!("{}: {why}", rollout_state(&d.rollout)),
    };
    field(&mut out, "Rollout", rollout);
    if let Some(line) = super::rollout::canary_line(&d) {
        field(&mut out, "Canary", line);
    }
    if spec.volume_lease {
        field(&mut out, "Volume lease", "on: a node cut off from the scheduler stops these replicas".into());
    }
    if spec.rebalance {
        field(&mut out, "Rebalance", "on: replicas move, one at a time, when a node joins or returns".into());
    }
    if let Some(a) = &d.autoscale {
        let target = match (a.target_cpu_percent, a.target_requests_per_second) {
            (Some(c), _) => format!("cpu {c}% of request"),
            (None, Some(r)) => format!("{r} requests/s per replica"),
            (None, None) => "no target".into(),
        };
        let how = format!(
            "{}-{} replicas, {target} over {}s, down after {}s",
            a.min, a.max, a.window_seconds, a.stabilization_seconds
        );
        field(&mut out, "Autoscale", how);
    }
    if let Some(idle) = d.idle_seconds() {
        let now = if d.scaled_to_zero() {
            "scaled to zero now: the next request starts a replica"
        } else {
            "the next request after that starts one"
        };
        // Longer than the other keys: its own line rather than a wider column.
        out.push_str(&format!("Scale to zero: after {idle}s without a request; {now}\n"));
    }
    field(&mut out, "Created", format!("{} ago", age(d.created_ms)));
    field(&mut out, "Updated", format!("{} ago", age(d.updated_ms)));

    let pending: Vec<&Replica> = replicas.iter().filter(|r| r.state == ReplicaState::Pending).collect();
    if !pending.is_empty() {
        out.push_str("\nPending:\n");
        for r in pending {
            out.push_str(&format!("  {}  pending: {}\n", r.id, r.reason.as_deref().unwrap_or("waiting for placement")));
        }
    }
    out.push_str("\nReplicas:\n");
    if replicas.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&replicas_table(&replicas, false).render("  "));
    }
    out.push_str(&events_section(&events));
    print!("{out}");
    Ok(())
}

async fn describe_node(client: &Client, name: &str) -> anyhow::Result<()> {
    let n = client.node(name).await?;
    let replicas = client.replicas(None, Some(name)).await.context("listing its replicas")?;
    let events = client.events(Some(&format!("node/{name}"))).await.context("listing its events")?;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| out.push_str(&format!("{:<16}{v}\n", format!("{k}:")));
    field(&mut out, "Name", n.name.clone());
    field(&mut out, "State", node_state(&n));
    if n.unschedulable {
        field(&mut out, "Schedulable", "no: cordoned (`skiff node uncordon` opens it)".into());
    }
    if let Some(d) = &n.drain {
        let forced = if d.force { " (forced)" } else { "" };
        field(&mut out, "Drain", format!("{}{forced}, started {} ago", d.message, age(d.started_ms)));
        for s in &d.stuck {
            out.push_str(&format!("  cannot move: {s}\n"));
        }
    }
    field(&mut out, "Address", n.address.clone());
    field(&mut out, "Labels", map_list(&n.labels));
    field(&mut out, "Runtimes", n.runtimes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    field(&mut out, "Capacity", resources(n.capacity));
    field(&mut out, "Allocated", resources(n.allocated));
    field(&mut out, "Free", resources(n.capacity.saturating_sub(n.allocated)));
    field(&mut out, "Replicas", n.replicas.to_string());
    field(&mut out, "Registered", format!("{} ago", age(n.registered_ms)));
    field(
        &mut out,
        "Last heartbeat",
        if n.last_heartbeat_ms == 0 {
            "none since the scheduler started".into()
        } else {
            format!("{} ago", age(n.last_heartbeat_ms))
        },
    );
    out.push_str("\nReplicas:\n");
    if replicas.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&replicas_table(&replicas, true).render("  "));
    }
    out.push_str(&events_section(&events));
    print!("{out}");
    Ok(())
}

fn events_section(events: &[Event]) -> String {
    if events.is_empty() {
        return "\nEvents:\n  <none>\n".to_string();
    }
    let title = if events.len() > 20 { "\nEvents (last 20):\n" } else { "\nEvents:\n" };
    format!("{title}{}", events_table(events).render("  "))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_node_address_gives_its_host() {
        assert_eq!(super::url_host("http://10.0.0.5:7071"), "10.0.0.5");
        assert_eq!(super::url_host("http://node-a.lan:7071/"), "node-a.lan");
        assert_eq!(super::url_host("http://[::1]:7071"), "[::1]");
        assert_eq!(super::url_host("10.0.0.5"), "10.0.0.5");
    }
    use super::Kind;

    #[test]
    fn kinds_accept_short_forms() {
        for w in ["nodes", "node", "no"] {
            assert_eq!(Kind::parse(w).ok(), Some(Kind::Nodes));
        }
        for w in ["deployments", "deployment", "deploy"] {
            assert_eq!(Kind::parse(w).ok(), Some(Kind::Deployments));
        }
        for w in ["replicas", "replica", "rs"] {
            assert_eq!(Kind::parse(w).ok(), Some(Kind::Replicas));
        }
        assert!(Kind::parse("pods").is_err());
    }
}
