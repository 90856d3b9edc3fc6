//! `skiff node cordon|uncordon|drain` and `skiff rebalance`: taking a node out
//! of service and spreading replicas again. The scheduler does the work (a
//! drain is kept on the node and carried on by its controllers); the CLI asks,
//! then follows the node until it is empty.

use super::parse_duration;
use anyhow::bail;
use clap::Args;
use skiff_api::{Client, Node};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node's name
    pub name: String,
    /// Give up waiting after this long (5m, 90s), exiting non-zero with what is
    /// left; the drain itself goes on in the scheduler [default: wait until done]
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Also stop the replicas that cannot move (a volume on this node,
    /// constraints no other node meets)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// Only this deployment [default: every deployment]
    pub name: Option<String>,
}

/// `1 replica`, `3 replicas`.
fn replicas(n: u32) -> String {
    if n == 1 { "1 replica".into() } else { format!("{n} replicas") }
}

/// How often the drain's progress is read.
const POLL: Duration = Duration::from_millis(500);

pub async fn cordon(name: &str, on: bool, client: &Client) -> anyhow::Result<()> {
    let n = client.cordon(name, on).await?;
    if on {
        println!("node {name} cordoned: it takes no new replicas; its {} keep running", replicas(n.replicas));
    } else {
        println!("node {name} uncordoned: it takes new replicas");
    }
    Ok(())
}

/// One line for where a drain stands.
fn progress(n: &Node) -> String {
    match &n.drain {
        Some(d) if !d.message.is_empty() => d.message.clone(),
        Some(d) => format!("{} left", replicas(d.remaining)),
        None => "not draining (uncordoned meanwhile?)".into(),
    }
}

pub async fn drain(args: DrainArgs, client: &Client) -> anyhow::Result<()> {
    let name = args.name.clone();
    let n = client.drain(&name, args.force).await?;
    tokio::select! {
        res = follow(args, n, client) => res,
        _ = tokio::signal::ctrl_c() => {
            // The drain is the scheduler's: it goes on without this process.
            bail!("stopped waiting; the drain of node {name} goes on in the scheduler (`skiff describe node {name}` follows it, `skiff node uncordon {name}` ends it)")
        }
    }
}

/// Prints the drain's progress until node `n` is empty, or what is left when
/// it cannot get there.
async fn follow(args: DrainArgs, mut n: Node, client: &Client) -> anyhow::Result<()> {
    let name = &args.name;
    println!(
        "node {name} cordoned; draining its {}{}",
        replicas(n.replicas),
        if args.force { " (forced)" } else { "" }
    );
    let start = Instant::now();
    let mut said = String::new();
    let mut stuck_said: Vec<String> = Vec::new();
    loop {
        let Some(d) = n.drain.clone() else {
            bail!("the drain of node {name} ended: the node was uncordoned meanwhile");
        };
        let line = progress(&n);
        if line != said {
            println!("  {line}");
            said = line;
        }
        if d.stuck != stuck_said {
            for s in d.stuck.iter().filter(|s| !stuck_said.contains(s)) {
                println!("  cannot move: {s}");
            }
            stuck_said = d.stuck.clone();
        }
        if d.done {
            println!("node {name} drained in {:.1}s: it holds no replica", start.elapsed().as_secs_f64());
            return Ok(());
        }
        let only_stuck = d.remaining as usize == d.stuck.len() && !d.force;
        let timed_out = args.timeout.is_some_and(|t| start.elapsed() >= t);
        if timed_out || (only_stuck && args.timeout.is_none()) {
            let when = match args.timeout {
                Some(t) if timed_out => format!("after {}", humantime::format_duration(t)),
                _ => "now".into(),
            };
            let what = if d.stuck.is_empty() {
                format!("{} left ({})", replicas(d.remaining), d.message)
            } else {
                let mut w = format!(
                    "{} left, {} that cannot move: {}",
                    replicas(d.remaining),
                    d.stuck.len(),
                    d.stuck.join("; ")
                );
                w.push_str("; `skiff node drain --force` stops them");
                w
            };
            bail!(
                "node {name} is not drained {when}: {what} (the node stays cordoned; the scheduler goes on moving what can move)"
            );
        }
        tokio::time::sleep(POLL).await;
        n = client.node(name).await?;
    }
}

pub async fn rebalance(args: RebalanceArgs, client: &Client) -> anyhow::Result<()> {
    let r = client.rebalance(args.name.as_deref()).await?;
    if r.uneven.is_empty() {
        match &args.name {
            Some(d) => println!("deployment {d} is spread as evenly as its nodes allow; nothing to move"),
            None => println!("every deployment is spread as evenly as its nodes allow; nothing to move"),
        }
        return Ok(());
    }
    for (d, why) in &r.uneven {
        println!("deployment {d}: {why}; moving its replicas one at a time, the replacement first");
    }
    println!("`skiff events` shows each move");
    Ok(())
}
