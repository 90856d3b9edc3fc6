//! The HTTP runtime with the SDK's example components: fresh instances per
//! request, deadlines, limits, admission, outbound HTTPS.

use super::outbound::outbound_tls;
use super::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::atomic::AtomicUsize;

#[test]
fn allowed_hosts_match_names_ports_and_wildcards() {
    let allowed: Vec<String> = ["api.example.com", "db.internal:8080", "*.svc.test"].map(String::from).to_vec();
    assert!(host_allowed(&allowed, "api.example.com", 80));
    assert!(host_allowed(&allowed, "API.example.com.", 443));
    assert!(!host_allowed(&allowed, "evil.example.com", 80));
    assert!(host_allowed(&allowed, "db.internal", 8080));
    assert!(!host_allowed(&allowed, "db.internal", 80));
    assert!(host_allowed(&allowed, "a.svc.test", 80));
    assert!(!host_allowed(&allowed, "svc.test", 80));
    assert!(!host_allowed(&[], "api.example.com", 80));
}

/// The SDK's `hello_http` example, when it has been built (`make wasm`).
fn hello_http() -> Option<Vec<u8>> {
    example("hello_http")
}

/// An SDK example component, when it has been built (`make wasm`).
fn example(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("SKIFF_WASM_P2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/examples"));
    let bytes = std::fs::read(dir.join(format!("{name}.wasm"))).ok();
    // Under `make test` (which sets the variable) a missing example is a failure.
    assert!(bytes.is_some() || std::env::var_os("SKIFF_WASM_P2").is_none(), "SKIFF_WASM_P2 lacks {name}");
    bytes
}

async fn call(rt: &HttpRuntime, replica: &Arc<HttpReplica>, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .uri(path)
        .header("host", "web.skiff.local")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = rt.handle(replica, req).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Replica `NAME-1` of deployment `name`, 64Mi per instance, no log.
fn test_replica(
    name: &str,
    pre: ProxyPre<HttpState>,
    env: Vec<(String, String)>,
    allowed_hosts: Vec<String>,
) -> Arc<HttpReplica> {
    Arc::new(HttpReplica {
        id: format!("{name}-1"),
        deployment: name.into(),
        revision: 1,
        pre,
        env,
        preopens: Vec::new(),
        usage: Default::default(),
        memory_limit: 64 << 20,
        allowed_hosts: Arc::new(allowed_hosts),
        log: None,
        inflight: AtomicUsize::new(0),
    })
}

/// Polls `done` until it holds; a test that waits must never wait forever.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_fresh_instances_deadlines_limits_and_admission() {
    let Some(bytes) = hello_http() else {
        eprintln!("skipping: hello_http not built (make wasm)");
        return;
    };
    assert!(is_http_component(&bytes));
    let data = std::env::temp_dir().join(format!("skiff-http-test-{}", std::process::id()));
    let config = HttpConfig { request_timeout: Duration::from_millis(500), concurrency: 2, ..Default::default() };
    let rt = Arc::new(HttpRuntime::new(&data, config).expect("runtime"));
    let hex = crate::blobs::sha256_hex(&bytes);
    let pre = rt.compile(&hex, Bytes::from(bytes)).await.expect("prepare");
    let replica = test_replica("web", pre, vec![("GREETING".into(), "hi".into())], vec!["example.com".into()]);
    rt.check_instantiable(&replica).await.expect("instantiable");
    let metrics = &crate::metrics::METRICS;
    let interrupted = || metrics.deadline_interruptions.with_label_values(&["web"]).get();
    let (interrupted_before, rejected_before) = (interrupted(), metrics.admission_rejections.get());
    assert_eq!(call(&rt, &replica, "/").await, (200, "hi from web-1\n".into()));
    // The answer can arrive before its handler task has let go of its
    // admission permit; on a loaded machine that lag is long enough for
    // a spinner below to be turned away. Wait until both slots are free.
    let all_free = || rt.admission.available_permits() == 2;
    wait_until("the first request's slot to come back", all_free).await;

    // Two handlers spin: the pool of two is full, so a third request is
    // turned away at once; the spinners get 504 at the deadline.
    let spin = |rt: Arc<HttpRuntime>, r: Arc<HttpReplica>| tokio::spawn(async move { call(&rt, &r, "/spin").await });
    let (a, b) = (spin(rt.clone(), replica.clone()), spin(rt.clone(), replica.clone()));
    wait_until("both spinners to be in flight", || replica.inflight() == 2 || a.is_finished() || b.is_finished()).await;
    assert!(!a.is_finished() && !b.is_finished(), "a spinner ended before the other started");
    let (status, body) = call(&rt, &replica, "/").await;
    assert_eq!((status, body.as_str()), (503, "node is serving its limit of 2 concurrent requests; retry\n"));
    for spun in [a.await.expect("spinner"), b.await.expect("spinner")] {
        assert_eq!(spun, (504, "web did not answer within 0.5s\n".into()));
    }
    assert_eq!(interrupted() - interrupted_before, 2, "both spinners counted as interrupted at the deadline");
    assert!(metrics.admission_rejections.get() > rejected_before, "the turned-away request counted");
    // The slots are back.
    wait_until("the spinners' slots to come back", all_free).await;
    assert_eq!(call(&rt, &replica, "/").await.0, 200);

    assert_eq!(call(&rt, &replica, "/grow").await, (500, "web exceeded its memory limit of 64Mi\n".into()));
    let (status, body) = call(&rt, &replica, "/call/127.0.0.1:9/").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    drop(rt);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_charges_its_cpu_time_to_the_replica() {
    let Some(bytes) = hello_http() else {
        eprintln!("skipping: hello_http not built (make wasm)");
        return;
    };
    let data = std::env::temp_dir().join(format!("skiff-http-cpu-test-{}", std::process::id()));
    let config = HttpConfig { request_timeout: Duration::from_millis(800), concurrency: 2, ..Default::default() };
    let rt = Arc::new(HttpRuntime::new(&data, config).expect("runtime"));
    let hex = crate::blobs::sha256_hex(&bytes);
    let pre = rt.compile(&hex, Bytes::from(bytes)).await.expect("prepare");
    let replica = test_replica("cpu", pre, Vec::new(), Vec::new());
    let cpu = || replica.usage.cpu_seconds();
    assert_eq!(call(&rt, &replica, "/").await.0, 200);
    let after_one = cpu();
    assert!(after_one > 0.0, "an answered request is charged some cpu");

    // The spinner runs until its 0.8 s deadline. It is charged its thread's
    // CPU time: never more than the wall time it ran, and (the bound is
    // loose, for a loaded machine) at least a tenth of it.
    let started = std::time::Instant::now();
    assert_eq!(call(&rt, &replica, "/spin").await.0, 504);
    let wall = started.elapsed().as_secs_f64();
    let spun = cpu() - after_one;
    eprintln!("one request: {after_one:.4}s of cpu; the spinner: {spun:.3}s of cpu in {wall:.3}s");
    assert!(spun <= wall + 0.01, "charged {spun:.3}s of cpu in {wall:.3}s");
    assert!(spun >= 0.08, "charged only {spun:.3}s of cpu for a 0.8s spin");
    drop(rt);
    let _ = std::fs::remove_dir_all(&data);
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1: the
/// CA's PEM, the server's certificate PEM and its PKCS#8 key PEM.
fn test_pki() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509, X509Name, X509NameBuilder};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    let key = || -> PKey<Private> { PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey") };
    let name = |cn: &str| -> X509Name {
        let mut n = X509NameBuilder::new().expect("name");
        n.append_entry_by_text("CN", cn).expect("cn");
        n.build()
    };
    let cert = |serial: u32, subject: &X509Name, issuer: &X509Name, key: &PKey<Private>| {
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("version");
        b.set_serial_number(&BigNum::from_u32(serial).and_then(|n| n.to_asn1_integer()).expect("serial"))
            .expect("serial");
        b.set_subject_name(subject).expect("subject");
        b.set_issuer_name(issuer).expect("issuer");
        b.set_pubkey(key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("time")).expect("not before");
        b.set_not_after(&Asn1Time::days_from_now(2).expect("time")).expect("not after");
        b
    };
    let (ca_key, ca_name) = (key(), name("skiff test CA"));
    let mut ca = cert(1, &ca_name, &ca_name, &ca_key);
    ca.append_extension(BasicConstraints::new().critical().ca().build().expect("bc")).expect("ext");
    ca.append_extension(KeyUsage::new().critical().key_cert_sign().build().expect("ku")).expect("ext");
    ca.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let ca = ca.build();
    let server_key = key();
    let mut server = cert(2, &name("localhost"), &ca_name, &server_key);
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&server.x509v3_context(Some(&ca), None))
        .expect("san");
    server.append_extension(san).expect("ext");
    server.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let server = server.build();
    (ca.to_pem().expect("pem"), server.to_pem().expect("pem"), server_key.private_key_to_pem_pkcs8().expect("pem"))
}

/// Outbound HTTPS from a guest (the `caller` example) to an allowed host on
/// loopback: verified against `--outbound-ca-file`, refused as a certificate
/// error without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_https_trusts_the_system_roots_and_the_ca_file() {
    let Some(bytes) = example("caller") else {
        eprintln!("skipping: caller not built (make wasm)");
        return;
    };
    let (ca, cert, key) = test_pki();
    let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(&cert, &key).expect("identity");
    let acceptor = tokio_native_tls::TlsAcceptor::from(
        tokio_native_tls::native_tls::TlsAcceptor::new(identity).expect("acceptor"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Serves until the test ends; a client that refuses the
        // certificate just ends its connection.
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nsecure\n";
            let _ = tls.write_all(answer).await;
            let _ = tls.shutdown().await;
        }
    });

    let data = std::env::temp_dir().join(format!("skiff-https-test-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("data dir");
    let ca_file = data.join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write the CA");
    let hex = crate::blobs::sha256_hex(&bytes);
    let fetch = format!("/fetch?url=https://localhost:{port}/hello");
    for trusted in [true, false] {
        let config =
            HttpConfig { concurrency: 2, outbound_ca_file: trusted.then(|| ca_file.clone()), ..Default::default() };
        let rt = HttpRuntime::new(&data, config).expect("runtime");
        let pre = rt.compile(&hex, Bytes::from(bytes.clone())).await.expect("prepare");
        let replica = test_replica("caller", pre, Vec::new(), vec![format!("localhost:{port}")]);
        let (status, body) = call(&rt, &replica, &fetch).await;
        if trusted {
            let want =
                format!("{{\"body\":\"secure\\n\",\"status\":200,\"url\":\"https://localhost:{port}/hello\"}}\n");
            assert_eq!((status, body), (200, want));
        } else {
            assert_eq!(status, 502, "{body}");
            assert!(body.contains("TlsCertificateError"), "{body}");
        }
    }
    // A CA file that cannot be used is one clear line at start.
    let err = outbound_tls(Some(&data.join("missing.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.starts_with("cannot read the outbound CA file"), "{err}");
    std::fs::write(data.join("empty.pem"), "nothing here\n").expect("write");
    let err = outbound_tls(Some(&data.join("empty.pem"))).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("holds no PEM certificate") || err.contains("is not PEM"), "{err}");
    server.abort();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn only_components_exporting_the_handler_are_http() {
    let module = wat::parse_str("(module)").expect("wat");
    assert!(!is_http_component(&module));
    let plain = wat::parse_str("(component)").expect("wat");
    assert!(!is_http_component(&plain));
    assert!(!is_http_component(b"not wasm"));
}
