//! Image and artifact garbage collection on the node: unpacked layers
//! (`containers/layers/<hex>`), compiled Wasm code (`cache/<engine>/<hex>.cwasm`,
//! the layout `engine::cache_dir` and its callers make; read here, nothing
//! added to the engine) and cached blobs (`blobs/<hex>`).
//!
//! What a replica uses is never removed:
//! - a layer while a prepared image holds it ([`hold`]: the container runtime's
//!   `Plan` keeps a [`Hold`] per layer for as long as the replica's supervisor
//!   lives, restarts included) or while an overlay mount names it (a container
//!   an earlier daemon left running, before its replica adopts it);
//! - compiled code and blobs of the Wasm digests and pinned image manifests of
//!   the node's current assignments ([`Roots`]).
//!
//! Anything else is removed once no replica has used it for `after`
//! (`--image-gc-after`); and when the data dir's file system is fuller than
//! `high` percent (`--image-gc-high`), least recently used first until it is
//! under `low` (`--image-gc-low`). Last use is kept in memory: a hold's
//! release, the last pass that found an item in use, or, for what a daemon
//! finds at start, the time it first saw it (so a restart never makes
//! anything look idle). A layer is renamed aside under the holds' lock before
//! it is deleted, so a prepare that takes its hold first keeps it, and one
//! that comes after unpacks it again. A blob or compiled file removed under a
//! prepare is fetched or compiled again by it (both re-check the file).

use crate::metrics::METRICS;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How the collection is set (`skiff node --image-gc-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcConfig {
    /// Remove what no replica has used for this long.
    pub after: Duration,
    /// Percent of the data dir's file system used above which the collection
    /// removes least recently used items regardless of age...
    pub high_percent: f64,
    /// ...until the use is at most this.
    pub low_percent: f64,
}

impl Default for GcConfig {
    fn default() -> GcConfig {
        GcConfig { after: Duration::from_secs(3600), high_percent: 85.0, low_percent: 75.0 }
    }
}

impl GcConfig {
    /// How often a pass runs: a fraction of `after`, at least every 10 s (disk
    /// pressure can come at any time), at most every 200 ms.
    pub fn every(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// A percentage flag: `85%` or `85`, in 0..=100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match n.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage; give one such as 85%")),
    }
}

/// Layers held by prepared images: path → holders and when the last let go.
#[derive(Default)]
struct Held {
    count: HashMap<PathBuf, usize>,
    released: HashMap<PathBuf, Instant>,
}

static HELD: LazyLock<Mutex<Held>> = LazyLock::new(Mutex::default);

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// A replica's use of an unpacked layer: the layer stays while this lives.
#[derive(Debug)]
pub struct Hold(PathBuf);

/// Holds the layer at `path` (taken before looking whether it is there, so a
/// collection either removed it already or keeps it).
pub fn hold(path: &Path) -> Hold {
    *held().count.entry(path.to_path_buf()).or_insert(0) += 1;
    Hold(path.to_path_buf())
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut h = held();
        if let Some(n) = h.count.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                h.count.remove(&self.0);
            }
        }
        h.released.insert(self.0.clone(), Instant::now());
    }
}

/// What the node's current assignments use by digest (hex): Wasm artifacts
/// (their blobs and compiled code) and pinned image manifests (their blobs).
#[derive(Debug, Default, Clone)]
pub struct Roots {
    pub digests: BTreeSet<String>,
}

impl Roots {
    /// The roots of these workloads.
    pub fn of<'a>(workloads: impl IntoIterator<Item = &'a skiff_api::Workload>) -> Roots {
        let mut digests = BTreeSet::new();
        for w in workloads {
            let digest = match w {
                skiff_api::Workload::Wasm(d) => Some(d.as_str()),
                skiff_api::Workload::Image(i) => match i.rsplit_once('@') {
                    Some((_, d)) => Some(d),
                    None => i.starts_with("sha256:").then_some(i.as_str()),
                },
            };
            if let Some(hex) = digest.and_then(|d| d.strip_prefix("sha256:")) {
                digests.insert(hex.to_string());
            }
        }
        Roots { digests }
    }
}

/// The kinds of cached things.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Layers,
    Compiled,
    Blobs,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Layers => "layers",
            Kind::Compiled => "compiled",
            Kind::Blobs => "blobs",
        }
    }
}

/// One cached thing found on disk.
#[derive(Debug)]
struct Item {
    kind: Kind,
    path: PathBuf,
    /// The digest it is of (hex).
    hex: String,
    bytes: u64,
}

/// What a pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Pass {
    /// Paths removed.
    pub removed: Vec<PathBuf>,
    pub freed_bytes: u64,
    /// Use of the data dir's file system before and after, percent.
    pub used_before: f64,
    pub used_after: f64,
}

/// The node's collector: last use per item, kept across passes.
pub struct Collector {
    data_dir: PathBuf,
    config: GcConfig,
    /// Path → last time in use (or first seen), and its size once measured.
    seen: HashMap<PathBuf, (Instant, u64)>,
    /// Whether the last pass found the disk past the high mark with nothing
    /// left to remove (said once, not every pass).
    stuck: bool,
}

impl Collector {
    pub fn new(data_dir: &Path, config: GcConfig) -> Collector {
        // The container runtime holds layers by their canonical path.
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Collector { data_dir, config, seen: HashMap::new(), stuck: false }
    }

    /// Every cached item on disk now, with leftovers of interrupted work
    /// (layers renamed aside, blobs half written) removed on the way.
    fn scan(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        let layers = self.data_dir.join("containers").join("layers");
        for e in read_dir(&layers) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".gc") {
                // Renamed aside by a pass that did not get to delete it.
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            if is_hex(&name) {
                items.push(Item { kind: Kind::Layers, path: e.path(), hex: name, bytes: 0 });
            }
        }
        for dir in read_dir(&self.data_dir.join("cache")) {
            for e in read_dir(&dir.path()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(hex) = name.strip_suffix(".cwasm").filter(|h| is_hex(h)) {
                    items.push(Item { kind: Kind::Compiled, path: e.path(), hex: hex.to_string(), bytes: 0 });
                }
            }
        }
        for e in read_dir(&self.data_dir.join("blobs")) {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_hex(&name) {
                items.push(Item { kind: Kind::Blobs, path: e.path(), hex: name, bytes: 0 });
            }
        }
        let now = Instant::now();
        for item in &mut items {
            let (_, bytes) = self.seen.entry(item.path.clone()).or_insert_with(|| (now, 0));
            if *bytes == 0 {
                // Layers and compiled code never change once in place: measured once.
                *bytes = disk_bytes(&item.path);
            }
            item.bytes = *bytes;
        }
        let present: std::collections::HashSet<&PathBuf> = items.iter().map(|i| &i.path).collect();
        self.seen.retain(|p, _| present.contains(p));
        held().released.retain(|p, _| present.contains(p));
        items
    }

    /// One pass: `roots` are what the node's assignments use now.
    pub fn collect(&mut self, roots: &Roots) -> Pass {
        let mut items = self.scan();
        let now = Instant::now();
        // Blobs an in-use image manifest names (its config and layers).
        let mut blob_roots = roots.digests.clone();
        for hex in &roots.digests {
            blob_roots.extend(manifest_blobs(&self.data_dir.join("blobs").join(hex)));
        }
        let mounted = mounted_layers(&self.data_dir.join("containers").join("layers"));
        let mut pass = Pass { used_before: used_percent(&self.data_dir).unwrap_or(0.0), ..Pass::default() };
        let mut in_use = std::collections::HashSet::new();
        {
            let h = held();
            for item in &items {
                let used = match item.kind {
                    Kind::Layers => h.count.contains_key(&item.path) || mounted.contains(&item.hex),
                    Kind::Compiled => roots.digests.contains(&item.hex),
                    Kind::Blobs => blob_roots.contains(&item.hex),
                };
                let entry = self.seen.entry(item.path.clone()).or_insert((now, item.bytes));
                if used {
                    entry.0 = now;
                    in_use.insert(item.path.clone());
                } else if let Some(at) = h.released.get(&item.path) {
                    entry.0 = entry.0.max(*at);
                }
            }
        }
        let mut held_bytes: HashMap<Kind, u64> = HashMap::new();
        for item in &items {
            *held_bytes.entry(item.kind).or_default() += item.bytes;
        }
        // Oldest use first: the order both rules remove in.
        items.sort_by_key(|i| self.seen.get(&i.path).map(|(t, _)| *t));
        let idle = |i: &Item| self.seen.get(&i.path).is_some_and(|(t, _)| now.duration_since(*t) >= self.config.after);
        let mut doomed: Vec<(usize, &'static str)> = Vec::new();
        for (n, item) in items.iter().enumerate() {
            if !in_use.contains(&item.path) && idle(item) {
                doomed.push((n, "idle"));
            }
        }
        // Disk pressure: past the high mark, oldest first down to the low one.
        if let Some(fs) = FsUse::of(&self.data_dir)
            && fs.percent() > self.config.high_percent
        {
            let target = fs.used.saturating_sub(((self.config.low_percent / 100.0) * fs.size() as f64) as u64);
            let mut planned: u64 = doomed.iter().map(|(n, _)| items[*n].bytes).sum();
            for (n, item) in items.iter().enumerate() {
                if planned >= target {
                    break;
                }
                if in_use.contains(&item.path) || doomed.iter().any(|(d, _)| *d == n) {
                    continue;
                }
                doomed.push((n, "disk_pressure"));
                planned += item.bytes;
            }
        }
        for (n, reason) in doomed {
            let item = &items[n];
            if self.remove(item) {
                tracing::info!(
                    kind = item.kind.label(),
                    reason,
                    bytes = item.bytes,
                    "image gc removed {}",
                    item.path.display()
                );
                METRICS.image_gc_freed_bytes.with_label_values(&[item.kind.label(), reason]).inc_by(item.bytes);
                *held_bytes.entry(item.kind).or_default() -= item.bytes;
                pass.freed_bytes += item.bytes;
                pass.removed.push(item.path.clone());
                self.seen.remove(&item.path);
            }
        }
        for kind in [Kind::Layers, Kind::Compiled, Kind::Blobs] {
            let bytes = held_bytes.get(&kind).copied().unwrap_or(0);
            METRICS
                .image_gc_held_bytes
                .with_label_values(&[kind.label()])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        pass.used_after = used_percent(&self.data_dir).unwrap_or(0.0);
        let stuck = pass.used_after > self.config.high_percent;
        if stuck && !self.stuck {
            tracing::warn!(
                "the data dir's file system is {:.1}% used, past --image-gc-high {}%, and no unused layer, compiled code \
                 or blob is left to remove",
                pass.used_after,
                self.config.high_percent
            );
        }
        self.stuck = stuck;
        pass
    }

    /// Removes one item unless it is in use now; whether it went.
    fn remove(&self, item: &Item) -> bool {
        match item.kind {
            Kind::Layers => {
                // Checked and moved aside under the holds' lock: a prepare
                // holds it before it looks, so it either keeps it or unpacks anew.
                let aside = {
                    let h = held();
                    if h.count.contains_key(&item.path) {
                        return false;
                    }
                    let aside = item.path.with_extension(format!("gc{}", crate::blobs::unique_suffix()));
                    if let Err(e) = std::fs::rename(&item.path, &aside) {
                        tracing::warn!("image gc cannot move {} aside: {e}", item.path.display());
                        return false;
                    }
                    aside
                };
                if let Err(e) = std::fs::remove_dir_all(&aside) {
                    tracing::warn!("image gc cannot remove {}: {e}", aside.display());
                }
                true
            }
            Kind::Compiled | Kind::Blobs => match std::fs::remove_file(&item.path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("image gc cannot remove {}: {e}", item.path.display());
                    false
                }
            },
        }
    }
}

/// Runs the collection every `config.every()`; `roots` says what the node's
/// assignments use now.
pub async fn run(data_dir: PathBuf, config: GcConfig, roots: impl Fn() -> Roots + Send + 'static) {
    let mut collector = Some(Collector::new(&data_dir, config));
    loop {
        tokio::time::sleep(config.every()).await;
        let r = roots();
        let Some(mut c) = collector.take() else { return };
        match tokio::task::spawn_blocking(move || {
            let pass = c.collect(&r);
            (c, pass)
        })
        .await
        {
            Ok((c, pass)) => {
                if pass.freed_bytes > 0 {
                    tracing::info!(
                        "image gc freed {} bytes in {} items; the data dir's file system is {:.1}% used (was {:.1}%)",
                        pass.freed_bytes,
                        pass.removed.len(),
                        pass.used_after,
                        pass.used_before
                    );
                }
                collector = Some(c);
            }
            Err(e) => {
                tracing::warn!("the image gc task failed: {e}");
                return;
            }
        }
    }
}

fn read_dir(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir).into_iter().flatten().flatten()
}

fn is_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Bytes a file or directory tree takes on disk (allocated blocks).
fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for e in read_dir(path) {
            total += disk_bytes(&e.path());
        }
    }
    total.max(1)
}

/// The config and layer digests (hex) a manifest blob names; none when the
/// blob is not a readable manifest.
fn manifest_blobs(path: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else { return Vec::new() };
    m.config.into_iter().chain(m.layers).filter_map(|d| d.digest.strip_prefix("sha256:").map(str::to_owned)).collect()
}

/// Layers (hex) that an overlay mount of this machine names as a lower dir.
fn mounted_layers(layers: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return BTreeSet::new() };
    layers_in_mountinfo(&text, layers)
}

/// The layers under `layers` that the overlay mounts of `mountinfo` name.
fn layers_in_mountinfo(text: &str, layers: &Path) -> BTreeSet<String> {
    let prefix = format!("{}/", layers.display());
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.contains(" - overlay ")) {
        for part in line.split([',', ':', ' ', '=']) {
            if let Some(rest) = part.strip_prefix(&prefix) {
                let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
                if is_hex(&hex) {
                    out.insert(hex);
                }
            }
        }
    }
    out
}

/// Use of a file system, as `df` counts it.
struct FsUse {
    used: u64,
    avail: u64,
}

impl FsUse {
    fn of(path: &Path) -> Option<FsUse> {
        let st = nix::sys::statvfs::statvfs(path).ok()?;
        let frag = st.fragment_size() as u64;
        let used = (st.blocks() as u64).saturating_sub(st.blocks_free() as u64) * frag;
        Some(FsUse { used, avail: st.blocks_available() as u64 * frag })
    }

    /// What non-root users can use at most: `df`'s size for its percentage.
    fn size(&self) -> u64 {
        self.used + self.avail
    }

    fn percent(&self) -> f64 {
        if self.size() == 0 { 0.0 } else { self.used as f64 * 100.0 / self.size() as f64 }
    }
}

fn used_percent(path: &Path) -> Option<f64> {
    FsUse::of(path).map(|f| f.percent())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn idle_items_go_held_and_rooted_ones_stay() {
        let dir = std::env::temp_dir().join(format!("skiff-gc-{}", crate::blobs::unique_suffix()));
        let layers = dir.join("containers/layers");
        let cache = dir.join("cache/abc");
        for d in [&layers, &cache, &dir.join("blobs")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for n in [1, 2] {
            std::fs::create_dir_all(layers.join(hex(n)).join("etc")).unwrap();
            std::fs::write(layers.join(hex(n)).join("etc/motd"), b"hi").unwrap();
        }
        for n in [3, 4] {
            std::fs::write(cache.join(format!("{}.cwasm", hex(n))), b"code").unwrap();
            std::fs::write(dir.join("blobs").join(hex(n)), b"wasm").unwrap();
        }
        std::fs::create_dir_all(layers.join(format!("{}.gc7", hex(9)))).unwrap();
        let mut gc = Collector::new(
            &dir,
            GcConfig { after: Duration::from_millis(50), high_percent: 100.0, low_percent: 100.0 },
        );
        let held = hold(&layers.join(hex(1)));
        let roots = Roots::of([&skiff_api::Workload::Wasm(format!("sha256:{}", hex(3)))]);
        // First seen now: nothing is idle yet (a restarted daemon removes nothing at once).
        assert!(gc.collect(&roots).removed.is_empty());
        assert!(!layers.join(format!("{}.gc7", hex(9))).exists(), "a leftover aside is removed");
        std::thread::sleep(Duration::from_millis(80));
        let pass = gc.collect(&roots);
        let mut removed: Vec<String> =
            pass.removed.iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                format!("blobs/{}", hex(4)),
                format!("cache/abc/{}.cwasm", hex(4)),
                format!("containers/layers/{}", hex(2))
            ]
        );
        assert!(layers.join(hex(1)).join("etc/motd").exists());
        // Released: idle from the release on.
        drop(held);
        assert!(gc.collect(&roots).removed.is_empty());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(gc.collect(&roots).removed, vec![layers.join(hex(1))]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlay_mounts_name_their_layers() {
        let (a, b, c) = (hex(1), hex(2), hex(3));
        let text = format!(
            "36 25 0:32 / /data/containers/run/web-1/rootfs rw,relatime shared:1 - overlay overlay \
             rw,lowerdir=/data/containers/layers/{b}:/data/containers/layers/{a},upperdir=/data/containers/run/web-1/upper,\
             workdir=/data/containers/run/web-1/work\n\
             37 25 8:1 / /data/containers/layers/{c} rw - ext4 /dev/sda1 rw\n"
        );
        let found = layers_in_mountinfo(&text, Path::new("/data/containers/layers"));
        assert_eq!(found, BTreeSet::from([a, b]), "a bind mount is no overlay's layer");
    }

    #[test]
    fn percentages_parse() {
        assert_eq!(parse_percent("85%"), Ok(85.0));
        assert_eq!(parse_percent("75"), Ok(75.0));
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("x").is_err());
    }
}
