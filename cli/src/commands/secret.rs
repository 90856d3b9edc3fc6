//! `skiff secret create|ls|rm`: secrets are sent to the scheduler, which seals
//! them at rest; nothing here ever prints a value.

use super::parse_key_value;
use crate::output::{self, Table};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use skiff_api::{Client, SecretRequest};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Create a secret from literal values and files
    Create(CreateArgs),
    /// List secrets and their keys (never their values)
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a secret no deployment uses
    #[command(visible_alias = "delete")]
    Rm {
        /// The secret's name
        name: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The secret's name (lowercase letters, digits and '-')
    name: String,
    /// A key and its value, KEY=VALUE (repeatable)
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    literal: Vec<String>,
    /// A key and a file holding its value (UTF-8), KEY=PATH (repeatable)
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    file: Vec<String>,
    /// Replace the values of an existing secret (running replicas see them after a restart)
    #[arg(long)]
    overwrite: bool,
}

pub async fn secret(args: SecretArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        SecretCommand::Create(a) => create(a, client).await,
        SecretCommand::Ls => {
            let mut table = Table::new(&["NAME", "KEYS", "AGE", "UPDATED"]);
            for s in client.secrets().await? {
                table.row(vec![s.name, s.keys.join(","), output::age(s.created_ms), output::age(s.updated_ms)]);
            }
            table.print();
            Ok(())
        }
        SecretCommand::Rm { name } => {
            client.delete_secret(&name).await?;
            println!("secret {name} deleted");
            Ok(())
        }
    }
}

async fn create(a: CreateArgs, client: &Client) -> anyhow::Result<()> {
    skiff_api::manifest::validate_name(&a.name).map_err(anyhow::Error::msg).context("secret name")?;
    let mut data = BTreeMap::new();
    for l in &a.literal {
        let (k, v) = parse_key_value("--from-literal", l)?;
        if data.insert(k.clone(), v).is_some() {
            bail!("key {k} is given twice");
        }
    }
    for f in &a.file {
        let (k, path) = parse_key_value("--from-file", f)?;
        let path = PathBuf::from(path);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {} for key {k}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text; secrets hold text values", path.display()))?;
        if data.insert(k.clone(), text).is_some() {
            bail!("key {k} is given twice");
        }
    }
    if data.is_empty() {
        bail!("give the secret at least one key: --from-literal KEY=VALUE or --from-file KEY=PATH");
    }
    let s = client.put_secret(&a.name, &SecretRequest { data, overwrite: a.overwrite }).await?;
    let verb = if s.created_ms == s.updated_ms { "created" } else { "updated" };
    println!("secret {} {verb} with keys {}", s.name, s.keys.join(", "));
    Ok(())
}
