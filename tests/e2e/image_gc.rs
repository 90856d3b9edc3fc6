//! Image and artifact garbage collection end to end. On the node (real
//! containers, so root): unpacked layers, compiled Wasm code and blobs that no
//! replica has used for `--image-gc-after` go and those in use stay; on a
//! small loop-mounted data dir filled past `--image-gc-high`, the collection
//! brings it under `--image-gc-low` and running replicas are untouched. On the
//! scheduler: `skiff image rm` refuses while a deployment runs the image, and
//! the blob collection deletes what no deployment, revision or imported image
//! refers to after `--blob-gc-grace`.

use crate::containers::build_images;
use crate::registry_auth::Site;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skiff_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files of a tar archive, by path.
fn read_tar(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open archive"));
    let mut out = Vec::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).expect("read entry");
        out.push((name, bytes));
    }
    out
}

fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, name, &bytes[..]).expect("append");
    }
    std::fs::write(path, b.into_inner().expect("tar")).expect("write archive");
}

/// The test image's layers and what they are.
struct Built {
    archive: PathBuf,
    /// Hex digests of the layers, bottom first.
    layers: Vec<String>,
}

/// An OCI archive of the busybox image's first layer (`build_images`) and a
/// layer of its own holding `/extra/file` (`body`): an image that shares one
/// layer with busybox and has one nobody else has.
fn image_with_layer(busybox: &Path, out: &Path, body: &[u8]) -> Built {
    let files = read_tar(busybox);
    let blob = |digest: &str| -> Vec<u8> {
        let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.clone()).expect("blob in the archive")
    };
    let index: Value =
        serde_json::from_slice(&files.iter().find(|(n, _)| n == "index.json").expect("index").1).expect("index");
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().expect("digest"))).expect("manifest");
    let mut config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().expect("config"))).expect("config");
    let base = manifest["layers"][0].clone();
    let base_bytes = blob(base["digest"].as_str().expect("layer"));

    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "extra/", &b""[..]).expect("dir");
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "extra/file", body).expect("file");
    let layer = b.into_inner().expect("layer");

    config["rootfs"]["diff_ids"] = json!([format!("sha256:{}", sha(&base_bytes)), format!("sha256:{}", sha(&layer))]);
    let config = serde_json::to_vec(&config).expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len() },
        "layers": [
            base,
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(&layer)), "size": layer.len() },
        ],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len() }],
    }))
    .expect("index");
    let blob_file = |b: &[u8]| (format!("blobs/sha256/{}", sha(b)), b.to_vec());
    write_tar(
        out,
        &[
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".into(), index),
            blob_file(&manifest),
            blob_file(&config),
            blob_file(&base_bytes),
            blob_file(&layer),
        ],
    );
    Built { archive: out.to_path_buf(), layers: vec![sha(&base_bytes), sha(&layer)] }
}

/// The layer digests (hex) of the busybox archive `build_images` wrote.
fn busybox_layers(busybox: &Path) -> Vec<String> {
    let files = read_tar(busybox);
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).expect("in the archive");
    let index: Value = serde_json::from_slice(&file("index.json")).expect("index");
    let digest = index["manifests"][0]["digest"].as_str().expect("manifest digest");
    let manifest: Value =
        serde_json::from_slice(&file(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))))
            .expect("manifest");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest").trim_start_matches("sha256:").to_string())
        .collect()
}

/// Where the node keeps compiled code of blob `hex` (any engine directory).
fn compiled(node: &Path, hex: &str) -> Option<PathBuf> {
    let dirs = std::fs::read_dir(node.join("cache")).ok()?;
    dirs.flatten().map(|d| d.path().join(format!("{hex}.cwasm"))).find(|p| p.exists())
}

fn sleeper(site: &Site, name: &str, image: &str) {
    site.cli(&[
        "deploy",
        "--image",
        image,
        "--name",
        name,
        "--memory",
        "16Mi",
        "--arg",
        "/bin/sh",
        "--arg",
        "-c",
        "--arg",
        "sleep 600",
    ]);
}

/// A metric's value summed over the series whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn idle_layers_and_compiled_code_go_and_what_replicas_use_stays() {
    if !require_root("containers (runc, overlayfs)") {
        return;
    }
    let site = Site::start("image-gc-idle", &[], &["--image-gc-after", "2s"], None);
    let node = site.node_data.clone();
    let (busybox, _) = build_images(site.dir.path());
    let extra = image_with_layer(&busybox, &site.dir.path().join("extra.tar"), b"only in the extra image\n");
    site.cli(&["image", "import", busybox.to_str().unwrap(), "--name", "bb:1"]);
    site.cli(&["image", "import", extra.archive.to_str().unwrap(), "--name", "bbx:1"]);
    let (keep_wasm, gone_wasm) = (wasm_p2("worker"), wasm_p1("worker"));
    let keep_hex = sha(&std::fs::read(&keep_wasm).expect("wasm"));
    let gone_hex = sha(&std::fs::read(&gone_wasm).expect("wasm"));
    site.cli(&["deploy", keep_wasm.to_str().unwrap(), "--name", "wkeep"]);
    site.cli(&["deploy", gone_wasm.to_str().unwrap(), "--name", "wgone"]);
    sleeper(&site, "ckeep", "bb:1");
    sleeper(&site, "cgone", "bbx:1");
    let before: Vec<Value> =
        ["wkeep", "wgone", "ckeep", "cgone"].iter().map(|d| site.wait_state(d, "running")).collect();

    let bb = busybox_layers(&busybox);
    let layer = |hex: &str| node.join("containers/layers").join(hex);
    assert_eq!(bb[0], extra.layers[0], "the two images share their first layer");
    for hex in bb.iter().chain(&extra.layers) {
        assert!(layer(hex).is_dir(), "layer {hex} unpacked");
    }
    let gone_code = wait_for(Duration::from_secs(30), "compiled code of both", || {
        match (compiled(&node, &keep_hex), compiled(&node, &gone_hex)) {
            (Some(_), Some(g)) => Ok(g),
            other => Err(format!("{other:?}")),
        }
    });

    site.cli(&["delete", "wgone"]);
    site.cli(&["delete", "cgone"]);
    // Idle for 2 s once their replicas stopped: then they go.
    wait_for(Duration::from_secs(60), "the unused layer, code and blob to go", || {
        let left: Vec<String> = [layer(&extra.layers[1]), gone_code.clone(), node.join("blobs").join(&gone_hex)]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if left.is_empty() { Ok(()) } else { Err(format!("still there: {left:?}")) }
    });
    // What the running replicas use stayed, the shared layer included, though
    // it has been on disk longer than what went.
    for hex in &bb {
        assert!(layer(hex).join("bin/busybox").exists() || layer(hex).join("etc").is_dir(), "layer {hex} was removed");
    }
    assert!(compiled(&node, &keep_hex).is_some(), "compiled code of the running replica was removed");
    assert!(node.join("blobs").join(&keep_hex).exists(), "the running replica's blob was removed");
    for (d, was) in ["wkeep", "ckeep"].iter().zip([&before[0], &before[2]]) {
        let now = site.wait_state(d, "running");
        assert_eq!((&now["id"], &now["restarts"]), (&was["id"], &was["restarts"]), "{d} was disturbed: {now}");
    }
    let m = site.node_metrics();
    assert!(metric(&m, "skiff_node_image_gc_freed_bytes_total", &["kind=\"layers\"", "reason=\"idle\""]) > 0.0, "{m}");
    assert!(metric(&m, "skiff_node_image_gc_freed_bytes_total", &["kind=\"compiled\""]) > 0.0, "{m}");
    assert!(metric(&m, "skiff_node_image_gc_held_bytes", &["kind=\"layers\""]) > 0.0, "{m}");
}

/// A small ext4 loop-mounted for the test, unmounted (the loop device freed
/// with it) on drop, even when the test fails.
struct LoopMount {
    mnt: PathBuf,
    _dir: TempDir,
}

impl LoopMount {
    fn new(tag: &str, size: &str) -> LoopMount {
        let dir = TempDir::new(tag);
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
            assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("truncate", &["-s", size, img.to_str().unwrap_or_default()]);
        // e2fsprogs: `make deps-test` installs it.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", img.to_str().unwrap_or_default()]);
        run("mount", &["-o", "loop", img.to_str().unwrap_or_default(), mnt.to_str().unwrap_or_default()]);
        LoopMount { mnt, _dir: dir }
    }

    /// (bytes used, bytes available), as `df` counts them.
    fn usage(&self) -> (u64, u64) {
        let out = Command::new("df").args(["-B1", "--output=used,avail"]).arg(&self.mnt).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let nums: Vec<u64> =
            text.lines().nth(1).unwrap_or("").split_whitespace().filter_map(|n| n.parse().ok()).collect();
        assert_eq!(nums.len(), 2, "df said {text}");
        (nums[0], nums[1])
    }

    fn percent(&self) -> f64 {
        let (used, avail) = self.usage();
        used as f64 * 100.0 / (used + avail) as f64
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

#[test]
fn disk_pressure_removes_least_recently_used_down_to_the_low_mark_and_spares_running_replicas() {
    if !require_root("containers (runc, overlayfs) and a loop mount") {
        return;
    }
    // Declared first, so dropped last: after the node and its containers.
    let disk = LoopMount::new("image-gc-disk", "128M");
    let site = Site::start(
        "image-gc-pressure",
        &[],
        &["--image-gc-after", "1h", "--image-gc-high", "70%", "--image-gc-low", "50%"],
        Some(disk.mnt.join("node")),
    );
    let node = site.node_data.clone();
    let (busybox, _) = build_images(site.dir.path());
    let mut noise = vec![0u8; 20 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
        .expect("random bytes");
    let big = image_with_layer(&busybox, &site.dir.path().join("big.tar"), &noise);
    site.cli(&["image", "import", busybox.to_str().unwrap(), "--name", "bb:1"]);
    site.cli(&["image", "import", big.archive.to_str().unwrap(), "--name", "big:1"]);
    sleeper(&site, "keep", "bb:1");
    sleeper(&site, "big", "big:1");
    let keep = site.wait_state("keep", "running");
    site.wait_state("big", "running");
    let big_layer = node.join("containers/layers").join(&big.layers[1]);
    assert!(big_layer.join("extra/file").exists(), "the big layer was unpacked");
    site.cli(&["delete", "big"]);
    wait_for(Duration::from_secs(60), "the big replica to be gone", || {
        let r = site.replicas("big");
        if r.is_empty() { Ok(()) } else { Err(format!("{r:?}")) }
    });

    // Past the high mark: the unused big layer and its blob (some 40 MiB) are
    // what can go; the filler cannot.
    let (used, avail) = disk.usage();
    let size = used + avail;
    let target = size * 3 / 4;
    assert!(used < target, "the data dir is already {used} of {size} bytes before filling");
    let filler = disk.mnt.join("filler");
    let out =
        Command::new("fallocate").args(["-l", &(target - used).to_string()]).arg(&filler).output().expect("fallocate");
    assert!(out.status.success(), "fallocate: {}", String::from_utf8_lossy(&out.stderr));
    assert!(disk.percent() > 70.0, "filled to {:.1}% only", disk.percent());

    wait_for(Duration::from_secs(60), "the data dir under the low mark", || {
        let p = disk.percent();
        if p <= 50.0 { Ok(()) } else { Err(format!("{p:.1}% used")) }
    });
    assert!(!big_layer.exists(), "the unused layer is what went");
    for hex in busybox_layers(&busybox) {
        assert!(node.join("containers/layers").join(&hex).is_dir(), "layer {hex} of the running replica was removed");
    }
    let now = site.wait_state("keep", "running");
    assert_eq!((&now["id"], &now["restarts"]), (&keep["id"], &keep["restarts"]), "the running replica was disturbed");
    let m = site.node_metrics();
    assert!(metric(&m, "skiff_node_image_gc_freed_bytes_total", &["reason=\"disk_pressure\""]) > 0.0, "{m}");
    std::fs::remove_file(&filler).expect("remove the filler");
}

#[test]
fn image_rm_refuses_while_used_and_unreferenced_blobs_are_collected_after_the_grace() {
    let dir = TempDir::new("blob-gc");
    let (_server, url, _) = loopback_server(dir.path(), &["--blob-gc-grace", "2s"]);
    let cwd = dir.path();
    let blobs = dir.path().join("server/blobs/sha256");
    let (busybox, _) = build_images(dir.path());
    let extra = image_with_layer(&busybox, &dir.path().join("extra.tar"), b"only in the extra image\n");
    cli_ok(cwd, &url, &["image", "import", busybox.to_str().unwrap(), "--name", "bb:1"]);
    cli_ok(cwd, &url, &["image", "import", extra.archive.to_str().unwrap(), "--name", "bbx:1"]);
    // No node runs containers here: the deployment stays pending, and uses the image all the same.
    cli_ok(cwd, &url, &["deploy", "--image", "bbx:1", "--name", "uses"]);
    let refused = cli_in(cwd, &url, &["image", "rm", "bbx:1"]);
    assert!(!refused.ok, "an image in use was removed");
    assert!(
        refused.stderr.contains("image bbx:1 is used by deployment uses; delete it or deploy another image first"),
        "{}",
        refused.stderr
    );
    let missing = cli_in(cwd, &url, &["image", "rm", "nosuch:1"]);
    assert!(!missing.ok && missing.stderr.contains("image nosuch:1 is not imported"), "{}", missing.stderr);

    // Revision history keeps its artifact; a deleted deployment's goes.
    let (first, second, temp) = (wasm_p2("worker"), wasm_p1("worker"), wasm_p2("counter"));
    let hex_of = |p: &Path| sha(&std::fs::read(p).expect("wasm"));
    cli_ok(cwd, &url, &["deploy", first.to_str().unwrap(), "--name", "hist"]);
    cli_ok(cwd, &url, &["deploy", second.to_str().unwrap(), "--name", "hist"]);
    cli_ok(cwd, &url, &["deploy", temp.to_str().unwrap(), "--name", "tmp"]);
    cli_ok(cwd, &url, &["delete", "tmp"]);
    cli_ok(cwd, &url, &["delete", "uses"]);
    let out = cli_ok(cwd, &url, &["image", "rm", "bbx:1"]);
    assert!(out.contains("image bbx:1 removed"), "{out}");
    assert!(!cli_ok(cwd, &url, &["image", "ls"]).contains("bbx"));

    let only_extra = &extra.layers[1];
    wait_for(Duration::from_secs(60), "the unreferenced blobs to go", || {
        let left: Vec<&str> =
            [only_extra.as_str(), &hex_of(&temp)].into_iter().filter(|h| blobs.join(h).exists()).map(|_| "x").collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{} still there", left.len())) }
    });
    for hex in busybox_layers(&busybox).iter().chain([&hex_of(&first), &hex_of(&second)]) {
        assert!(blobs.join(hex).exists(), "blob {hex} is referred to and was deleted");
    }
    let m = http_get(&format!("{url}/metrics")).expect("metrics");
    assert!(metric(&m, "skiff_scheduler_blob_gc_freed_bytes_total", &[]) > 0.0, "{m}");
    assert!(metric(&m, "skiff_scheduler_blob_bytes", &[]) > 0.0, "{m}");
}
