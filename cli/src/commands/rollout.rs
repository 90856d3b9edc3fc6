//! `skiff rollout status|history|undo|pause|resume|promote|abort`: follow and
//! steer the rolling update or canary of a deployment.

use super::{parse_duration, wait};
use crate::output::{self, Table};
use anyhow::bail;
use clap::{Args, Subcommand};
use skiff_api::{Client, ReplicaState, RolloutState};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Wait for the rollout to finish; exit non-zero if it failed or was rolled back
    Status {
        /// The deployment
        name: String,
        /// How long to wait
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the deployment's revisions
    History {
        /// The deployment
        name: String,
    },
    /// Roll back to the previous revision, or to --to-revision
    Undo {
        /// The deployment
        name: String,
        /// The revision to go back to
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Stop creating and stopping replicas for the rollout
    Pause {
        /// The deployment
        name: String,
    },
    /// Carry on with a paused rollout
    Resume {
        /// The deployment
        name: String,
    },
    /// Promote a canary now: skip its remaining steps (and any manual pause)
    Promote {
        /// The deployment
        name: String,
    },
    /// Abort a canary: no more requests to it, its replicas stop, the stable revision stays
    Abort {
        /// The deployment
        name: String,
    },
}

pub async fn rollout(args: RolloutArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        RolloutCommand::Status { name, timeout } => status(client, &name, timeout).await,
        RolloutCommand::History { name } => {
            let mut table = Table::new(&["REVISION", "CURRENT", "WORKLOAD", "RESOURCES", "ENV"]);
            for r in client.revisions(&name).await? {
                table.row(vec![
                    r.revision.to_string(),
                    if r.current { "*".into() } else { String::new() },
                    output::short_workload(&r.spec.workload),
                    output::resources(r.spec.resources),
                    output::map_list(&r.spec.env),
                ]);
            }
            table.print();
            Ok(())
        }
        RolloutCommand::Undo { name, to_revision } => {
            let d = client.rollback(&name, to_revision).await?;
            println!("deployment {name} rolling back to revision {}", d.revision);
            Ok(())
        }
        RolloutCommand::Pause { name } => {
            client.pause(&name, true).await?;
            println!("deployment {name} rollout paused");
            Ok(())
        }
        RolloutCommand::Resume { name } => {
            client.pause(&name, false).await?;
            println!("deployment {name} rollout resumed");
            Ok(())
        }
        RolloutCommand::Promote { name } => {
            let d = client.canary(&name, "promote").await?;
            println!("deployment {name}: revision {} promoted; it takes all requests once at full count", d.revision);
            Ok(())
        }
        RolloutCommand::Abort { name } => {
            let d = client.canary(&name, "abort").await?;
            println!("deployment {name}: canary aborted; revision {} serves", d.revision);
            Ok(())
        }
    }
}

/// One line of a canary under way: its step, weight and both revisions' figures.
pub fn canary_line(d: &skiff_api::Deployment) -> Option<String> {
    let c = d.rollout.canary.as_ref()?;
    let steps = d.strategy.canary.as_ref().map_or(0, |s| s.steps.len());
    let fig = |f: &skiff_api::RevisionFigures| {
        if f.requests == 0 {
            format!("revision {}: no requests judged yet", f.revision)
        } else {
            format!(
                "revision {}: {:.1}% errors over {} requests, p99 {} ms",
                f.revision,
                f.error_rate() * 100.0,
                f.requests,
                f.p99_ms
            )
        }
    };
    let at = if c.promoted {
        "promoted".to_string()
    } else if c.step_started_ms == 0 {
        format!("step {}/{steps} starting", c.step + 1)
    } else {
        format!("step {}/{steps}", c.step + 1)
    };
    Some(format!("canary {at}, weight {}%; {}; {}", c.weight, fig(&c.canary), fig(&c.stable)))
}

/// Prints progress lines until the rollout completes (exit 0), is rolled back or
/// fails (an error, with the reason), or `timeout` passes. Complete means what
/// `deploy --wait` means (see `wait`): the revision's replicas up for a moment
/// with none failing, and for a deployment that serves, ready and routed.
async fn status(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    let mut watch = wait::Watch::default();
    let mut up_since: Option<Instant> = None;
    loop {
        let d = client.deployment(name).await?;
        let replicas = client.replicas(Some(name), None).await?;
        let running = |current: bool| {
            replicas
                .iter()
                .filter(|r| (r.revision == d.revision) == current)
                .filter(|r| matches!(r.state, ReplicaState::Running | ReplicaState::Ready))
                .count()
        };
        let (new, old) = (running(true), running(false));
        // Without the Wasm file at hand, a replica that was ever ready says the
        // workload serves (a Wasm command never is).
        let serves = wait::serves(&d.spec, replicas.iter().any(|r| r.state == ReplicaState::Ready));
        let target =
            wait::Target { name, revision: d.revision, want: d.replicas, serves, since_ms: d.rollout.started_ms };
        let line = match d.rollout.state {
            RolloutState::RolledBack | RolloutState::Failed => {
                bail!("deployment {name}: rollout {}: {}", d.rollout.state, d.rollout.message)
            }
            RolloutState::Complete => {
                let look = watch.look(client, &target).await?;
                if look.up >= d.replicas {
                    let since = *up_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= wait::SETTLE || d.replicas == 0 {
                        println!(
                            "deployment {name}: revision {} rolled out ({} of {} {})",
                            d.revision,
                            look.up,
                            d.replicas,
                            target.up()
                        );
                        return Ok(());
                    }
                } else {
                    up_since = None;
                }
                format!("revision {}: {} of {} replicas {}", d.revision, look.up, d.replicas, target.up())
            }
            RolloutState::Progressing if d.rollout.paused => {
                format!("rollout of revision {} paused: {new} new and {old} old running", d.revision)
            }
            // A new replica that fails during an update is the scheduler's to
            // judge: it rolls the revision back (or marks it failed) by its
            // deadline. A first revision has nothing to go back to: its failing
            // replica is the answer now, as for `deploy --wait`.
            RolloutState::Progressing if d.rollout.canary.is_some() => {
                format!("{}; {new} new and {old} old running", canary_line(&d).unwrap_or_default())
            }
            RolloutState::Progressing => {
                if d.rollout.from_revision == 0 {
                    watch.look(client, &target).await?;
                }
                format!(
                    "waiting for revision {}: {new} of {} new replicas running, {old} old still running",
                    d.revision, d.replicas
                )
            }
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if tokio::time::Instant::now() >= deadline || start.elapsed() > timeout {
            bail!("deployment {name}: rollout not finished after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
