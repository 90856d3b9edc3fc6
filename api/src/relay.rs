//! The relay behind `skiff exec` and `skiff port-forward`: the CLI asks the
//! scheduler for an HTTP/1.1 upgrade (`Upgrade: skiff-relay`), the scheduler asks
//! the replica's node for one in turn, and then splices the two connections.
//!
//! - An exec stream carries [`Frame`]s both ways (stdin, stdout, stderr, window
//!   size, end of stdin, the exit code, an error line), each
//!   `kind (1 byte) | length (4 bytes, big-endian) | payload`.
//! - A port-forward stream carries the TCP connection's bytes as they are.
//!
//! The node's API is plain HTTP (see SECURITY.md), so the node does not take a
//! relay request on trust: the scheduler signs each one with a [`grant`], an
//! HMAC-SHA256 keyed with the SHA-256 of the node's credential (which the
//! scheduler keeps to check the node's calls, and the node derives from the
//! credential it holds), over the node's name, the method, path and query, the
//! time and a nonce. The node takes a grant once and only within
//! [`GRANT_WINDOW_MS`] of its time.

use sha2::{Digest, Sha256};

/// The `Upgrade` protocol of relay streams.
pub const PROTOCOL: &str = "skiff-relay";
/// The header carrying the scheduler's grant on a relay request to a node.
pub const GRANT_HEADER: &str = "x-skiff-grant";
/// How far a grant's time may be from the node's clock.
pub const GRANT_WINDOW_MS: u64 = 60_000;
/// Largest frame payload.
pub const MAX_FRAME: usize = 1 << 20;

/// Frame kinds.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const RESIZE: u8 = 3;
const CLOSE_STDIN: u8 = 4;
const EXIT: u8 = 5;
const ERROR: u8 = 6;

/// One message of an exec stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the command's stdin (client to node).
    Stdin(Vec<u8>),
    /// Bytes the command wrote to stdout (with a terminal: everything it wrote).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The client's terminal size (client to node).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The client's stdin ended (client to node).
    CloseStdin,
    /// The command exited with this code; the last frame (node to client).
    Exit(i32),
    /// The exec failed, with why; the last frame (node to client).
    Error(String),
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A kind no version of the protocol has.
    #[error("unknown relay frame kind {0}")]
    Kind(u8),
    /// Longer than [`MAX_FRAME`].
    #[error("relay frame of {0} bytes is larger than {MAX_FRAME}")]
    TooLarge(usize),
    /// A payload of the wrong length for its kind.
    #[error("relay frame of kind {0} has a payload of {1} bytes")]
    Payload(u8, usize),
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(b) => (STDIN, b.into()),
            Frame::Stdout(b) => (STDOUT, b.into()),
            Frame::Stderr(b) => (STDERR, b.into()),
            Frame::Resize { cols, rows } => {
                let mut p = cols.to_be_bytes().to_vec();
                p.extend_from_slice(&rows.to_be_bytes());
                (RESIZE, p.into())
            }
            Frame::CloseStdin => (CLOSE_STDIN, Vec::new().into()),
            Frame::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
            Frame::Error(line) => (ERROR, line.as_bytes().into()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` while more
    /// bytes are needed.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if kind > ERROR {
            return Err(FrameError::Kind(kind));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let payload: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
        let fixed = |n: usize| if payload.len() == n { Ok(()) } else { Err(FrameError::Payload(kind, payload.len())) };
        Ok(Some(match kind {
            STDIN => Frame::Stdin(payload),
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            RESIZE => {
                fixed(4)?;
                Frame::Resize {
                    cols: u16::from_be_bytes([payload[0], payload[1]]),
                    rows: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            CLOSE_STDIN => Frame::CloseStdin,
            EXIT => {
                fixed(4)?;
                Frame::Exit(i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]))
            }
            _ => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
        }))
    }
}

/// Most arguments an exec command may have.
pub const MAX_ARGS: usize = 256;
/// Most bytes an exec command's arguments may have together.
pub const MAX_COMMAND_BYTES: usize = 32 << 10;

/// What `skiff exec` asks to run, as it travels in the query of the relay
/// request: `command=ARG` once per argument, in order, then `tty`, `stdin`,
/// `cols` and `rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Run it on a terminal (`-t`).
    pub tty: bool,
    /// Pass the client's stdin to it (`-i`); without, its stdin is empty.
    pub stdin: bool,
    /// The terminal's width, with `tty`.
    pub cols: u16,
    /// The terminal's height, with `tty`.
    pub rows: u16,
}

impl ExecRequest {
    /// The query string (without `?`).
    pub fn to_query(&self) -> String {
        let mut q: Vec<String> = self.command.iter().map(|a| format!("command={}", percent_encode(a))).collect();
        q.push(format!("tty={}", self.tty));
        q.push(format!("stdin={}", self.stdin));
        q.push(format!("cols={}", self.cols));
        q.push(format!("rows={}", self.rows));
        q.join("&")
    }

    /// Reads [`ExecRequest::to_query`]'s query, checking its limits.
    pub fn from_query(query: &str) -> Result<ExecRequest, String> {
        let mut r = ExecRequest { command: Vec::new(), tty: false, stdin: false, cols: 80, rows: 24 };
        let flag = |k: &str, v: &str| match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{k} must be true or false, not {v:?}")),
        };
        let size = |k: &str, v: &str| v.parse::<u16>().map_err(|_| format!("{k} must be a number of cells, not {v:?}"));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)
                .ok_or_else(|| format!("the query value of {k} is not valid UTF-8 percent-encoding"))?;
            match k {
                "command" => r.command.push(v),
                "tty" => r.tty = flag(k, &v)?,
                "stdin" => r.stdin = flag(k, &v)?,
                "cols" => r.cols = size(k, &v)?,
                "rows" => r.rows = size(k, &v)?,
                _ => return Err(format!("unknown exec parameter {k:?}")),
            }
        }
        if r.command.is_empty() || r.command[0].is_empty() {
            return Err("exec needs a command (`skiff exec REPLICA -- CMD ARGS...`)".into());
        }
        if r.command.len() > MAX_ARGS {
            return Err(format!("the command has {} arguments; at most {MAX_ARGS}", r.command.len()));
        }
        let bytes: usize = r.command.iter().map(String::len).sum();
        if bytes > MAX_COMMAND_BYTES {
            return Err(format!("the command is {bytes} bytes long; at most {MAX_COMMAND_BYTES}"));
        }
        if r.command.iter().any(|a| a.contains('\0')) {
            return Err("a command argument contains a NUL byte".into());
        }
        Ok(r)
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space, as forms write it).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The key a node's grants are made with: the SHA-256 of its credential.
pub fn node_key(credential: &str) -> [u8; 32] {
    Sha256::digest(credential.trim().as_bytes()).into()
}

fn hmac(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    // HMAC-SHA256 (RFC 2104): the key is shorter than the 64-byte block, so it
    // is padded with zeros.
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner: [u8; 32] = Sha256::new().chain_update(ipad).chain_update(message).finalize().into();
    Sha256::new().chain_update(opad).chain_update(inner).finalize().into()
}

fn message(node: &str, method: &str, path_and_query: &str, time_ms: u64, nonce: &str) -> Vec<u8> {
    format!("skiff-relay\n{node}\n{method}\n{path_and_query}\n{time_ms}\n{nonce}").into_bytes()
}

/// The grant for `method path_and_query` on `node`: `TIME.NONCE.MAC`.
pub fn grant(key: &[u8; 32], node: &str, method: &str, path_and_query: &str, time_ms: u64, nonce: &str) -> String {
    let mac = hmac(key, &message(node, method, path_and_query, time_ms, nonce));
    format!("{time_ms}.{nonce}.{}", hex::encode(mac))
}

/// Why a node refused a grant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// Not `TIME.NONCE.MAC`.
    #[error("the relay grant is malformed")]
    Malformed,
    /// Too far from the node's clock.
    #[error("the relay grant's time is {0} ms away from this node's clock (at most {GRANT_WINDOW_MS} ms)")]
    Expired(u64),
    /// Not made with this node's key for this request.
    #[error("the relay grant does not match this node's credential and this request")]
    Mismatch,
}

/// Checks `header` is a grant for this request on `node` made within
/// [`GRANT_WINDOW_MS`] of `now_ms`; returns its nonce, which the caller must
/// take only once.
pub fn check_grant(
    key: &[u8; 32],
    node: &str,
    method: &str,
    path_and_query: &str,
    header: &str,
    now_ms: u64,
) -> Result<String, GrantError> {
    let mut parts = header.splitn(3, '.');
    let (Some(time), Some(nonce), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(GrantError::Malformed);
    };
    let time_ms: u64 = time.parse().map_err(|_| GrantError::Malformed)?;
    let given: [u8; 32] = hex::decode(mac).ok().and_then(|m| m.try_into().ok()).ok_or(GrantError::Malformed)?;
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(GrantError::Malformed);
    }
    let expected = hmac(key, &message(node, method, path_and_query, time_ms, nonce));
    // Constant time: the MAC is what an attacker would guess byte by byte.
    if expected.iter().zip(given.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(GrantError::Mismatch);
    }
    let skew = now_ms.abs_diff(time_ms);
    if skew > GRANT_WINDOW_MS {
        return Err(GrantError::Expired(skew));
    }
    Ok(nonce.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_whole_frames() {
        let frames = [
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::Stdout(vec![0, 1, 2]),
            Frame::Stderr(Vec::new()),
            Frame::Resize { cols: 132, rows: 43 },
            Frame::CloseStdin,
            Frame::Exit(-7),
            Frame::Error("no such replica".into()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        // Fed a byte at a time, the decoder yields exactly the frames sent.
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for b in wire {
            buf.push(b);
            while let Some(f) = Frame::decode(&mut buf).expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(Frame::decode(&mut vec![9, 0, 0, 0, 0]), Err(FrameError::Kind(9)));
        assert_eq!(Frame::decode(&mut vec![1, 0x7f, 0, 0, 0]), Err(FrameError::TooLarge(0x7f00_0000)));
        assert_eq!(Frame::decode(&mut vec![EXIT, 0, 0, 0, 1, 5]), Err(FrameError::Payload(EXIT, 1)));
    }

    #[test]
    fn exec_requests_travel_in_the_query() {
        let r = ExecRequest {
            command: vec!["sh".into(), "-c".into(), "echo 'a b' & ü=%20+;".into()],
            tty: true,
            stdin: true,
            cols: 132,
            rows: 43,
        };
        assert_eq!(ExecRequest::from_query(&r.to_query()), Ok(r));
        assert!(ExecRequest::from_query("tty=true").is_err_and(|e| e.contains("needs a command")));
        assert!(ExecRequest::from_query("command=ls&tty=maybe").is_err_and(|e| e.contains("tty must be")));
        assert!(ExecRequest::from_query("command=ls&user=root").is_err_and(|e| e.contains("unknown")));
        assert!(ExecRequest::from_query("command=%ZZ").is_err());
        assert!(ExecRequest::from_query("command=a%00b").is_err_and(|e| e.contains("NUL")));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2's key is "Jefe" (4 bytes): zero-padded to 32 it
        // is the same HMAC key.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_grant_holds_for_its_request_node_and_time_only() {
        let key = node_key("skn_abc");
        let g = grant(&key, "n1", "POST", "/v1/replicas/r1/exec?command=sh", 1_000_000, "abc123");
        assert_eq!(
            check_grant(&key, "n1", "POST", "/v1/replicas/r1/exec?command=sh", &g, 1_000_500),
            Ok("abc123".into())
        );
        let other = |node, pq, now| check_grant(&key, node, "POST", pq, &g, now);
        assert_eq!(other("n2", "/v1/replicas/r1/exec?command=sh", 1_000_000), Err(GrantError::Mismatch));
        assert_eq!(other("n1", "/v1/replicas/r2/exec?command=sh", 1_000_000), Err(GrantError::Mismatch));
        assert_eq!(
            other("n1", "/v1/replicas/r1/exec?command=sh", 1_000_000 + GRANT_WINDOW_MS + 1),
            Err(GrantError::Expired(GRANT_WINDOW_MS + 1))
        );
        let wrong = node_key("skn_abd");
        assert_eq!(
            check_grant(&wrong, "n1", "POST", "/v1/replicas/r1/exec?command=sh", &g, 1_000_000),
            Err(GrantError::Mismatch)
        );
        assert_eq!(check_grant(&key, "n1", "POST", "/", "12.x", 12), Err(GrantError::Malformed));
    }
}
