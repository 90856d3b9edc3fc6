//! One module per group of subcommands.

pub mod daemons;
pub mod deploy;
pub mod events;
pub mod exec;
pub mod get;
pub mod image;
pub mod job;
pub mod manage;
pub mod namespace;
pub mod node;
pub mod registry;
pub mod rollout;
pub mod run;
pub mod secret;
pub mod token;
pub mod top;
pub mod volume;
pub mod wait;

use anyhow::{Context, bail};
use std::collections::BTreeMap;

/// Parses `K=V` (the value may itself hold `=`).
pub fn parse_key_value(flag: &str, input: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = input.split_once('=') else {
        bail!("{flag} {input:?} must be written KEY=VALUE");
    };
    let k = k.trim();
    if k.is_empty() {
        bail!("{flag} {input:?} has an empty key; write KEY=VALUE");
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses repeated `k=v` flags, each possibly a comma-separated list, into a map.
pub fn parse_labels(flag: &str, inputs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for input in inputs {
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = parse_key_value(flag, part)?;
            out.insert(k, v.trim().to_string());
        }
    }
    Ok(out)
}

/// Parses `--env K=V` flags, checking each name.
pub fn parse_env(inputs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for input in inputs {
        let (k, v) = parse_key_value("--env", input)?;
        skiff_api::manifest::validate_env_key(&k).map_err(anyhow::Error::msg).context("--env")?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Parses a duration as people write it: `500ms`, `3s`, `1m`.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(input.trim())
        .map_err(|e| format!("invalid duration {input:?}: {e}; write it like 500ms, 3s or 1m"))
}
