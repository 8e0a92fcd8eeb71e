//! HTTPS and gRPC probes against real servers: a pod on the host's network whose
//! probes reach servers this test runs on loopback, so the test decides what the
//! probes see and watches the pod's readiness follow, as `kubectl` shows it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::ServingStatus;

use super::containerd::BUSYBOX;
use super::support::{eventually, free_port};
use super::{described, node_ready, pod_row, stack, NODE, WAIT};

/// An HTTPS server on `port` with the apiserver's certificate (any will do: the
/// kubelet does not verify it) answering 200 while `healthy`, else 503.
async fn https_server(pki: &std::path::Path, port: u16, healthy: Arc<AtomicBool>) {
    let certs = CertificateDer::pem_file_iter(pki.join("apiserver.crt"))
        .expect("certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate parses");
    let key = PrivateKeyDer::from_pem_file(pki.join("apiserver.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("https port");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, healthy) = (acceptor.clone(), healthy.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let answer: &[u8] = if healthy.load(Ordering::SeqCst) {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_probes_follow_their_servers() {
    let mut s = stack().await;
    node_ready(&mut s).await;
    let (https_port, grpc_port) = (free_port(), free_port());
    let https_ok = Arc::new(AtomicBool::new(true));
    https_server(&s.api.pki(), https_port, https_ok.clone()).await;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("capstan.Probe", ServingStatus::Serving)
        .await;
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve(([127, 0, 0, 1], grpc_port).into()),
    );

    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  nodeName: {NODE}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: https
    image: {BUSYBOX}
    command: [sleep, "3600"]
    readinessProbe: {{httpGet: {{scheme: HTTPS, path: /healthz, port: {https_port}}}, periodSeconds: 1}}
  - name: grpc
    image: {BUSYBOX}
    command: [sleep, "3600"]
    readinessProbe: {{grpc: {{port: {grpc_port}, service: capstan.Probe}}, periodSeconds: 1}}
"#
    );
    s.api
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .out();
    let ready = |want: &'static str| {
        let api = &s.api;
        async move {
            eventually(&format!("probed {want} ready"), WAIT, || {
                let row = pod_row(api, "probed");
                let ok = row.get(1).map(String::as_str) == Some(want)
                    && row.get(2).map(String::as_str) == Some("Running");
                async move { ok.then_some(()) }
            })
            .await;
        }
    };
    // The API defaults what the probes leave out, as upstream's.
    let describe = s.api.kubectl(&["describe", "pod", "probed"]).stdout;
    for line in [
        &format!("http-get https://:{https_port}/healthz delay=0s timeout=1s period=1s #success=1 #failure=3"),
        &format!("grpc <pod>:{grpc_port} capstan.Probe delay=0s timeout=1s period=1s #success=1 #failure=3"),
    ] {
        assert!(describe.contains(line.as_str()), "no {line:?} in {describe}");
    }
    // Both servers say healthy: an HTTPS answer with a certificate the kubelet does
    // not check, and SERVING for the named gRPC service.
    ready("2/2").await;
    https_ok.store(false, Ordering::SeqCst);
    ready("1/2").await;
    described(
        &s.api,
        "probed",
        &["Readiness probe failed: HTTP probe failed with statuscode: 503"],
    )
    .await;
    reporter
        .set_service_status("capstan.Probe", ServingStatus::NotServing)
        .await;
    ready("0/2").await;
    described(
        &s.api,
        "probed",
        &["Readiness probe failed: service unhealthy (responded with \"NOT_SERVING\")"],
    )
    .await;
    https_ok.store(true, Ordering::SeqCst);
    reporter
        .set_service_status("capstan.Probe", ServingStatus::Serving)
        .await;
    ready("2/2").await;
    grpc.abort();
    s.api
        .kubectl(&["delete", "pod", "probed", "--timeout=60s"])
        .out();
}
