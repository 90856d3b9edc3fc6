//! Per-replica logs: what a guest writes to stdout and stderr, and what the
//! supervisor says about it, as timestamped lines in a bounded pair of files.
//!
//! Layout: `<data_dir>/logs/<replica id>/current.log`, rotated to `previous.log`
//! once it passes [`ROTATE_AT`] bytes. Every line reads
//! `2026-11-27T11:00:00.123Z stdout hello`: a UTC timestamp, the stream
//! (`stdout`, `stderr` or `skiff` for the node's own lines) and the text.
//!
//! Guest writes land in memory and a flusher task writes them out every
//! [`FLUSH_EVERY`]: a guest that prints one byte at a time costs no syscall per
//! byte, and a line still reaches the file within about 50 ms. Only whole lines
//! are ever written, so a reader never sees half a line.

use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Size at which `current.log` is rotated to `previous.log`.
pub const ROTATE_AT: u64 = 1024 * 1024;
/// How often buffered lines are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes past which a write flushes at once rather than waiting.
const FLUSH_BYTES: usize = 64 * 1024;
/// A line longer than this is cut into several.
const MAX_LINE: usize = 16 * 1024;
/// A partial line (no newline yet) is written out after this long.
const PARTIAL_AFTER: Duration = Duration::from_secs(1);

/// The file names inside a replica's log directory.
pub const CURRENT: &str = "current.log";
/// The rotated file.
pub const PREVIOUS: &str = "previous.log";
/// Present in the log directory of a job's run: kept for [`JOB_LOG_MAX_AGE`]
/// after its last line rather than an hour (`skiff logs job/NAME` reads it
/// after the run ended).
pub const JOB_RUN_MARK: &str = "job-run";
/// How long the log of a job's run is kept after its last line.
pub const JOB_LOG_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// The node itself (supervisor decisions).
    Skiff,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Skiff => "skiff",
        }
    }
}

/// The log directory of replica `id` under `data_dir`. `id` must already be a
/// valid name (see [`skiff_api::manifest::validate_name`]).
pub fn replica_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("logs").join(id)
}

/// The log of one replica. Cheap to share; writes never block on the disk
/// except when a guest outruns the flusher by [`FLUSH_BYTES`].
pub struct LogSink {
    dir: PathBuf,
    state: Mutex<SinkState>,
    /// Wakes the flusher when something is buffered: an idle replica's
    /// flusher sleeps rather than tick every [`FLUSH_EVERY`] (10,000 warm
    /// replicas made 200,000 timer wakeups a second, #17).
    wake: Arc<tokio::sync::Notify>,
}

struct SinkState {
    file: Option<File>,
    size: u64,
    pending: Vec<u8>,
    /// Unfinished lines of stdout and stderr, and since when they wait.
    partial: [(Vec<u8>, Option<Instant>); 2],
    /// The last write error, logged once.
    failed: bool,
    /// Whether the flusher is ticking (woken, not yet found nothing buffered).
    awake: bool,
}

impl LogSink {
    /// Opens (appending to) the log in `dir`, creating it, and starts its flusher
    /// on the current tokio runtime.
    pub fn open(dir: PathBuf) -> io::Result<Arc<LogSink>> {
        fs::create_dir_all(&dir)?;
        let file = OpenOptions::new().create(true).append(true).open(dir.join(CURRENT))?;
        let size = file.metadata()?.len();
        let sink = Arc::new(LogSink {
            dir,
            state: Mutex::new(SinkState {
                file: Some(file),
                size,
                pending: Vec::new(),
                partial: [(Vec::new(), None), (Vec::new(), None)],
                failed: false,
                awake: false,
            }),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        spawn_flusher(Arc::downgrade(&sink), sink.wake.clone());
        Ok(sink)
    }

    /// Adds a line from the node itself.
    pub fn system(&self, message: &str) {
        let mut st = self.lock();
        push_line(&mut st.pending, Stream::Skiff, message.as_bytes());
        self.maybe_flush(&mut st);
    }

    /// Adds guest output; whole lines are timestamped now, a partial line when its
    /// newline arrives (or after [`PARTIAL_AFTER`]).
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let slot = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::Skiff => {
                self.system(&String::from_utf8_lossy(bytes));
                return;
            }
        };
        let mut st = self.lock();
        let st = &mut *st;
        while !bytes.is_empty() {
            let (partial, since) = &mut st.partial[slot];
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    partial.extend_from_slice(&bytes[..i]);
                    bytes = &bytes[i + 1..];
                    push_line(&mut st.pending, stream, partial);
                    partial.clear();
                    *since = None;
                }
                None => {
                    partial.extend_from_slice(bytes);
                    bytes = &[];
                    since.get_or_insert_with(Instant::now);
                }
            }
            let (partial, since) = &mut st.partial[slot];
            while partial.len() >= MAX_LINE {
                let rest = partial.split_off(MAX_LINE);
                push_line(&mut st.pending, stream, partial);
                *partial = rest;
                *since = if partial.is_empty() { None } else { Some(Instant::now()) };
            }
        }
        self.maybe_flush(st);
    }

    /// Writes out everything buffered, partial lines included.
    pub fn flush_all(&self) {
        let mut st = self.lock();
        take_partials(&mut st, true);
        self.flush_locked(&mut st);
    }

    /// Writes out what is due; false (and the flusher sleeps until woken)
    /// when nothing is left buffered.
    fn flush_due(&self) -> bool {
        let mut st = self.lock();
        take_partials(&mut st, false);
        if !st.pending.is_empty() {
            self.flush_locked(&mut st);
        }
        st.awake = !st.pending.is_empty() || st.partial.iter().any(|(p, _)| !p.is_empty());
        st.awake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // A panic while holding the lock leaves only a log buffer behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maybe_flush(&self, st: &mut SinkState) {
        if st.pending.len() >= FLUSH_BYTES {
            self.flush_locked(st);
        }
        if !st.awake && (!st.pending.is_empty() || st.partial.iter().any(|(p, _)| !p.is_empty())) {
            st.awake = true;
            self.wake.notify_one();
        }
    }

    fn flush_locked(&self, st: &mut SinkState) {
        if st.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut st.pending);
        if let Err(e) = self.append(st, &pending) {
            if !st.failed {
                tracing::warn!(dir = %self.dir.display(), "cannot write replica log: {e}");
                st.failed = true;
            }
        } else {
            st.failed = false;
        }
    }

    fn append(&self, st: &mut SinkState, data: &[u8]) -> io::Result<()> {
        if st.file.is_none() {
            fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new().create(true).append(true).open(self.dir.join(CURRENT))?;
            st.size = file.metadata()?.len();
            st.file = Some(file);
        }
        if let Some(file) = st.file.as_mut() {
            file.write_all(data)?;
            st.size += data.len() as u64;
        }
        if st.size >= ROTATE_AT {
            st.file = None;
            fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS))?;
            st.file = Some(OpenOptions::new().create(true).append(true).open(self.dir.join(CURRENT))?);
            st.size = 0;
        }
        Ok(())
    }

    /// A stdout or stderr for a guest that writes into this log.
    pub fn guest_stream(self: &Arc<Self>, stream: Stream) -> GuestOutput {
        GuestOutput { sink: self.clone(), stream }
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        // The flusher, asleep, wakes to find the sink gone and ends.
        self.wake.notify_one();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        take_partials(st, true);
        let pending = std::mem::take(&mut st.pending);
        if let Some(file) = st.file.as_mut() {
            let _ = file.write_all(&pending);
        }
    }
}

fn take_partials(st: &mut SinkState, all: bool) {
    for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
        let (partial, since) = &mut st.partial[slot];
        let due = since.is_some_and(|t| all || t.elapsed() >= PARTIAL_AFTER);
        if due && !partial.is_empty() {
            push_line(&mut st.pending, stream, partial);
            partial.clear();
            *since = None;
        }
    }
}

fn push_line(out: &mut Vec<u8>, stream: Stream, text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    out.extend_from_slice(timestamp(SystemTime::now()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    // Keep one record per line: an embedded newline cannot occur (we split on
    // it), and invalid UTF-8 is made readable.
    out.extend_from_slice(String::from_utf8_lossy(text).as_bytes());
    out.push(b'\n');
}

fn spawn_flusher(sink: Weak<LogSink>, wake: Arc<tokio::sync::Notify>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // No runtime: lines still reach the file when the buffer fills or the
        // sink is dropped.
        return;
    };
    handle.spawn(async move {
        loop {
            // Asleep while nothing is buffered (a write wakes it, as does the
            // sink's drop); then every FLUSH_EVERY until all is written.
            wake.notified().await;
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(s) = sink.upgrade() else { return };
                if !s.flush_due() {
                    break;
                }
            }
        }
    });
}

/// `2026-11-27T11:00:00.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---- the guest side: wasmtime-wasi streams ----

/// A guest's stdout or stderr, writing into a [`LogSink`].
pub struct GuestOutput {
    sink: Arc<LogSink>,
    stream: Stream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput { sink: self.sink.clone(), stream: self.stream })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestOutput { sink: self.sink.clone(), stream: self.stream })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Lines reach the file within FLUSH_EVERY; a guest that flushes after
        // every line must not cost a syscall each time.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---- the reader side: tail and follow ----

/// The last `n` lines of `previous.log` followed by `current.log`, and where
/// `current.log` ended when it was read (to follow from).
pub fn tail(dir: &Path, n: usize) -> io::Result<(Vec<u8>, Position)> {
    let current = dir.join(CURRENT);
    let (cur_bytes, pos) = match File::open(&current) {
        Ok(mut f) => {
            let meta = f.metadata()?;
            let mut buf = Vec::new();
            (&mut f).take(meta.len()).read_to_end(&mut buf)?;
            let pos = Position { ino: inode(&meta), offset: buf.len() as u64 };
            (buf, pos)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), Position { ino: 0, offset: 0 }),
        Err(e) => return Err(e),
    };
    let mut out = last_lines(&cur_bytes, n);
    let have = count_lines(&out);
    if have < n {
        match fs::read(dir.join(PREVIOUS)) {
            Ok(prev) => {
                let mut both = last_lines(&prev, n - have);
                both.extend_from_slice(&out);
                out = both;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, pos))
}

/// Where a follower is in `current.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    ino: u64,
    offset: u64,
}

/// New complete lines since `pos`, following a rotation: the rest of the old
/// file (now `previous.log`) and then the new `current.log` from its start.
pub fn read_new(dir: &Path, pos: &mut Position) -> io::Result<Vec<u8>> {
    let current = dir.join(CURRENT);
    let meta = match fs::metadata(&current) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    if inode(&meta) != pos.ino || meta.len() < pos.offset {
        // Rotated (or recreated): finish the old file if it is the previous one.
        if pos.ino != 0
            && let Ok(prev_meta) = fs::metadata(dir.join(PREVIOUS))
            && inode(&prev_meta) == pos.ino
        {
            out.extend(read_range(&dir.join(PREVIOUS), pos.offset, prev_meta.len())?);
        }
        *pos = Position { ino: inode(&meta), offset: 0 };
    }
    if meta.len() > pos.offset {
        let chunk = read_range(&current, pos.offset, meta.len())?;
        // Only whole lines: the writer writes whole lines, but be safe.
        let upto = chunk.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        out.extend_from_slice(&chunk[..upto]);
        pos.offset += upto as u64;
    }
    Ok(out)
}

fn read_range(path: &Path, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> u64 {
    1
}

fn count_lines(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count()
}

/// The last `n` complete lines of `buf` (a trailing partial line is dropped).
fn last_lines(buf: &[u8], n: usize) -> Vec<u8> {
    let end = buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    let buf = &buf[..end];
    if n == 0 {
        return Vec::new();
    }
    let mut seen = 0;
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate().rev().skip(1) {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
    }
    buf[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_777_200_123);
        assert_eq!(timestamp(t), "2026-11-27T11:00:00.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn last_lines_counts_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc\n", 5), b"a\nb\nc\n");
        assert_eq!(last_lines(b"a\nb\npartial", 1), b"b\n");
        assert_eq!(last_lines(b"a\n", 0), b"");
    }

    fn strip_ts(buf: &[u8]) -> String {
        String::from_utf8_lossy(buf)
            .lines()
            .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// The flusher sleeps while nothing is buffered, wakes for each write
    /// after that (none is left unwritten), and ends with its sink.
    #[tokio::test]
    async fn an_idle_flusher_sleeps_and_wakes_for_the_next_line() {
        let dir = std::env::temp_dir().join(format!("skiff-logs-flusher-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sink = LogSink::open(dir.clone()).expect("open log");
        let lines = || strip_ts(&tail(&dir, 10).expect("tail").0);
        async fn until(what: &str, mut ok: impl FnMut() -> bool) {
            for _ in 0..600 {
                if ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}");
        }
        sink.write(Stream::Stdout, b"one\n");
        until("the first line written by the flusher", || lines() == "stdout one").await;
        until("the flusher asleep", || !sink.lock().awake).await;
        sink.write(Stream::Stdout, b"two\n");
        until("a line after the flusher slept", || lines() == "stdout one|stdout two").await;
        let wake = sink.wake.clone();
        drop(sink);
        until("the flusher ended with its sink", || Arc::strong_count(&wake) == 1).await;
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_are_split_joined_and_rotated() {
        let dir = std::env::temp_dir().join(format!("skiff-logs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sink = LogSink::open(dir.clone()).expect("open log");
        sink.write(Stream::Stdout, b"hel");
        sink.write(Stream::Stderr, b"oops\n");
        sink.write(Stream::Stdout, b"lo\nworld\n");
        sink.system("restarting");
        sink.flush_all();
        let (text, mut pos) = tail(&dir, 10).expect("tail");
        assert_eq!(strip_ts(&text), "stderr oops|stdout hello|stdout world|skiff restarting");
        assert_eq!(strip_ts(&tail(&dir, 1).expect("tail").0), "skiff restarting");

        // Fill past the rotation size; the follower sees every line once.
        let line = vec![b'x'; 1000];
        let mut written = 0;
        while written < ROTATE_AT + 10_000 {
            sink.write(Stream::Stdout, &line);
            sink.write(Stream::Stdout, b"\n");
            written += 1030;
        }
        sink.flush_all();
        assert!(dir.join(PREVIOUS).exists());
        let new = read_new(&dir, &mut pos).expect("read new");
        let n = count_lines(&new);
        assert!(n as u64 >= ROTATE_AT / 1030, "follower saw {n} lines");
        assert_eq!(read_new(&dir, &mut pos).expect("read new"), b"");
        drop(sink);
        let _ = fs::remove_dir_all(&dir);
    }
}
