//! Preparing images from blobs: layers unpacked once and checked against the
//! config's diff ids, tampered blobs and hostile layers refused with nothing
//! written outside the cache. No OCI runtime is needed here.

use super::image::manifest_digest;
use super::*;
use crate::blobs::{sha256_hex, unique_suffix};
use serde_json::json;

struct Fixture {
    base: PathBuf,
    rt: ContainerRuntime,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn fixture() -> Fixture {
    let base = std::env::temp_dir().join(format!("skiff-ctr-{}", unique_suffix()));
    let dir = base.join("containers");
    fs::create_dir_all(dir.join("layers")).expect("layers");
    fs::create_dir_all(base.join("blobs")).expect("blobs");
    let oci = Oci { bin: "runc".into(), root: dir.join("state"), version: String::new() };
    let rt = ContainerRuntime {
        dir,
        blobs: base.join("blobs"),
        oci,
        cni: None,
        unpacking: Mutex::new(HashMap::new()),
        addresses: Addresses::default(),
        registries: registry::Registries::default(),
        found: Mutex::new(HashMap::new()),
        life: teardown::Lifecycle::default(),
    };
    Fixture { base, rt }
}

fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, body_or_link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        let body: &[u8] = if *kind == tar::EntryType::Regular { body_or_link.as_bytes() } else { b"" };
        if *kind == tar::EntryType::Symlink {
            h.set_link_name(body_or_link).expect("link");
        }
        h.set_size(body.len() as u64);
        b.append_data(&mut h, path, body).expect("append");
    }
    b.into_inner().expect("tar")
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Stores the blobs of a one-layer image on disk; returns the manifest digest.
/// `diff_id` overrides the layer's real diff id.
fn store_image(f: &Fixture, layer: &[u8], diff_id: Option<&str>) -> String {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": ["/bin/app"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id.map(str::to_owned).unwrap_or_else(|| digest(layer))] },
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len() }],
    }))
    .expect("manifest");
    for b in [&config, &manifest, &layer.to_vec()] {
        fs::write(f.rt.blobs.join(sha256_hex(b)), b).expect("blob");
    }
    digest(&manifest)
}

fn assignment(image: &str) -> Assignment {
    serde_json::from_value(json!({
        "replica": "app-abc123", "deployment": "app", "revision": 1, "generation": 1,
        "spec": { "workload": { "image": image }, "resources": { "cpu": "100m", "memory": "32Mi" }, "args": ["--flag"] },
    }))
    .expect("assignment")
}

fn prepare(f: &Fixture, image: &str, client: Option<Client>) -> Result<Arc<Plan>, ArtifactError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async { f.rt.prepare(&assignment(image), client).await })
}

fn layer_dirs(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(f.rt.dir.join("layers"))
        .expect("layers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn an_image_is_unpacked_once_and_merged_with_the_spec() {
    let f = fixture();
    let layer = tar_of(&[("bin/", tar::EntryType::Directory, ""), ("bin/app", tar::EntryType::Regular, "#!")]);
    let m = store_image(&f, &layer, None);
    let plan = prepare(&f, &format!("app:v1@{m}"), None).expect("prepares");
    assert_eq!(plan.process.args, ["/bin/app", "--flag"]);
    assert_eq!((plan.cpu_millis, plan.memory), (100, 32 << 20));
    assert_eq!(plan.layers, [f.rt.dir.join("layers").join(sha256_hex(&layer))]);
    assert_eq!(fs::read_to_string(plan.layers[0].join("bin/app")).expect("app"), "#!");
    // Again: the cached layer is used as it is.
    fs::write(plan.layers[0].join("marker"), "").expect("marker");
    let again = prepare(&f, &m, None).expect("prepares");
    assert!(again.layers[0].join("marker").exists());
    assert_eq!(layer_dirs(&f).len(), 1);
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let f = fixture();
    let layer = tar_of(&[("a", tar::EntryType::Regular, "x")]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let m = store_image(&f, &layer, Some(&wrong));
    let err = prepare(&f, &m, None).expect_err("refused");
    let ArtifactError::Invalid(msg) = err else { panic!("not final: {err:?}") };
    assert!(msg.contains("unpacks to sha256:") && msg.contains(&format!("the image config says {wrong}")), "{msg}");
    assert!(layer_dirs(&f).is_empty(), "no layer, not even a half-unpacked one: {:?}", layer_dirs(&f));
}

#[test]
fn a_hostile_layer_is_refused_and_writes_nothing_outside() {
    let f = fixture();
    let outside = f.base.join("outside");
    fs::create_dir_all(&outside).expect("outside");
    let layer = tar_of(&[
        ("escape", tar::EntryType::Symlink, outside.to_str().expect("utf-8")),
        ("escape/pwned", tar::EntryType::Regular, "x"),
    ]);
    let m = store_image(&f, &layer, None);
    let err = prepare(&f, &m, None).expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "layer {}: layer entry \"escape/pwned\" goes through a symlink; refusing a layer that writes outside its root",
            digest(&layer)
        )
    );
    assert!(fs::read_dir(&outside).expect("outside").next().is_none());
    assert!(layer_dirs(&f).is_empty());
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    // A "scheduler" that serves other bytes than asked for.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/v1/blobs/{digest}", axum::routing::get(|| async { "tampered bytes" }));
    rt.spawn(async move { axum::serve(listener, app).await });

    let f = fixture();
    let wanted = digest(b"the real manifest");
    let err = prepare(&f, &format!("app:v1@{wanted}"), Some(Client::new(&url))).expect_err("refused");
    let ArtifactError::Invalid(msg) = err else { panic!("not final: {err:?}") };
    assert_eq!(msg, format!("blob {wanted} has digest {}; refusing it", digest(b"tampered bytes")));
    assert!(fs::read_dir(&f.rt.blobs).expect("blobs").next().is_none(), "nothing stored");
}

#[test]
fn image_references_must_be_pinned() {
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(manifest_digest(&format!("busybox:latest@{d}")), Ok(d.as_str()));
    assert_eq!(manifest_digest(&d), Ok(d.as_str()));
    assert!(manifest_digest("busybox:latest").expect_err("unpinned").contains("not pinned"));
    assert!(manifest_digest("busybox@sha256:xyz").is_err());
}

/// The ingress names a caller by its peer address (#20): a running
/// container's bridge address is that container; the gateway, loopback and
/// other networks are outside; a bridge address no container has, and an IPv6
/// link-local peer on the bridge, are unknown (never outside).
#[test]
fn callers_are_named_by_their_bridge_address() {
    let running = |ip: std::net::IpAddr| {
        (ip.to_string() == "10.89.0.7").then(|| ("team-a-web-abcdef".to_string(), "team-a/web".to_string()))
    };
    let at = |s: &str| name_caller(s.parse().expect("a socket address"), Some(9), running);
    let web = Caller::Container { replica: "team-a-web-abcdef".into(), deployment: "team-a/web".into() };
    assert_eq!(at("10.89.0.7:40000"), web);
    assert_eq!(at("[::ffff:10.89.0.7]:40000"), web, "an IPv4 peer on a dual-stack listener");
    assert_eq!(at("10.89.0.9:40000"), Caller::Unknown("10.89.0.9".parse().expect("ip")));
    for outside in ["10.89.0.1:40000", "127.0.0.1:40000", "192.168.1.5:40000", "[::1]:40000", "[2001:db8::1]:40000"] {
        assert_eq!(at(outside), Caller::Outside, "{outside}");
    }
    let link_local = |scope: u32| {
        let ip: std::net::Ipv6Addr = "fe80::1".parse().expect("ip");
        name_caller(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip, 40000, 0, scope)), Some(9), running)
    };
    assert_eq!(link_local(9), Caller::Unknown("fe80::1".parse().expect("ip")), "on the bridge");
    assert_eq!(link_local(2), Caller::Outside, "on another interface");
}
