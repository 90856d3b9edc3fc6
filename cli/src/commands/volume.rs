//! `skiff volume ls|rm`: named node-local volumes.

use crate::output::{self, Table};
use clap::{Args, Subcommand};
use skiff_api::Client;

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// List volumes, the node holding each and who mounts it
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a volume no deployment mounts, and its data on its node
    #[command(visible_alias = "delete")]
    Rm {
        /// The volume's name
        name: String,
    },
}

pub async fn volume(args: VolumeArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        VolumeCommand::Ls => {
            let mut table = Table::new(&["NAME", "NODE", "SIZE", "MOUNTED BY", "AGE"]);
            for v in client.volumes().await? {
                table.row(vec![
                    v.name,
                    output::or_dash(v.node.as_deref()),
                    v.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    if v.deployments.is_empty() { "-".into() } else { v.deployments.join(",") },
                    output::age(v.created_ms),
                ]);
            }
            table.print();
            Ok(())
        }
        VolumeCommand::Rm { name } => {
            client.delete_volume(&name).await?;
            println!("volume {name} deleted");
            Ok(())
        }
    }
}
