//! `skiff rollout status|history|undo|pause|resume`: follow and steer the rolling
//! update of a deployment.

use super::parse_duration;
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
    }
}

/// Prints progress lines until the rollout completes (exit 0), is rolled back or
/// fails (an error), or `timeout` passes.
async fn status(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
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
        let line = match d.rollout.state {
            RolloutState::Complete => {
                println!("deployment {name}: revision {} rolled out ({new} of {} running)", d.revision, d.replicas);
                return Ok(());
            }
            RolloutState::RolledBack => bail!("deployment {name}: {}", d.rollout.message),
            RolloutState::Failed => bail!("deployment {name}: {}", d.rollout.message),
            RolloutState::Progressing if d.rollout.paused => {
                format!("rollout of revision {} paused: {new} new and {old} old running", d.revision)
            }
            RolloutState::Progressing => format!(
                "waiting for revision {}: {new} of {} new replicas running, {old} old still running",
                d.revision, d.replicas
            ),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if start.elapsed() > timeout {
            bail!("deployment {name}: rollout not finished after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
