//! `skiff top`: what each replica uses now, as `kubectl top pods` shows it.
//!
//! The scheduler keeps each replica's cumulative cpu seconds and current memory
//! as its node last reported them (every heartbeat, about a second apart). `top`
//! reads them twice, `--interval` apart, and shows the cpu seconds gained per
//! second as a percentage of one core, beside the replica's cpu request and its
//! memory beside the limit (the memory request is also the limit).

use crate::output::{Table, memory};
use anyhow::Context;
use clap::Args;
use skiff_api::quantity::format_cpu;
use skiff_api::{Client, Replica, Resources};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only the replicas of this deployment
    name: Option<String>,
    /// Only the replicas on this node
    #[arg(long)]
    node: Option<String>,
    /// How long to measure cpu over; nodes report usage about every second, so
    /// a longer interval gives a steadier figure
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    interval: Duration,
}

/// Replica id → (cpu seconds so far, memory bytes now).
type Usage = HashMap<String, (f64, u64)>;

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    deployment: String,
    node: String,
    /// Percent of one core over the interval; `None` when not reported twice.
    cpu_percent: Option<f64>,
    /// The cpu request, millicores.
    cpu_request: u64,
    /// Bytes now; `None` when not reported.
    memory: Option<u64>,
    /// The memory limit, bytes.
    memory_limit: u64,
}

pub async fn top(args: TopArgs, client: &Client) -> anyhow::Result<()> {
    if args.interval.is_zero() {
        anyhow::bail!("--interval must be longer than zero, like 1s");
    }
    // Asked first, so a wrong name fails before the wait.
    let deployments = match &args.name {
        Some(name) => vec![client.deployment(name).await?],
        None => client.deployments().await?,
    };
    if let Some(node) = &args.node {
        client.node(node).await?;
    }
    let before = client.replica_usage().await.context("reading replica usage")?;
    let start = Instant::now();
    tokio::time::sleep(args.interval).await;
    let after = client.replica_usage().await.context("reading replica usage")?;
    let seconds = start.elapsed().as_secs_f64();
    let replicas = client.replicas(args.name.as_deref(), args.node.as_deref()).await?;
    let resources: HashMap<String, Resources> = deployments.into_iter().map(|d| (d.name, d.spec.resources)).collect();
    let rows = rows(&replicas, &resources, &before, &after, seconds);
    if rows.is_empty() {
        let of = args.name.as_ref().map(|n| format!(" of deployment {n}")).unwrap_or_default();
        let on = args.node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default();
        eprintln!("no running replicas{of}{on}");
        return Ok(());
    }
    table(&rows).print();
    Ok(())
}

/// Percent of one core: the cpu seconds gained over `seconds` of wall time. A
/// counter that went back means the replica restarted within the interval; what
/// it used since is all there is to go on.
fn cpu_percent(before: f64, after: f64, seconds: f64) -> Option<f64> {
    if seconds <= 0.0 || !before.is_finite() || !after.is_finite() {
        return None;
    }
    let used = if after >= before { after - before } else { after };
    Some(used / seconds * 100.0)
}

/// The placed, live replicas with their usage, busiest first (then by memory,
/// then by id, so the order is stable).
fn rows(
    replicas: &[Replica],
    resources: &HashMap<String, Resources>,
    before: &Usage,
    after: &Usage,
    seconds: f64,
) -> Vec<Row> {
    let mut rows: Vec<Row> = replicas
        .iter()
        .filter(|r| r.state.is_placed() && !r.state.is_terminal())
        .filter_map(|r| {
            let node = r.node.clone()?;
            let resources = *resources.get(&r.deployment)?;
            let now = after.get(&r.id);
            let cpu_percent = match (before.get(&r.id), now) {
                (Some(&(b, _)), Some(&(a, _))) => cpu_percent(b, a, seconds),
                _ => None,
            };
            Some(Row {
                id: r.id.clone(),
                deployment: r.deployment.clone(),
                node,
                cpu_percent,
                cpu_request: resources.cpu.0,
                memory: now.map(|&(_, m)| m),
                memory_limit: resources.memory.0,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        let cpu = |r: &Row| r.cpu_percent.unwrap_or(-1.0);
        cpu(b).total_cmp(&cpu(a)).then(b.memory.cmp(&a.memory)).then_with(|| a.id.cmp(&b.id))
    });
    rows
}

/// `97%`, or `0.4%` below ten.
fn format_percent(p: f64) -> String {
    if p < 10.0 { format!("{p:.1}%") } else { format!("{p:.0}%") }
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new(&["REPLICA", "DEPLOYMENT", "NODE", "CPU", "CPU REQUEST", "MEMORY", "MEMORY LIMIT"]);
    for r in rows {
        t.row(vec![
            r.id.clone(),
            r.deployment.clone(),
            r.node.clone(),
            r.cpu_percent.map_or_else(|| "-".to_string(), format_percent),
            format_cpu(r.cpu_request),
            r.memory.map_or_else(|| "-".to_string(), memory),
            memory(r.memory_limit),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn cpu_is_seconds_gained_per_second_of_one_core() {
        assert_eq!(cpu_percent(10.0, 10.5, 0.5), Some(100.0));
        assert_eq!(cpu_percent(10.0, 10.25, 1.0), Some(25.0));
        assert_eq!(cpu_percent(3.0, 3.0, 1.0), Some(0.0));
        // Restarted within the interval: the new counter is what it used.
        assert_eq!(cpu_percent(10.0, 0.5, 1.0), Some(50.0));
        assert_eq!(cpu_percent(1.0, 2.0, 0.0), None);
        assert_eq!(format_percent(97.26), "97%");
        assert_eq!(format_percent(0.44), "0.4%");
    }

    #[test]
    fn busiest_first_with_request_and_limit() {
        let replica = |id: &str, deployment: &str, node: Option<&str>, state: &str| -> Replica {
            serde_json::from_value(serde_json::json!({
                "id": id, "deployment": deployment, "revision": 1, "node": node, "state": state,
                "generation": 1, "restarts": 0, "reason": null, "exit_code": null,
                "created_ms": 1, "updated_ms": 1,
            }))
            .expect("replica")
        };
        let replicas = [
            replica("web-a", "web", Some("n1"), "ready"),
            replica("spin-b", "spin", Some("n2"), "running"),
            replica("web-c", "web", Some("n2"), "running"),
            replica("web-d", "web", None, "pending"),
            replica("spin-e", "spin", Some("n1"), "starting"),
        ];
        let resources: HashMap<String, Resources> =
            [("web".to_string(), Resources::new(50, 32 << 20)), ("spin".to_string(), Resources::new(1000, 64 << 20))]
                .into();
        let before: Usage = [("web-a", (1.0, 0)), ("spin-b", (4.0, 0)), ("web-c", (2.0, 0))]
            .into_iter()
            .map(|(id, u)| (id.to_string(), u))
            .collect();
        let after: Usage = [("web-a", (1.004, 9 << 20)), ("spin-b", (5.98, 3_500_000)), ("web-c", (2.0, 12 << 20))]
            .into_iter()
            .map(|(id, u)| (id.to_string(), u))
            .collect();
        let rows = rows(&replicas, &resources, &before, &after, 2.0);
        expect![[r#"
            REPLICA   DEPLOYMENT   NODE   CPU    CPU REQUEST   MEMORY   MEMORY LIMIT
            spin-b    spin         n2     99%    1             3.3Mi    64Mi
            web-a     web          n1     0.2%   50m           9Mi      32Mi
            web-c     web          n2     0.0%   50m           12Mi     32Mi
            spin-e    spin         n1     -      1             -        64Mi
        "#]]
        .assert_eq(&table(&rows).render(""));
    }
}
