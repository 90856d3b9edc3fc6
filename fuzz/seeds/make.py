#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/seeds/TARGET/). Run it from fuzz/ after
changing it; the files it writes are what the fuzzers start from."""
import hashlib, io, json, os, shutil, tarfile

tarfile.RECORDSIZE = 512  # no 10 KiB of padding per seed

OUT = os.path.dirname(os.path.abspath(__file__))
OUTSIDE = "/tmp/skiff-fuzz-layer/outside"  # what fuzz_targets/layer.rs watches


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def tar(entries, fmt=tarfile.GNU_FORMAT):
    """entries: (name, kind, data_or_linkname). Names are written raw."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, payload in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                ti.size = len(payload)
                t.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                       "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                ti.linkname = payload
            if kind == "chr":
                ti.devmajor, ti.devminor = 1, 3
            t.addfile(ti)
    return buf.getvalue()


for d in ["manifest", "quantity", "layer", "image_archive", "api_requests"]:
    shutil.rmtree(os.path.join(OUT, d), ignore_errors=True)

# manifest: the shapes the README and the e2e tests apply.
put("manifest", "worker.yaml", "name: worker\nwasm: ./worker.wasm\nreplicas: 3\nresources: { cpu: 100m, memory: 64Mi }\n"
    "env: { GREETING: hello }\nrestart: always\nconstraints: { zone: a }\nallowed_hosts: [api.example.com]\n")
put("manifest", "two.yaml", "name: web\nwasm: worker.wasm\nreplicas: 2\nresources: {cpu: 50m, memory: 16Mi}\n"
    "env: {GREETING: from-manifest}\n---\nname: web2\nwasm: worker.wasm\n")
put("manifest", "autoscale.yaml", "name: web\nwasm: hello_http.wasm\nreplicas: 1\nresources: {cpu: 50m, memory: 32Mi}\n"
    "autoscale: {min: 1, max: 3, target_requests_per_second: 5, window_seconds: 3, stabilization_seconds: 5}\n")
put("manifest", "image.yaml", "name: keeper\nimage: busybox:latest\nreplicas: 2\nstop_grace_period: 1s\n"
    "args: [/bin/sh, -c, \"sleep 1\"]\nports: [{container_port: 80, host_port: 8081}, {container_port: 53, protocol: udp}]\n"
    "http_port: 80\nprobes: {readiness: {http: {path: /healthz}, period_seconds: 1}}\n")
put("manifest", "volumes.yaml", "name: db\nwasm: db.wasm\nvolumes: [{name: data, path: /data}]\nvolume_lease: true\n"
    "secrets: [{secret: creds, path: /secrets, env: {PASSWORD: password}}]\nstrategy: {max_surge: 0, max_unavailable: 1}\n")
put("manifest", "anchors.yaml", "name: &n a\nwasm: *n\nenv: &e {A: 1, B: 2.5, C: true}\nargs: [*n, *n]\n")
put("manifest", "bad.yaml", "name: web\nwasm: w.wasm\nreplicas: lots\n")

# quantity
for i, q in enumerate(["500m", "1", "0.25", "64Mi", "1.5Gi", "500M", "1k", "1024", "99999999999Ti", ".5", "1e3"]):
    put("quantity", f"q{i}", q)

# layer: a valid one, and every escape the unpacker must refuse.
put("layer", "valid.tar", tar([("bin/", "dir", None), ("bin/busybox", "file", b"#!"), ("bin/sh", "sym", "busybox"),
                               ("bin/ls", "hard", "bin/busybox"), ("./etc/motd", "file", b"hi"),
                               ("etc/.wh.motd", "file", b""), ("var/", "dir", None), ("var/.wh..wh..opq", "file", b""),
                               ("run/fifo", "fifo", None), ("dev/mem", "chr", None)]))
put("layer", "dotdot.tar", tar([("a/../../outside/x", "file", b"pwned")]))
put("layer", "absolute.tar", tar([(OUTSIDE + "/x", "file", b"pwned")]))
put("layer", "symlink-escape.tar", tar([("evil", "sym", OUTSIDE), ("evil/x", "file", b"pwned")]))
put("layer", "symlink-relative.tar", tar([("evil", "sym", "../outside"), ("evil/secret", "file", b"pwned")]))
put("layer", "symlink-file.tar", tar([("s", "sym", OUTSIDE + "/secret"), ("s", "file", b"pwned")]))
put("layer", "hardlink-out.tar", tar([("x", "hard", OUTSIDE + "/secret"), ("y", "hard", "../outside/secret")]))
put("layer", "hardlink-through-symlink.tar", tar([("out", "sym", OUTSIDE), ("z", "hard", "out/secret"), ("z", "file", b"pwned")]))
put("layer", "whiteout-dotdot.tar", tar([(".wh...", "file", b""), ("a/.wh..wh..opq", "file", b"")]))
put("layer", "pax-long.tar", tar([("d/" + "x" * 200, "file", b"long"), ("l", "sym", "y" * 300)], tarfile.PAX_FORMAT))


# image_archive: a docker save archive and an OCI layout, each with one small layer.
def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


layer = tar([("hello", "file", b"hi\n")])
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"], "WorkingDir": "/"},
                     "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
docker_manifest = json.dumps([{"Config": "config.json", "RepoTags": ["hello:1"], "Layers": ["layer.tar"]}]).encode()
put("image_archive", "docker-save.tar", tar([("manifest.json", "file", docker_manifest), ("config.json", "file", config),
                                             ("layer.tar", "file", layer)]))
oci_manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest(oci_manifest), "size": len(oci_manifest),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
blob = lambda b: "blobs/sha256/" + digest(b)[7:]
put("image_archive", "oci-layout.tar", tar([("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", "file", index),
                                            (blob(oci_manifest), "file", oci_manifest), (blob(config), "file", config),
                                            (blob(layer), "file", layer)]))
nested = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": digest(oci_manifest), "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
outer = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(nested)}]}).encode()
put("image_archive", "oci-index.tar", tar([("index.json", "file", outer), (blob(nested), "file", nested),
                                           (blob(oci_manifest), "file", oci_manifest), (blob(config), "file", config),
                                           (blob(layer), "file", layer)]))

# api_requests: the first byte picks the type (see fuzz_targets/api_requests.rs).
spec = {"workload": {"wasm": "sha256:" + "0" * 64}, "resources": {"cpu": "100m", "memory": "64Mi"},
        "env": {"A": "1"}, "args": ["x"], "secrets": [{"secret": "db", "env": {"P": "password"}, "path": "/s"}],
        "volumes": [{"name": "data", "path": "/data"}], "allowed_hosts": ["api.example.com:443"]}
put("api_requests", "apply", b"\x00" + json.dumps({"replicas": 1, "spec": spec, "strategy": {"max_surge": 1},
                                                   "autoscale": {"min": 1, "max": 1, "target_cpu_percent": 50}}).encode())
image_spec = {"workload": {"image": "busybox:latest"}, "resources": {"cpu": "1", "memory": "1Gi"},
              "ports": [{"container_port": 80, "host_port": 8080}], "network": "bridge", "stop_grace_period": "10s",
              "probes": {"liveness": {"tcp": {"port": 80}}, "readiness": {"http": {"path": "/", "port": 80}}}}
put("api_requests", "apply-image", b"\x00" + json.dumps({"spec": image_spec}).encode())
put("api_requests", "secret", b"\x01" + json.dumps({"data": {"password": "hunter2", "tls.crt": "x"}, "overwrite": True}).encode())
put("api_requests", "register", b"\x02" + json.dumps({"name": "n1", "address": "http://127.0.0.1:7071", "labels": {"zone": "a"},
                                                       "capacity": {"cpu_millis": 4000, "memory_bytes": 4294967296},
                                                       "runtimes": ["wasm", "container"], "ingress": "http://127.0.0.1:8080"}).encode())
put("api_requests", "heartbeat", b"\x03" + json.dumps({"replicas": [{"id": "w-abc123", "generation": 1, "state": "running",
                                                        "cpu_seconds": 0.5, "memory_bytes": 1048576, "requests": 3}]}).encode())
put("api_requests", "scale", b"\x04" + b'{"replicas": 3}')
put("api_requests", "image", b"\x05" + json.dumps({"name": "busybox", "tag": "latest", "digest": "sha256:" + "0" * 64}).encode())
put("api_requests", "token", b"\x06" + b'{"name": "ci", "role": "read-only"}')
