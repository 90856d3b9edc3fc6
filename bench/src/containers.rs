//! Scenario `containers`: deploy → container running on a `skiff dev` node (runc,
//! CNI bridge networking as the node sets it up by default) against a bare
//! `runc run -d` of an equivalent bundle, alternating in the same run so that a
//! noisy neighbour hurts both.
//!
//! The image is built here from Debian's busybox-static, as the e2e tests build
//! theirs, and imported through the API. The bare bundle is the node's own
//! `config.json` (from the first, uncounted deploy) with its rootfs pointed at a
//! plain copy of the same layer, a cgroup of its own and a fresh network
//! namespace instead of the CNI one (and without the hook that waits for it).
//! Each run starts once the node has finished tearing the previous container
//! down (its bundle gone), so that neither is timed beside that work.
//!
//! "Running" is the same check for both: runc's state directory has the
//! container and its `exec.fifo` is gone, which is how runc itself tells
//! `running` from `created` (the user process has been exec'd). The node's own
//! report (`/v1/replicas`) and the scheduler's view are recorded too; the node
//! reports `running` as the run starts, before runc has the process.

use crate::procs::TempDir;
use crate::{dev_cluster, ms, percentile};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::Digest;
use skiff_api::{ImageRequest, ReplicaState, ReplicaStatus, Runtime};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";
/// The bridge the node's CNI config makes (removed afterwards if this made it).
const BRIDGE: &str = "skiff0";
/// The comment on the node's masquerade rule for the bridge's subnet (removed
/// afterwards if this run's node left it: the bench kills it with SIGKILL).
const MASQUERADE_COMMENT: &str = "skiff: outbound traffic of containers on skiff0";
/// The container's process: ends at once on SIGTERM, so a delete takes no grace.
const COMMAND: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
/// Longest one deploy, bare run or teardown may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn scenario_containers(skiff: &Path, deploys: usize) -> anyhow::Result<Value> {
    println!("containers: {deploys} deploys on skiff dev (runc) vs bare runc run -d, alternating");
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the containers scenario needs root (runc, mounts, network namespaces)");
    }
    let runc = crate::http::which("runc").context("runc not found; `make deps` installs Debian's runc")?;
    let runc_version = String::from_utf8_lossy(&Command::new(&runc).arg("--version").output()?.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let layer = busybox_layer()?;
    let dir = TempDir::new("containers")?;
    let bare_state = dir.path().join("bare-state");
    let node_state = dir.path().join("dev").join("node").join("containers").join("state");
    // Declared before the dev cluster, so dropped after it is killed: whatever a
    // failed run leaves (containers, mounts) goes before the directory does.
    let _cleanup = Cleanup {
        runc: runc.clone(),
        states: vec![node_state.clone(), bare_state.clone()],
        under: dir.path().to_path_buf(),
        bridge_was_there: Path::new("/sys/class/net").join(BRIDGE).exists(),
        masquerade_was_there: !masquerade_rules().is_empty(),
    };
    let dev = dev_cluster(skiff, &dir, &[]).await?;
    let t0 = Instant::now();
    loop {
        let node = dev.api.node("dev").await?;
        if node.runtimes.contains(&Runtime::Container) {
            break;
        }
        if t0.elapsed() > STEP_TIMEOUT {
            bail!("the dev node does not advertise the container runtime (is runc working?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let image = import(&dev, &layer).await?;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let node_replicas = format!("{}/v1/replicas", dev.node.address.trim_end_matches('/'));
    let bare = dir.path().join("bare");
    let rootfs = bare.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    tar::Archive::new(layer.as_slice()).unpack(&rootfs).context("unpacking the layer for the bare bundle")?;
    let mut bare_config: Option<Value> = None;
    let (mut skiff_running, mut skiff_reported, mut skiff_scheduler, mut runc_running, mut skiff_gone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cold = None;
    for i in 0..=deploys {
        // skiff: apply → the container runs.
        let name = format!("benchctr-{i}");
        let prefix = format!("{name}-");
        let spec = json!({
            "replicas": 1,
            "spec": {
                "workload": { "image": image },
                "resources": { "cpu": "100m", "memory": "32Mi" },
                "args": ["/bin/sh", "-c", COMMAND],
            },
        });
        let t = Instant::now();
        dev.api.apply(&name, &serde_json::from_value(spec)?).await?;
        let (mut running, mut reported, mut scheduled) = (None, None, None);
        let mut id = None;
        let mut polls = 0u64;
        while running.is_none() || reported.is_none() || scheduled.is_none() {
            if t.elapsed() > STEP_TIMEOUT {
                bail!("deploy {name}: container not running after {STEP_TIMEOUT:?}");
            }
            dev.proc.check_alive()?;
            if running.is_none()
                && let Some(found) = container_with_prefix(&node_state, &prefix)
                && is_running(&node_state, &found)
            {
                running = Some(t.elapsed());
                id = Some(found);
            }
            // The HTTP polls cost the skiff process CPU: fewer of them than of
            // the (free) state-directory check.
            if reported.is_none()
                && polls.is_multiple_of(5)
                && let Ok(resp) = http.get(&node_replicas).send().await
                && let Ok(list) = resp.json::<Vec<ReplicaStatus>>().await
                && list.iter().any(|r| r.id.starts_with(&prefix) && r.state == ReplicaState::Running)
            {
                reported = Some(t.elapsed());
            }
            if scheduled.is_none()
                && polls.is_multiple_of(20)
                && let Ok(d) = dev.api.deployment(&name).await
                && d.status.running >= 1
            {
                scheduled = Some(t.elapsed());
            }
            polls += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let id = id.context("no container id")?;
        let (r, n, s) = (running.unwrap_or_default(), reported.unwrap_or_default(), scheduled.unwrap_or_default());
        if bare_config.is_none() {
            let path = dev.data.join("node").join("containers").join("run").join(&id).join("config.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            bare_config = Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?);
        }
        // Delete: until runc no longer has it (the node tore it down).
        let t = Instant::now();
        dev.api.delete(&name).await?;
        while node_state.join(&id).exists() {
            if t.elapsed() > STEP_TIMEOUT {
                bail!("delete {name}: container {id} still there after {STEP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let gone = t.elapsed();
        // The node's teardown goes on after runc forgot the container (network,
        // mounts, bundle last): neither run below starts beside it.
        let bundle = dev.data.join("node").join("containers").join("run").join(&id);
        while bundle.exists() {
            if t.elapsed() > STEP_TIMEOUT {
                bail!("delete {name}: the node still tears {id} down after {STEP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Bare runc: the same bundle shape, `runc run -d` → running.
        let config = bare_config.as_ref().context("no bundle to copy")?;
        let bare_id = format!("bare-{}-{i}", std::process::id());
        std::fs::write(bare.join("config.json"), serde_json::to_vec_pretty(&bare_bundle(config, &rootfs, &bare_id))?)?;
        let t = Instant::now();
        runc_run_detached(&runc, &bare_state, &bare, &bare_id, &dir.path().join("bare-runc.log"))?;
        while !is_running(&bare_state, &bare_id) {
            if t.elapsed() > STEP_TIMEOUT {
                bail!("bare container {bare_id} not running after {STEP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let bare_t = t.elapsed();
        runc_delete(&runc, &bare_state, &bare_id)?;

        if i == 0 {
            cold = Some(json!({ "skiff_running_ms": ms(r), "runc_running_ms": ms(bare_t) }));
        } else {
            skiff_running.push(ms(r));
            skiff_reported.push(ms(n));
            skiff_scheduler.push(ms(s));
            runc_running.push(ms(bare_t));
            skiff_gone.push(ms(gone));
        }
    }
    dev.proc.check_alive()?;
    let network = if Path::new("/sys/class/net").join(BRIDGE).exists() {
        format!("CNI bridge {BRIDGE} (the node's default)")
    } else {
        "loopback only (no CNI plugins found)".to_string()
    };
    for v in [&mut skiff_running, &mut skiff_reported, &mut skiff_scheduler, &mut runc_running, &mut skiff_gone] {
        v.sort_by(f64::total_cmp);
    }
    let p = |v: &[f64]| json!({ "p50": percentile(v, 50.0), "p99": percentile(v, 99.0) });
    let ratio = |pct: f64| (percentile(&skiff_running, pct) / percentile(&runc_running, pct) * 1000.0).round() / 1000.0;
    let result = json!({
        "deploys": deploys,
        "runc": runc_version,
        "network": network,
        "skiff_container_running_ms": p(&skiff_running),
        "skiff_reported_running_ms": p(&skiff_reported),
        "skiff_scheduler_running_ms": p(&skiff_scheduler),
        "skiff_delete_to_gone_ms": p(&skiff_gone),
        "runc_running_ms": p(&runc_running),
        "ratio_p50": ratio(50.0),
        "ratio_p99": ratio(99.0),
        "cold_first_deploy": cold,
        "samples": { "skiff_container_running_ms": skiff_running, "runc_running_ms": runc_running },
        "note": "running = runc's state dir has the container and no exec.fifo (the same check for both, polled every \
                 1 ms); skiff: apply → running, its node's report polled every ~5 ms, the scheduler's every ~20 ms; \
                 runc: `runc run -d` of the node's config.json with a plain rootfs copy and its own netns → running; \
                 each run starts after the node's teardown of the previous container has ended (its bundle gone)",
    });
    println!("  {result}");
    Ok(result)
}

/// The image's one layer: busybox-static with the applets the command uses.
pub(crate) fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let busybox =
        std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (`make deps` installs busybox-static)"))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, body: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(body.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        b.append_data(&mut h, path, body)
    };
    for d in ["bin/", "etc/", "tmp/"] {
        add(d, tar::EntryType::Directory, 0o755, b"", None)?;
    }
    add("bin/busybox", tar::EntryType::Regular, 0o755, &busybox, None)?;
    for a in ["sh", "sleep"] {
        add(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, b"", Some("busybox"))?;
    }
    Ok(b.into_inner()?)
}

/// Uploads the layer, its config and manifest, and names it `benchbox:latest`.
/// Scenario `containers-cold`: the first request to a container HTTP
/// deployment scaled to zero (Debian's nginx from scripts/real-apps.sh, its
/// layers unpacked on the node by an earlier run), through the ingress of a
/// `skiff dev`, against a bare `runc run -d` of the node's own bundle (hooks
/// gone, a plain copy of the rootfs, the host's network) plus nginx's own
/// readiness: the time until it answers `GET /` with 200. Alternating, one of
/// each per round.
pub async fn scenario_containers_cold(skiff: &Path, archive: &Path, samples: usize) -> anyhow::Result<Value> {
    println!("containers-cold: {samples} cold requests to nginx at zero vs bare runc run + nginx ready");
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the containers-cold scenario needs root (runc, mounts, network namespaces)");
    }
    let runc = crate::http::which("runc").context("runc not found; `make deps` installs Debian's runc")?;
    let dir = TempDir::new("containers-cold")?;
    let bare_state = dir.path().join("bare-state");
    let node_state = dir.path().join("dev").join("node").join("containers").join("state");
    let _cleanup = Cleanup {
        runc: runc.clone(),
        states: vec![node_state.clone(), bare_state.clone()],
        under: dir.path().to_path_buf(),
        bridge_was_there: Path::new("/sys/class/net").join(BRIDGE).exists(),
        masquerade_was_there: !masquerade_rules().is_empty(),
    };
    let dev = dev_cluster(skiff, &dir, &["--ingress", "127.0.0.1:0", "--activation-timeout", "120s"]).await?;
    let url = crate::http::ingress_url(&dev.data)?;
    // The image, imported as a user would.
    let data = dev.data.display().to_string();
    let url_file = std::fs::read_to_string(dev.data.join("server.url"))?;
    let token = std::fs::read_to_string(dev.data.join("admin-token"))?;
    let out = Command::new(skiff)
        .args(["image", "import"])
        .arg(archive)
        .args(["--name", "nginx:bookworm"])
        .env("SKIFF_SERVER", url_file.trim())
        .env("SKIFF_TOKEN", token.trim())
        .env("SKIFF_CA_FILE", format!("{data}/ca.crt"))
        .output()
        .context("running skiff image import")?;
    if !out.status.success() {
        bail!("skiff image import failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let name = "benchctr-web";
    let req = json!({
        "replicas": 1,
        "scale_to_zero": { "idle_seconds": 1 },
        "spec": {
            "workload": { "image": "nginx:bookworm" },
            "resources": { "cpu": "100m", "memory": "64Mi" },
            "http_port": 80,
        },
    });
    dev.api.apply(name, &serde_json::from_value(req)?).await?;
    crate::http::wait_ok(&url, Some(&format!("{name}.skiff.local")), &dev.proc, Duration::from_secs(120)).await?;
    // The bare bundle: the node's config and a copy of the rootfs it runs.
    let prefix = format!("{name}-");
    let id = container_with_prefix(&node_state, &prefix).context("no container of the deployment")?;
    let run_dir = dev.data.join("node").join("containers").join("run").join(&id);
    let text = std::fs::read_to_string(run_dir.join("config.json"))?;
    let node_config: Value = serde_json::from_str(&text)?;
    // The rootfs from the node's unpacked layer (the container itself goes
    // to zero a second after its answer, so its overlay cannot be copied).
    let layers: Vec<PathBuf> = std::fs::read_dir(dev.data.join("node").join("containers").join("layers"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let [layer] = layers.as_slice() else {
        bail!("the bare run copies a one-layer image; the node unpacked {} layers", layers.len());
    };
    let bare = dir.path().join("bare");
    let rootfs = bare.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let copied = Command::new("cp").arg("-a").arg(layer.join(".")).arg(&rootfs).status()?;
    if !copied.success() {
        bail!("copying the unpacked layer {} failed", layer.display());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let (mut skiff_ms, mut bare_ms) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // skiff: at zero, the last container torn down, then one request.
        crate::cold::wait_all_at_zero(&dev, &[name.to_string()], Duration::from_secs(120)).await?;
        let t0 = Instant::now();
        while container_with_prefix(&node_state, &prefix).is_some()
            || std::fs::read_dir(dev.data.join("node").join("containers").join("run"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        {
            if t0.elapsed() > STEP_TIMEOUT {
                bail!("the node still tears the last container of {name} down after {STEP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        skiff_ms.push(ms(crate::cold::timed_get(&client, &url, name).await?));

        // Bare: runc run -d, then until nginx answers.
        let bare_id = format!("bare-{}-{i}", std::process::id());
        let mut config = bare_bundle(&node_config, &rootfs, &bare_id);
        if let Some(nss) = config["linux"]["namespaces"].as_array_mut() {
            nss.retain(|ns| ns["type"] != "network");
        }
        // Network sysctls (the node sets net.ipv4.ping_group_range in a
        // container's own network namespace) are refused in the host's.
        if let Some(sysctl) = config["linux"]["sysctl"].as_object_mut() {
            sysctl.retain(|k, _| !k.starts_with("net."));
        }
        std::fs::write(bare.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
        let t = Instant::now();
        runc_run_detached(&runc, &bare_state, &bare, &bare_id, &dir.path().join("bare-runc.log"))?;
        loop {
            if let Ok(r) = client.get("http://127.0.0.1:80/").send().await
                && r.status() == 200
                && r.bytes().await.is_ok()
            {
                break;
            }
            if t.elapsed() > STEP_TIMEOUT {
                bail!("bare nginx {bare_id} not answering after {STEP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bare_ms.push(ms(t.elapsed()));
        runc_delete(&runc, &bare_state, &bare_id)?;
    }
    dev.proc.check_alive()?;
    skiff_ms.sort_by(f64::total_cmp);
    bare_ms.sort_by(f64::total_cmp);
    let p = |v: &[f64]| json!({ "p50": percentile(v, 50.0), "p99": percentile(v, 99.0) });
    let ratio = |pct: f64| (percentile(&skiff_ms, pct) / percentile(&bare_ms, pct) * 1000.0).round() / 1000.0;
    let result = json!({
        "samples": samples,
        "image": archive.display().to_string(),
        "image_bytes": std::fs::metadata(archive)?.len(),
        "skiff_cold_ms": p(&skiff_ms),
        "bare_runc_ready_ms": p(&bare_ms),
        "ratio_p50": ratio(50.0),
        "ratio_p99": ratio(99.0),
        "all": { "skiff_cold_ms": skiff_ms, "bare_runc_ready_ms": bare_ms },
        "note": "skiff: GET through the ingress of a skiff dev to an nginx deployment at zero (layers unpacked, CNI bridge) until its 200 answer; bare: runc run -d of the node's config.json with a copy of the rootfs, no hooks, host network, until nginx answers GET / with 200 (polled every 1 ms)",
    });
    println!("  {result}");
    Ok(result)
}

pub(crate) async fn import(dev: &crate::DevCluster, layer: &[u8]) -> anyhow::Result<String> {
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [sha(layer)] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer), "size": layer.len() }],
    }))?;
    for blob in [layer, &config, &manifest] {
        dev.upload(blob.to_vec()).await?;
    }
    let req = ImageRequest { name: "benchbox".into(), tag: "latest".into(), digest: sha(&manifest) };
    dev.api.put_image(&req).await.context("recording the image")?;
    Ok("benchbox:latest".into())
}

/// `runc run -d` of `bundle` as container `id` (state under `state`). The
/// detached container inherits runc's stdio: its errors go to the file
/// `err_path`, not a pipe that would stay open as long as it runs, and a
/// failure says what runc wrote there.
fn runc_run_detached(runc: &Path, state: &Path, bundle: &Path, id: &str, err_path: &Path) -> anyhow::Result<()> {
    let err = std::fs::File::create(err_path)?;
    let status = Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(["run", "-d", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .context("running runc")?;
    if !status.success() {
        let said = std::fs::read_to_string(err_path).unwrap_or_default();
        bail!("runc run -d {id} failed: {}", said.trim());
    }
    Ok(())
}

/// The node's bundle config for a bare run: rootfs `rootfs`, a cgroup under
/// `skiff-bench/`, and a network namespace of its own instead of the CNI one
/// (so without the node's hook that waits for that one to be connected).
fn bare_bundle(node_config: &Value, rootfs: &Path, id: &str) -> Value {
    let mut c = node_config.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("hooks");
    }
    c["root"]["path"] = json!(rootfs.display().to_string());
    c["hostname"] = json!(id);
    c["linux"]["cgroupsPath"] = json!(format!("/skiff-bench/{id}"));
    if let Some(nss) = c["linux"]["namespaces"].as_array_mut() {
        for ns in nss.iter_mut().filter(|ns| ns["type"] == "network") {
            if let Some(o) = ns.as_object_mut() {
                o.remove("path");
            }
        }
    }
    c
}

/// The container in runc state directory `state` whose id starts with `prefix`.
fn container_with_prefix(state: &Path, prefix: &str) -> Option<String> {
    std::fs::read_dir(state)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(prefix))
}

/// Whether runc would say container `id` is running: it has state and its user
/// process has been started (runc start removes `exec.fifo`).
fn is_running(state: &Path, id: &str) -> bool {
    let dir = state.join(id);
    dir.join("state.json").exists() && !dir.join("exec.fifo").exists()
}

fn runc_delete(runc: &Path, state: &Path, id: &str) -> anyhow::Result<()> {
    let out = Command::new(runc).arg("--root").arg(state).args(["delete", "--force", id]).output()?;
    if !out.status.success() {
        bail!("runc delete --force {id} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes, when dropped, what a failed run may leave behind: containers in
/// the runc state directories, mounts under the bench's directory, the
/// replicas' network namespaces, and the node's bridge and masquerade rule if
/// they were not there before.
struct Cleanup {
    runc: PathBuf,
    states: Vec<PathBuf>,
    under: PathBuf,
    bridge_was_there: bool,
    masquerade_was_there: bool,
}

/// The node's masquerade rules in nat POSTROUTING, as `iptables -S` prints them.
fn masquerade_rules() -> Vec<String> {
    let out = Command::new("iptables").args(["-w", "5", "-t", "nat", "-S", "POSTROUTING"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().filter(|l| l.contains(MASQUERADE_COMMENT)).map(str::to_owned).collect()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for state in &self.states {
            for id in std::fs::read_dir(state).into_iter().flatten().flatten() {
                let id = id.file_name().to_string_lossy().into_owned();
                let _ = runc_delete(&self.runc, state, &id);
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = self.under.display().to_string();
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)) {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for ns in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let ns = ns.file_name().to_string_lossy().into_owned();
            if ns.starts_with("skiff-benchctr-") {
                let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
            }
        }
        // runc removes a container's cgroup, not the parent the bare runs share.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join("skiff-bench"));
        }
        if !self.bridge_was_there && Path::new("/sys/class/net").join(BRIDGE).exists() {
            let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
        }
        if !self.masquerade_was_there {
            for rule in masquerade_rules() {
                // `-A POSTROUTING … --comment "…" …` is shell-quoted: sh splits it back.
                let delete = format!("iptables -w 5 -t nat {}", rule.replacen("-A ", "-D ", 1));
                let _ = Command::new("sh").args(["-c", &delete]).output();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_bundle_is_the_nodes_with_its_own_rootfs_cgroup_and_netns() {
        let node = json!({
            "root": { "path": "/data/containers/run/web-1/rootfs" },
            "hostname": "web-1",
            "process": { "args": ["/bin/sh", "-c", "x"] },
            "hooks": { "createRuntime": [{ "path": "/bin/sh" }] },
            "linux": {
                "cgroupsPath": "/skiff/web-1",
                "namespaces": [{ "type": "pid" }, { "type": "network", "path": "/run/netns/skiff-web-1" }],
            },
        });
        let bare = bare_bundle(&node, Path::new("/tmp/b/rootfs"), "bare-1");
        assert_eq!(bare["root"]["path"], "/tmp/b/rootfs");
        assert_eq!(bare["linux"]["cgroupsPath"], "/skiff-bench/bare-1");
        assert_eq!(bare["linux"]["namespaces"], json!([{ "type": "pid" }, { "type": "network" }]));
        assert_eq!(bare["process"], node["process"]);
        assert_eq!(bare.get("hooks"), None);
    }
}
