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
        /// Its name [default: token-N]
        #[arg(value_name = "NAME")]
        positional: Option<String>,
        /// Only reads: list, describe, logs, events, metrics (same as --role read)
        #[arg(long, conflicts_with = "role")]
        read_only: bool,
        /// What it may do: read (objects, logs, events), deploy (also deployments, scaling, rollouts,
        /// secrets, volumes), admin (also, in a namespace, its tokens and quota) [default: admin].
        /// The namespace is the global -n/--namespace: without one the token is cluster-wide ('*')
        #[arg(long, value_parser = ["read", "deploy", "admin"])]
        role: Option<String>,
        /// Its name [default: token-N]
        #[arg(long, conflicts_with = "positional")]
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

/// `namespace`: the global -n/--namespace as given (None: cluster-wide).
pub async fn token(args: TokenArgs, client: &Client, namespace: Option<String>) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create { positional, read_only, role, name } => {
            let role = match (read_only, role.as_deref()) {
                (true, _) | (_, Some("read")) => TokenRole::ReadOnly,
                (_, Some("deploy")) => TokenRole::Deploy,
                _ => TokenRole::Admin,
            };
            let req = TokenRequest { name: positional.or(name), role, namespace };
            let made = client.create_token(&req).await?;
            let scope = match made.info.namespace.as_str() {
                "*" => "cluster-wide".to_string(),
                ns => format!("namespace {ns}"),
            };
            eprintln!("{} token {} ({scope}) made; it is shown only now:", made.info.role, made.info.name);
            println!("{}", made.token);
            Ok(())
        }
        TokenCommand::Ls => {
            let mut table = Table::new(&["NAME", "ROLE", "NAMESPACE", "AGE"]);
            for t in client.tokens().await? {
                table.row(vec![t.name, t.role.to_string(), t.namespace, output::age(t.created_ms)]);
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
