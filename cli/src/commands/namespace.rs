//! `skiff namespace create|set-quota|ls|describe|rm` (#20).

use crate::output::{Table, age};
use anyhow::Context;
use clap::{Args, Subcommand};
use skiff_api::Client;
use skiff_api::namespace::{Isolation, Namespace, NamespaceRequest, Quota};
use skiff_api::quantity::{Cpu, Memory};

#[derive(Debug, Args)]
pub struct NamespaceArgs {
    #[command(subcommand)]
    command: NamespaceCommand,
}

/// A namespace's limits, as flags; a limit not given is none (create) or
/// unchanged (set-quota).
#[derive(Debug, Args, Default)]
struct QuotaFlags {
    /// CPU of all its replicas together (4, 2500m)
    #[arg(long)]
    cpu: Option<String>,
    /// Memory of all its replicas together (8Gi)
    #[arg(long)]
    memory: Option<String>,
    /// Replicas of all its deployments together
    #[arg(long)]
    replicas: Option<u64>,
    /// Deployments
    #[arg(long)]
    deployments: Option<u64>,
    /// Volumes
    #[arg(long)]
    volumes: Option<u64>,
    /// Whom its workloads may call through the ingress: none (anyone) or namespace (its own only)
    #[arg(long, value_parser = ["none", "namespace"])]
    isolation: Option<String>,
}

impl QuotaFlags {
    fn apply(&self, mut q: Quota) -> anyhow::Result<Quota> {
        if let Some(c) = &self.cpu {
            q.cpu = Some(c.parse::<Cpu>().with_context(|| format!("--cpu {c}"))?);
        }
        if let Some(m) = &self.memory {
            q.memory = Some(m.parse::<Memory>().with_context(|| format!("--memory {m}"))?);
        }
        q.replicas = self.replicas.or(q.replicas);
        q.deployments = self.deployments.or(q.deployments);
        q.volumes = self.volumes.or(q.volumes);
        Ok(q)
    }

    fn isolation(&self) -> Option<Isolation> {
        self.isolation.as_deref().map(|i| if i == "namespace" { Isolation::Namespace } else { Isolation::None })
    }
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// Make a namespace, with its quota
    Create {
        /// Its name (a DNS label)
        name: String,
        #[command(flatten)]
        quota: QuotaFlags,
    },
    /// Change a namespace's quota (the limits given; the others stay) or isolation
    SetQuota {
        /// The namespace
        name: String,
        #[command(flatten)]
        quota: QuotaFlags,
    },
    /// List namespaces with their use and quota
    #[command(visible_alias = "list")]
    Ls,
    /// Show a namespace's quota, use and isolation
    Describe {
        /// The namespace
        name: String,
    },
    /// Delete a namespace; refused while it holds objects, unless --cascade
    #[command(visible_alias = "delete")]
    Rm {
        /// The namespace
        name: String,
        /// Delete its deployments, secrets and volumes too
        #[arg(long)]
        cascade: bool,
    },
}

fn used(used: String, limit: Option<String>) -> String {
    match limit {
        Some(l) => format!("{used}/{l}"),
        None => used,
    }
}

fn row(n: &Namespace) -> Vec<String> {
    let (u, q) = (&n.usage, &n.quota);
    vec![
        n.name.clone(),
        used(u.deployments.to_string(), q.deployments.map(|v| v.to_string())),
        used(u.replicas.to_string(), q.replicas.map(|v| v.to_string())),
        used(u.cpu.to_string(), q.cpu.map(|v| v.to_string())),
        used(u.memory.to_string(), q.memory.map(|v| v.to_string())),
        used(u.volumes.to_string(), q.volumes.map(|v| v.to_string())),
        if n.isolation == Isolation::Namespace { "namespace" } else { "none" }.to_string(),
        if n.created_ms == 0 { "-".to_string() } else { age(n.created_ms) },
    ]
}

const HEADER: [&str; 8] = ["NAME", "DEPLOYMENTS", "REPLICAS", "CPU", "MEMORY", "VOLUMES", "ISOLATION", "AGE"];

pub async fn namespace(args: NamespaceArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        NamespaceCommand::Create { name, quota } => {
            let req = NamespaceRequest { quota: Some(quota.apply(Quota::default())?), isolation: quota.isolation() };
            let n = client.put_namespace(&name, &req).await?;
            println!("namespace {} created", n.name);
        }
        NamespaceCommand::SetQuota { name, quota } => {
            let current = client.get_namespace(&name).await?;
            let req = NamespaceRequest { quota: Some(quota.apply(current.quota)?), isolation: quota.isolation() };
            let n = client.put_namespace(&name, &req).await?;
            println!("namespace {} quota set", n.name);
        }
        NamespaceCommand::Ls => {
            let mut t = Table::new(&HEADER);
            for n in client.namespaces().await? {
                t.row(row(&n));
            }
            t.print();
        }
        NamespaceCommand::Describe { name } => {
            let n = client.get_namespace(&name).await?;
            let (u, q) = (&n.usage, &n.quota);
            let limit = |v: Option<String>| v.unwrap_or_else(|| "none".into());
            println!("Name:       {}", n.name);
            println!("Isolation:  {}", if n.isolation == Isolation::Namespace { "namespace" } else { "none" });
            println!("Resource     Used   Quota");
            println!("deployments  {:<6} {}", u.deployments, limit(q.deployments.map(|v| v.to_string())));
            println!("replicas     {:<6} {}", u.replicas, limit(q.replicas.map(|v| v.to_string())));
            println!("cpu          {:<6} {}", u.cpu, limit(q.cpu.map(|v| v.to_string())));
            println!("memory       {:<6} {}", u.memory, limit(q.memory.map(|v| v.to_string())));
            println!("volumes      {:<6} {}", u.volumes, limit(q.volumes.map(|v| v.to_string())));
        }
        NamespaceCommand::Rm { name, cascade } => {
            client.delete_namespace(&name, cascade).await?;
            println!("namespace {name} deleted");
        }
    }
    Ok(())
}
