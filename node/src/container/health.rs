//! Health checks of a running container: an HTTP GET or a TCP connection to its
//! address on the bridge, or a command run in it (`runc exec`) that must exit 0.
//! The timing and thresholds are [`crate::probes::watch`]'s.

use super::oci::Oci;
use skiff_api::Probe;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one check of `probe` against container `id` at `address`.
pub async fn check(oci: &Oci, id: &str, address: Option<IpAddr>, probe: &Probe) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1).into());
    let at = |port: u16| -> Result<SocketAddr, String> {
        address.map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| {
            "the container has no address (the node runs containers with loopback networking only); \
             use an exec probe"
                .to_string()
        })
    };
    if let Some(h) = &probe.http {
        let port = h.port.ok_or("an http probe of a container needs a port")?;
        let addr = at(port)?;
        return match tokio::time::timeout(timeout, get(addr, &h.path)).await {
            Ok(Ok(status)) if status == h.status => Ok(()),
            Ok(Ok(status)) => Err(format!("GET {addr}{} answered {status}, expected {}", h.path, h.status)),
            Ok(Err(e)) => Err(format!("GET {addr}{} failed: {e}", h.path)),
            Err(_) => Err(format!("GET {addr}{} took longer than {timeout:?}", h.path)),
        };
    }
    if let Some(t) = &probe.tcp {
        let addr = at(t.port)?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
            Err(_) => Err(format!("connecting to {addr} took longer than {timeout:?}")),
        };
    }
    if let Some(cmd) = &probe.exec {
        if cmd.is_empty() {
            return Err("an exec probe needs a command".into());
        }
        let mut c = tokio::process::Command::new(&oci.bin);
        c.arg("--root").arg(&oci.root).arg("exec").arg(id).args(cmd);
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        c.stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let shown = cmd.join(" ");
        return match tokio::time::timeout(timeout, c.output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(format!("{shown} exited with {}", out.status.code().unwrap_or(-1))),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", oci.bin.display())),
            Err(_) => Err(format!("{shown} took longer than {timeout:?}")),
        };
    }
    Err("the probe has no http, tcp or exec check".into())
}

/// GETs `path` from `addr` over HTTP/1.0 and returns the status code.
async fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: skiff-probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    // The status line is all a probe needs.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.chars().take(60).collect::<String>()))
}
