//! Container probes, as the kubelet's prober workers run them: one task per running
//! container and probe kind, waiting `initialDelaySeconds`, then probing every
//! `periodSeconds` with `timeoutSeconds`, flipping the result after
//! `successThreshold` / `failureThreshold` consecutive outcomes. Readiness feeds the
//! container's `ready` (false until the first success); a failed liveness or startup
//! probe stops the container with the grace period, and the restart policy takes it
//! from there. Liveness and readiness wait for the startup probe to succeed. Handlers:
//! exec (CRI ExecSync), tcpSocket, httpGet over HTTP or HTTPS (the certificate not
//! verified, as the kubelet's), and gRPC (`grpc.health.v1`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_proto::cri as api;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cri::Runtime;
use super::events::{About, Recorder};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

/// The probe results of every running container, by container id.
pub struct Prober {
    runtime: Runtime,
    events: Arc<Recorder>,
    ready: Mutex<HashMap<String, bool>>,
    started: Mutex<HashMap<String, bool>>,
    workers: Mutex<HashSet<(String, Kind)>>,
}

fn probe_of(c: &Container, kind: Kind) -> Option<&Probe> {
    match kind {
        Kind::Liveness => c.liveness_probe.as_ref(),
        Kind::Readiness => c.readiness_probe.as_ref(),
        Kind::Startup => c.startup_probe.as_ref(),
    }
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default)).unwrap_or(0))
}

/// What a worker needs to know about its container.
struct Target {
    id: String,
    container: Container,
    pod_ip: String,
    grace: i64,
    pod: Pod,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

impl Prober {
    pub fn new(runtime: Runtime, events: Arc<Recorder>) -> Prober {
        Prober {
            runtime,
            events,
            ready: Mutex::new(HashMap::new()),
            started: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashSet::new()),
        }
    }

    /// Starts the workers a running container's probes need (once per container).
    pub fn ensure(self: &Arc<Self>, pod: &Pod, c: &Container, id: &str, pod_ip: &str, grace: i64) {
        for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
            let Some(probe) = probe_of(c, kind).cloned() else {
                continue;
            };
            let fresh = self
                .workers
                .lock()
                .map(|mut w| w.insert((id.to_string(), kind)))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let t = Target {
                id: id.to_string(),
                container: c.clone(),
                pod_ip: pod_ip.to_string(),
                grace,
                pod: pod.clone(),
            };
            tokio::spawn(self.clone().worker(kind, probe, t));
        }
    }

    /// `ready` of a running container: its readiness probe's verdict, true without one.
    pub fn ready(&self, c: &Container, id: &str) -> bool {
        c.readiness_probe.is_none()
            || self
                .ready
                .lock()
                .ok()
                .and_then(|r| r.get(id).copied())
                .unwrap_or(false)
    }

    /// `started` of a running container: its startup probe succeeded (or it has none).
    pub fn started(&self, c: &Container, id: &str) -> bool {
        c.startup_probe.is_none()
            || self
                .started
                .lock()
                .ok()
                .and_then(|r| r.get(id).copied())
                .unwrap_or(false)
    }

    /// Forgets results of containers that are not running any more.
    pub fn retain(&self, running: &HashSet<String>) {
        if let Ok(mut r) = self.ready.lock() {
            r.retain(|id, _| running.contains(id));
        }
        if let Ok(mut s) = self.started.lock() {
            s.retain(|id, _| running.contains(id));
        }
    }

    async fn running(&self, id: &str) -> bool {
        let mut rt = self.runtime.clone();
        rt.container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
        .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32)
    }

    async fn worker(self: Arc<Self>, kind: Kind, probe: Probe, t: Target) {
        let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
        let (mut successes, mut failures) = (0, 0);
        while self.running(&t.id).await {
            let gated = kind != Kind::Startup && !self.started(&t.container, &t.id);
            if !gated {
                let result = self.probe(&probe, &t, timeout).await;
                let ok = result.is_ok();
                let failure = result.err().unwrap_or_default();
                if ok {
                    successes += 1;
                    failures = 0;
                } else {
                    failures += 1;
                    successes = 0;
                }
                match kind {
                    Kind::Readiness => {
                        let verdict = if successes >= success_threshold {
                            Some(true)
                        } else if failures >= failure_threshold {
                            Some(false)
                        } else {
                            None
                        };
                        if let (Some(v), Ok(mut r)) = (verdict, self.ready.lock()) {
                            let was = r.insert(t.id.clone(), v);
                            if !v && was != Some(false) {
                                self.unhealthy(&t, kind, &failure);
                            }
                        }
                    }
                    Kind::Startup if ok => {
                        if let Ok(mut s) = self.started.lock() {
                            s.insert(t.id.clone(), true);
                        }
                        break;
                    }
                    Kind::Liveness | Kind::Startup if failures >= failure_threshold => {
                        let pod = t.pod.metadata.name.clone().unwrap_or_default();
                        tracing::info!(pod = %pod, container = %t.container.name, probe = ?kind,
                                       "probe failed; container will be restarted");
                        self.unhealthy(&t, kind, &failure);
                        self.events.record(
                            &t.pod,
                            About::Container(&t.container.name),
                            false,
                            "Killing",
                            format!(
                                "Container {} failed {} probe, will be restarted",
                                t.container.name,
                                kind.name().to_lowercase()
                            ),
                        );
                        let mut rt = self.runtime.clone();
                        let grace = probe.termination_grace_period_seconds.unwrap_or(t.grace);
                        if let Err(e) = rt
                            .stop_container(api::StopContainerRequest {
                                container_id: t.id.clone(),
                                timeout: grace,
                            })
                            .await
                        {
                            tracing::warn!(pod = %pod, error = %e, "stopping container after a failed probe");
                        }
                        break;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(period).await;
        }
        if let Ok(mut w) = self.workers.lock() {
            w.remove(&(t.id.clone(), kind));
        }
    }

    fn unhealthy(&self, t: &Target, kind: Kind, failure: &str) {
        self.events.record(
            &t.pod,
            About::Container(&t.container.name),
            true,
            "Unhealthy",
            format!("{} probe failed: {failure}", kind.name()),
        );
    }

    /// Runs one probe: Ok, or why it failed (for the Unhealthy event).
    async fn probe(&self, probe: &Probe, t: &Target, timeout: Duration) -> Result<(), String> {
        if let Some(exec) = &probe.exec {
            let mut rt = self.runtime.clone();
            let r = rt
                .exec_sync(api::ExecSyncRequest {
                    container_id: t.id.clone(),
                    cmd: exec.command.clone().unwrap_or_default(),
                    timeout: i64::try_from(timeout.as_secs()).unwrap_or(1),
                })
                .await;
            return match r {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.exit_code == 0 {
                        Ok(())
                    } else {
                        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                        out += &String::from_utf8_lossy(&r.stderr);
                        Err(out.trim().to_string())
                    }
                }
                Err(e) => Err(e.message().to_string()),
            };
        }
        let port = |p: &IntOrString| -> Option<u16> {
            match p {
                IntOrString::Int(i) => u16::try_from(*i).ok(),
                IntOrString::String(name) => t
                    .container
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .and_then(|cp| u16::try_from(cp.container_port).ok()),
            }
        };
        if let Some(tcp) = &probe.tcp_socket {
            let host = tcp.host.clone().unwrap_or_else(|| t.pod_ip.clone());
            let Some(p) = port(&tcp.port) else {
                return Err(format!("unknown port {:?}", tcp.port));
            };
            let connect = tokio::net::TcpStream::connect((host.as_str(), p));
            return match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{p}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{p}: i/o timeout")),
            };
        }
        if let Some(http) = &probe.http_get {
            let https = http.scheme.as_deref() == Some("HTTPS");
            let host = http.host.clone().unwrap_or_else(|| t.pod_ip.clone());
            let Some(p) = port(&http.port) else {
                return Err(format!("unknown port {:?}", http.port));
            };
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{p}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
            );
            for h in http.http_headers.iter().flatten() {
                req += &format!("{}: {}\r\n", h.name, h.value);
            }
            req += "\r\n";
            let request = async {
                let s = tokio::net::TcpStream::connect((host.as_str(), p)).await?;
                if !https {
                    return status_line(s, &req).await;
                }
                // As the kubelet: TLS without verifying the container's certificate.
                let tls = tls_connector().map_err(std::io::Error::other)?;
                let s = tls.connect(server_name(&host), s).await?;
                status_line(s, &req).await
            };
            let scheme = if https { "https" } else { "http" };
            let url = format!("{scheme}://{host}:{p}{path}");
            return match tokio::time::timeout(timeout, request).await {
                Ok(Ok(head)) => {
                    let code = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse::<u16>().ok())
                        .unwrap_or(0);
                    if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP probe failed with statuscode: {code}"))
                    }
                }
                Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
                Err(_) => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            };
        }
        if let Some(grpc) = &probe.grpc {
            let host = t.pod_ip.clone();
            let addr = format!("{host}:{}", grpc.port);
            return grpc_probe(&addr, grpc.service.clone().unwrap_or_default(), timeout).await;
        }
        Ok(())
    }
}

/// Sends `req` and returns the start of the answer (its status line).
async fn status_line<S>(mut s: S, req: &str) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// The TLS client of HTTPS probes: any certificate, as the kubelet's
/// `InsecureSkipVerify` (containers serve self-signed ones), made once; a configuration
/// rustls refuses fails every HTTPS probe, saying why.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONNECTOR: std::sync::OnceLock<Result<tokio_rustls::TlsConnector, String>> =
        std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            capstan_client::tls::any_server_cert_client()
                .map(|b| tokio_rustls::TlsConnector::from(Arc::new(b.with_no_client_auth())))
                .map_err(|e| format!("TLS client configuration: {e}"))
        })
        .clone()
}

/// The name a probe's TLS handshake presents: the host as an IP or DNS name.
fn server_name(host: &str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
    })
}

/// A gRPC probe: `grpc.health.v1.Health/Check` on `addr` over plain HTTP/2 for
/// `service`, healthy only if it answers SERVING; failures in the kubelet's words.
async fn grpc_probe(addr: &str, service: String, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?
        .user_agent("kube-probe/1.32")
        .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?
        .connect_timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("error: failed to connect service at {addr:?}: {e}")),
        Err(_) => {
            return Err(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_duration(timeout)
            ))
        }
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service });
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(r)) => {
            let status = r.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                let name = ServingStatus::try_from(status)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_else(|_| status.to_string());
                Err(format!("service unhealthy (responded with {name:?})"))
            }
        }
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Err(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Ok(Err(s)) => Err(format!(
            "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        )),
    }
}

/// A whole-second duration as Go prints it (`1s`, `1m30s`).
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
