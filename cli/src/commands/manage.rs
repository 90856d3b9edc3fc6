//! `skiff scale`, `skiff delete` and `skiff logs`.

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use skiff_api::Client;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The deployment
    name: String,
    /// The new replica count
    replicas: u32,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The deployment (or `job NAME`, `cron NAME`)
    name: String,
    /// With `job` or `cron` first: its name
    second: Option<String>,
    /// Also delete the volumes it mounts (that no other deployment mounts), data and all
    #[arg(long)]
    purge_volumes: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The deployment, or job/NAME for a job's runs (each line after its index)
    name: String,
    /// job/NAME: only this index's runs
    #[arg(long)]
    index: Option<u32>,
    /// Only this replica's lines
    #[arg(long)]
    replica: Option<String>,
    /// Keep printing new lines as they come (Ctrl-C to stop)
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of each replica
    #[arg(long)]
    tail: Option<u32>,
}

pub async fn scale(args: ScaleArgs, client: &Client) -> anyhow::Result<()> {
    if args.replicas > skiff_api::manifest::MAX_REPLICAS {
        anyhow::bail!("replicas must be at most {}, got {}", skiff_api::manifest::MAX_REPLICAS, args.replicas);
    }
    let d = client.scale(&args.name, args.replicas).await?;
    println!("deployment {} scaled to {} replicas", d.name, d.replicas);
    Ok(())
}

pub async fn delete(args: DeleteArgs, client: &Client) -> anyhow::Result<()> {
    let args = match (args.name.as_str(), args.second.clone()) {
        ("job" | "jobs", Some(name)) => {
            client.delete_job(&name).await?;
            println!("job {name} deleted");
            return Ok(());
        }
        ("cron" | "crons", Some(name)) => {
            client.delete_cron(&name).await?;
            println!("cron {name} deleted");
            return Ok(());
        }
        ("deployment" | "deployments" | "deploy", Some(name)) => DeleteArgs { name, second: None, ..args },
        (_, Some(extra)) => {
            anyhow::bail!("unexpected {extra:?}; write `skiff delete NAME` or `skiff delete job|cron NAME`")
        }
        (_, None) => args,
    };
    if args.purge_volumes {
        client.delete_purging_volumes(&args.name).await?;
        println!("deployment {} deleted with its volumes", args.name);
    } else {
        client.delete(&args.name).await?;
        println!("deployment {} deleted", args.name);
    }
    Ok(())
}

pub async fn logs(args: LogsArgs, client: &Client) -> anyhow::Result<()> {
    if let Some(job) = args.name.strip_prefix("job/") {
        return super::job::logs(client, job, args.index, args.follow, args.tail).await;
    }
    if args.index.is_some() {
        anyhow::bail!("--index is for a job's runs: skiff logs job/NAME --index N");
    }
    let stream = client.logs(&args.name, args.replica.as_deref(), args.follow, args.tail).await?;
    tokio::pin!(stream);
    let copy = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the log stream broke off")?;
            // A blocking write is fine here: the CLI does nothing else meanwhile.
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(&chunk).and_then(|()| stdout.flush()).is_err() {
                // stdout closed (`skiff logs x | head`): nothing left to do.
                return Ok(());
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        res = copy => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
