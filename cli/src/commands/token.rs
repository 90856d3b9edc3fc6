//! `skiff token create|ls|rm`: API tokens.

use crate::output::{self, Table};
use clap::{Args, Subcommand};
use skiff_api::{Client, TokenRequest, TokenRole};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make an API token and print it (it is shown only this once)
    Create {
        /// Only reads: list, describe, logs, events, metrics
        #[arg(long)]
        read_only: bool,
        /// Its name [default: token-N]
        #[arg(long)]
        name: Option<String>,
    },
    /// List the API tokens (names and roles; never the tokens)
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke an API token
    #[command(visible_alias = "delete")]
    Rm {
        /// The token's name
        name: String,
    },
}

pub async fn token(args: TokenArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create { read_only, name } => {
            let role = if read_only { TokenRole::ReadOnly } else { TokenRole::Admin };
            let made = client.create_token(&TokenRequest { name, role }).await?;
            eprintln!("{} token {} made; it is shown only now:", made.info.role, made.info.name);
            println!("{}", made.token);
            Ok(())
        }
        TokenCommand::Ls => {
            let mut table = Table::new(&["NAME", "ROLE", "AGE"]);
            for t in client.tokens().await? {
                table.row(vec![t.name, t.role.to_string(), output::age(t.created_ms)]);
            }
            table.print();
            Ok(())
        }
        TokenCommand::Rm { name } => {
            client.delete_token(&name).await?;
            println!("token {name} revoked");
            Ok(())
        }
    }
}
