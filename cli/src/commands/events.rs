//! `skiff events [-f] [--object KIND/NAME]`: what the controllers decided and why.

use crate::output::{Format, Table, age, print_encoded};
use anyhow::{Context, bail};
use clap::Args;
use skiff_api::{Client, Event};
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// How long one follow request waits on the server for news.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events about this object: deployment/NAME, node/NAME, job/NAME or cron/NAME
    #[arg(long)]
    object: Option<String>,
    /// Keep printing new events as they happen (Ctrl-C to stop)
    #[arg(short = 'f', long)]
    follow: bool,
    /// How many past events to print first
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Output format (json and yaml print the API objects; with -f, json prints one per line)
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

pub async fn events(args: EventsArgs, client: &Client) -> anyhow::Result<()> {
    if let Some(o) = &args.object {
        match o.split_once('/') {
            Some(("deployment" | "node" | "job" | "cron", name)) if !name.is_empty() => {}
            _ => bail!("--object {o:?} must be deployment/NAME, node/NAME, job/NAME or cron/NAME"),
        }
    }
    if args.follow && args.output == Format::Yaml {
        bail!("-f prints events as they come: use -o table or -o json (one object per line)");
    }
    let mut past = client.events(args.object.as_deref()).await.context("listing events")?;
    let skip = past.len().saturating_sub(args.limit);
    past.drain(..skip);
    let mut last = past.last().map(|e| e.id).unwrap_or(0);
    if !args.follow {
        match args.output {
            Format::Table => {
                if past.is_empty() {
                    println!("no events");
                } else {
                    table(&past).print();
                }
            }
            other => print_encoded(other, &past)?,
        }
        return Ok(());
    }

    print_stream(&past, args.output)?;
    let follow = async {
        loop {
            let news = client
                .events_after(args.object.as_deref(), last, FOLLOW_WAIT)
                .await
                .context("following events (the server went away?)")?;
            if let Some(e) = news.last() {
                last = e.id;
            }
            if !print_stream(&news, args.output)? {
                return Ok(()); // stdout closed (`skiff events -f | head`)
            }
        }
    };
    tokio::select! {
        res = follow => res,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn table(events: &[Event]) -> Table {
    let mut t = Table::new(&["AGE", "OBJECT", "REASON", "MESSAGE"]);
    for e in events {
        t.row(vec![age(e.time_ms), e.object.clone(), e.reason.clone(), e.message.clone()]);
    }
    t
}

/// Prints events one line each (a table cannot align what has not come yet);
/// false once stdout is closed.
fn print_stream(events: &[Event], format: Format) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    for e in events {
        let line = match format {
            Format::Json => serde_json::to_string(e)?,
            _ => {
                let when = UNIX_EPOCH + Duration::from_millis(e.time_ms);
                format!("{}  {:<28} {:<14} {}", humantime::format_rfc3339_seconds(when), e.object, e.reason, e.message)
            }
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
