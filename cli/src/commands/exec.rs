//! `skiff exec` and `skiff port-forward`: streams to a replica through the
//! scheduler's relay (`skiff_api::relay`), never to the node directly.

use anyhow::{Context, bail};
use clap::Args;
use skiff_api::relay::{ExecRequest, Frame, percent_encode};
use skiff_api::{Client, ClientError};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The replica (`skiff get replicas` lists them), or a deployment: one of its running replicas
    replica: String,
    /// Pass this terminal's (or pipe's) stdin to the command
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Run the command on a terminal (with -i: an interactive shell, `skiff exec -it R -- sh`)
    #[arg(short = 't', long)]
    tty: bool,
    /// The command and its arguments, after `--`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The replica (`skiff get replicas` lists them), or a deployment: one of its running replicas
    replica: String,
    /// LOCAL:REMOTE, or PORT for the same on both sides, or :REMOTE for any free local port
    ports: String,
    /// The local address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
}

/// The terminal's size (columns, rows), if stdin is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which lives across the call.
    let r = unsafe { nix::libc::ioctl(std::io::stdin().as_raw_fd(), nix::libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// This terminal in raw mode (no echo, no line editing, no signals from
/// Ctrl-C: the remote terminal does those) until dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

/// The replica `given` names: itself, or when it is a deployment with
/// replicas, its oldest ready (else running) one, as `kubectl exec deploy/x`
/// picks a pod.
async fn resolve(client: &Client, given: &str) -> anyhow::Result<String> {
    use skiff_api::ReplicaState;
    let mut of_deployment = client.replicas(Some(given), None).await?;
    of_deployment.retain(|r| r.deployment == given);
    of_deployment.sort_by_key(|r| (r.state != ReplicaState::Ready, r.state != ReplicaState::Running, r.created_ms));
    Ok(match of_deployment.first() {
        Some(r) if matches!(r.state, ReplicaState::Ready | ReplicaState::Running) => r.id.clone(),
        Some(_) => bail!("deployment {given} has no running replica; `skiff describe deployment {given}` says why"),
        None => given.to_string(),
    })
}

/// `skiff exec`: exits with the command's exit code.
pub async fn exec(args: ExecArgs, client: &Client) -> anyhow::Result<()> {
    let replica = resolve(client, &args.replica).await?;
    let mut tty = args.tty;
    if tty && !std::io::stdin().is_terminal() {
        eprintln!("skiff: stdin is not a terminal; running the command without one (drop -t)");
        tty = false;
    }
    let (cols, rows) = if tty { terminal_size().unwrap_or((80, 24)) } else { (80, 24) };
    let ask = ExecRequest { command: args.command, tty, stdin: args.stdin, cols, rows };
    let path = format!("/v1/replicas/{}/exec?{}", percent_encode(&replica), ask.to_query());
    let conn = client.upgrade(&path).await?;
    let raw = if tty && args.stdin { Some(RawMode::enter()?) } else { None };
    let result = session(conn, args.stdin, tty).await;
    drop(raw);
    let code = result?;
    // The command's code is this process's: nothing else is left to do.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code);
}

/// Relays stdin, stdout, stderr and window sizes until the exit code comes.
async fn session<S>(conn: S, stdin: bool, tty: bool) -> anyhow::Result<i32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f.encode()).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    if stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Frame::Stdin(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Frame::CloseStdin).await;
        });
    } else {
        let _ = tx.send(Frame::CloseStdin).await;
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut winch) = signal(SignalKind::window_change()) else { return };
            while winch.recv().await.is_some() {
                if let Some((cols, rows)) = terminal_size()
                    && tx.send(Frame::Resize { cols, rows }).await.is_err()
                {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Some(frame) = Frame::decode(&mut buf).context("reading the exec stream")? {
            match frame {
                Frame::Stdout(b) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Frame::Stderr(b) => {
                    stderr.write_all(&b).await?;
                    stderr.flush().await?;
                }
                Frame::Exit(code) => {
                    writer.abort();
                    return Ok(code);
                }
                Frame::Error(line) => bail!("{line}"),
                Frame::Stdin(_) | Frame::Resize { .. } | Frame::CloseStdin => {}
            }
        }
        let n = rd.read(&mut chunk).await.context("reading the exec stream")?;
        if n == 0 {
            bail!("the connection to the scheduler ended before the command did");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `LOCAL:REMOTE`, `PORT` or `:REMOTE` → (local, remote); local 0 is any free port.
fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let port = |p: &str, what: &str| -> anyhow::Result<u16> {
        p.parse::<u16>().ok().filter(|p| *p > 0).with_context(|| format!("{what} port {p:?} is not a port (1-65535)"))
    };
    match s.split_once(':') {
        Some(("", remote)) => Ok((0, port(remote, "the remote")?)),
        Some((local, remote)) => Ok((port(local, "the local")?, port(remote, "the remote")?)),
        None => {
            let p = port(s, "the")?;
            Ok((p, p))
        }
    }
}

/// `skiff port-forward`: until Ctrl-C, or until the replica is gone.
pub async fn port_forward(args: PortForwardArgs, client: &Client) -> anyhow::Result<()> {
    let (local, remote) = parse_ports(&args.ports)?;
    let id = resolve(client, &args.replica).await?;
    // Asked first, so a wrong replica or a read-only token fails now, not at
    // the first connection.
    client.check_port_forward(&id, remote).await?;
    let replica = percent_encode(&id);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.address, local))
        .await
        .with_context(|| format!("cannot listen on {}", SocketAddr::new(args.address, local)))?;
    let bound = listener.local_addr().context("reading the local address")?;
    println!("Forwarding from {bound} to port {remote} of replica {id} (Ctrl-C stops)");
    let path = format!("/v1/replicas/{replica}/port-forward?port={remote}");
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::channel::<String>(1);
    loop {
        let (mut conn, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skiff: cannot accept a connection on {bound}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(why) = gone_rx.recv() => bail!("{why}"),
        };
        let (client, path, gone) = (client.clone(), path.clone(), gone_tx.clone());
        tokio::spawn(async move {
            match client.upgrade(&path).await {
                Ok(mut relay) => {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut relay).await;
                }
                // The replica is gone or stopped: no later connection can work.
                Err(e @ ClientError::Api { status: 404 | 409, .. }) => {
                    let _ = gone.send(e.to_string()).await;
                }
                Err(e) => eprintln!("skiff: connection from {peer}: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_local_colon_remote_or_one_port() {
        assert_eq!(super::parse_ports("8080:80").ok(), Some((8080, 80)));
        assert_eq!(super::parse_ports("80").ok(), Some((80, 80)));
        assert_eq!(super::parse_ports(":80").ok(), Some((0, 80)));
        assert!(super::parse_ports("0:80").is_err());
        assert!(super::parse_ports("x:80").is_err());
        assert!(super::parse_ports("8080:").is_err());
        assert!(super::parse_ports("70000").is_err());
    }
}
