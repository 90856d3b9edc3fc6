//! `skiff registry login|logout|ls`: credentials for private registries. The
//! scheduler seals them like secrets and sends one only to a node that pulls
//! an image from its host; nothing here prints a password.

use crate::output::{self, Table};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use skiff_api::{Client, RegistryLogin};
use std::io::Read;

#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Store the credential nodes pull images from HOST with (basic auth, or
    /// a bearer token from the registry's token server)
    Login(LoginArgs),
    /// Forget the credential of HOST
    Logout {
        /// The registry host, as image references name it
        host: String,
    },
    /// List the registries with a stored credential (hosts and users)
    #[command(visible_alias = "list")]
    Ls,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The registry host as image references name it: registry.example.com,
    /// localhost:5000
    host: String,
    /// The user to pull as
    #[arg(long, short = 'u')]
    username: String,
    /// Read the password (or access token) from standard input: it never
    /// appears in the shell's history or the process list
    #[arg(long)]
    password_stdin: bool,
}

pub async fn registry(args: RegistryArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        RegistryCommand::Login(a) => login(a, client).await,
        RegistryCommand::Logout { host } => {
            client.registry_logout(&host).await?;
            println!("registry {host}: credential removed");
            Ok(())
        }
        RegistryCommand::Ls => {
            let mut table = Table::new(&["HOST", "USER", "AGE", "UPDATED"]);
            for r in client.registries().await? {
                table.row(vec![r.host, r.username, output::age(r.created_ms), output::age(r.updated_ms)]);
            }
            table.print();
            Ok(())
        }
    }
}

async fn login(args: LoginArgs, client: &Client) -> anyhow::Result<()> {
    if !args.password_stdin {
        bail!(
            "give the password on standard input with --password-stdin (a password flag would show in the process list)"
        );
    }
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password).context("cannot read the password from standard input")?;
    // `echo secret | skiff registry login` ends it with a newline that is no part of it.
    let password = password.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&password);
    if password.is_empty() {
        bail!("standard input held no password");
    }
    let req = RegistryLogin { username: args.username, password: password.to_string() };
    let r = client.registry_login(&args.host, &req).await?;
    println!(
        "registry {}: credential for user {} stored; nodes pulling from it get it with their assignments",
        r.host, r.username
    );
    Ok(())
}
