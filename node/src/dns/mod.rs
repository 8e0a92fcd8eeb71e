//! Cluster DNS in the node agent: a DNS server on a node address the pods reach (the
//! kubelet's `--cluster-dns` points them at it), answering the cluster domain from
//! the Services and EndpointSlices ([`records`]) and relaying every other name to the
//! host's resolvers (from `--resolv-conf`).
//!
//! Messages are hickory's (`hickory-proto`); the serving loop is our own, UDP and TCP
//! on port 53, because relaying needs the client's query as it came (hickory-server's
//! handler hands out only a parsed request) and the whole server is this small.
//! A relay that finds no upstream answering in time answers SERVFAIL, never hangs.
//!
//! The listening address may not exist yet when the agent starts (the CNI bridge's
//! gateway appears with the first pod), so binding is retried until it works.

pub mod records;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use self::records::Outcome;
use crate::services::Snapshot;

/// How long one upstream gets to answer a relayed query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP payload we offer with EDNS (the DNS flag day's safe size).
const EDNS_PAYLOAD: u16 = 1232;

/// The DNS server's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it listens (UDP and TCP), usually `<node address>:53`.
    pub listen: SocketAddr,
    /// `--cluster-domain`.
    pub domain: String,
    /// Resolvers for names outside the cluster domain.
    pub upstreams: Vec<SocketAddr>,
}

impl Config {
    /// Upstreams from resolv.conf `nameserver` entries, leaving out our own address
    /// (a resolver asking itself would loop).
    pub fn upstreams_from(servers: &[String], listen: SocketAddr) -> Vec<SocketAddr> {
        servers
            .iter()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .filter(|a| *a != listen)
            .collect()
    }
}

struct Server {
    cfg: Config,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// Serves until the future is dropped.
pub async fn run(cfg: Config, snapshots: watch::Receiver<Arc<Snapshot>>) {
    let (udp, tcp) = bind(cfg.listen).await;
    tracing::info!(listen = %cfg.listen, domain = %cfg.domain, upstreams = ?cfg.upstreams, "cluster DNS serving");
    let server = Arc::new(Server { cfg, snapshots });
    let udp = Arc::new(udp);
    tokio::select! {
        () = serve_udp(server.clone(), udp) => {}
        () = serve_tcp(server, tcp) => {}
    }
}

/// Binds UDP and TCP on `listen`, retrying while the address is missing or taken.
async fn bind(listen: SocketAddr) -> (UdpSocket, TcpListener) {
    let mut warned = false;
    loop {
        let r = async {
            Ok::<_, std::io::Error>((
                UdpSocket::bind(listen).await?,
                TcpListener::bind(listen).await?,
            ))
        }
        .await;
        match r {
            Ok(pair) => return pair,
            Err(e) => {
                if !warned {
                    tracing::warn!(listen = %listen, error = %e, "cluster DNS cannot listen yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn serve_udp(server: Arc<Server>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns udp receive");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (server, socket) = (server.clone(), socket.clone());
        // One task per query: a relayed one may wait on an upstream.
        tokio::spawn(async move {
            if let Some(resp) = server.handle(&query, true).await {
                let _ = socket.send_to(&resp, peer).await;
            }
        });
    }
}

async fn serve_tcp(server: Arc<Server>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_connection(server.clone(), stream));
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns tcp accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length-prefixed messages on one connection, until the client goes quiet.
async fn tcp_connection(server: Arc<Server>, mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(resp) = server.handle(&query, false).await else {
            return;
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        if stream.write_all(&n.to_be_bytes()).await.is_err()
            || stream.write_all(&resp).await.is_err()
        {
            return;
        }
    }
}

impl Server {
    /// The response to one query message, or `None` when nothing can be said (not
    /// even a message id).
    async fn handle(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if req.message_type() != MessageType::Query || req.op_code() != OpCode::Query {
            return Message::error_msg(req.id(), req.op_code(), ResponseCode::NotImp)
                .to_vec()
                .ok();
        }
        let [q] = req.queries() else {
            return Message::error_msg(req.id(), req.op_code(), ResponseCode::FormErr)
                .to_vec()
                .ok();
        };
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let qname = qname.trim_end_matches('.');
        let snap = self.snapshots.borrow().clone();
        let outcome = records::resolve(&snap, &self.cfg.domain, qname, q.query_type());
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());
        if req.extensions().is_some() {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            resp.set_edns(e);
        }
        let negative = |resp: &mut Message, code| {
            resp.set_authoritative(true).set_response_code(code);
            resp.add_name_servers(records::soa(&self.cfg.domain));
        };
        match outcome {
            // Before the first lists are in, "no such Service" may be false: the client
            // is told to try again rather than to cache a negative answer.
            Outcome::NoSuchName | Outcome::NoData | Outcome::Found { .. } if !snap.synced => {
                resp.set_response_code(ResponseCode::ServFail);
            }
            Outcome::NotOurs => {
                if let Some(answer) = self.relay(query).await {
                    return Some(answer);
                }
                resp.set_response_code(ResponseCode::ServFail);
            }
            Outcome::NoSuchName => negative(&mut resp, ResponseCode::NXDomain),
            Outcome::NoData => negative(&mut resp, ResponseCode::NoError),
            Outcome::Found {
                answers,
                additionals,
            } => {
                resp.set_authoritative(true)
                    .add_answers(answers)
                    .add_additionals(additionals);
            }
        }
        tracing::debug!(name = %qname, qtype = %q.query_type(), code = %resp.response_code(), "dns query");
        let bytes = resp.to_vec().ok()?;
        let limit = req
            .extensions()
            .as_ref()
            .map(|e| e.max_payload().clamp(512, EDNS_PAYLOAD))
            .unwrap_or(512);
        if udp && bytes.len() > usize::from(limit) {
            // Too big for the datagram: the client retries over TCP.
            return resp.truncate().to_vec().ok();
        }
        Some(bytes)
    }

    /// Sends the query as it came to each upstream in turn; the first answer wins.
    async fn relay(&self, query: &[u8]) -> Option<Vec<u8>> {
        for up in &self.cfg.upstreams {
            let attempt = async {
                let local: SocketAddr = if up.is_ipv4() {
                    "0.0.0.0:0".parse().ok()?
                } else {
                    "[::]:0".parse().ok()?
                };
                let sock = UdpSocket::bind(local).await.ok()?;
                sock.connect(up).await.ok()?;
                sock.send(query).await.ok()?;
                let mut buf = vec![0u8; 4096];
                let n = sock.recv(&mut buf).await.ok()?;
                buf.truncate(n);
                Some(buf)
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Some(answer)) => return Some(answer),
                _ => tracing::debug!(upstream = %up, "dns upstream did not answer"),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::services::{Endpoint, Port, Protocol, ServiceInfo};

    /// A server whose cluster has one headless Service `many` with `endpoints` ready
    /// endpoints, relaying to `upstreams`.
    fn server(endpoints: u8, upstreams: Vec<SocketAddr>) -> Server {
        let svc = ServiceInfo {
            namespace: "default".into(),
            name: "many".into(),
            cluster_ip: None,
            headless: true,
            kind: "ClusterIP".into(),
            external_name: None,
            ports: vec![Port {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
            }],
            affinity_timeout: None,
            external_local: false,
            load_balancer_ips: Vec::new(),
            endpoints: (0..endpoints)
                .map(|i| Endpoint {
                    ip: Ipv4Addr::new(10, 88, 1, i),
                    ready: true,
                    hostname: None,
                    node_name: None,
                    ports: BTreeMap::new(),
                })
                .collect(),
        };
        let snap = Snapshot {
            services: BTreeMap::from([(("default".into(), "many".into()), svc)]),
            synced: true,
        };
        let (_tx, rx) = watch::channel(Arc::new(snap));
        Server {
            cfg: Config {
                listen: "127.0.0.1:53".parse().expect("address"),
                domain: "cluster.local".into(),
                upstreams,
            },
            snapshots: rx,
        }
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(
                Name::from_ascii(name).expect("name"),
                RecordType::A,
            ));
        m.to_vec().expect("encoded")
    }

    async fn ask(s: &Server, name: &str, udp: bool) -> Message {
        let bytes = s.handle(&query(name), udp).await.expect("an answer");
        Message::from_vec(&bytes).expect("a DNS message")
    }

    #[tokio::test]
    async fn cluster_names_are_answered_with_authority() {
        let s = server(3, Vec::new());
        let m = ask(&s, "many.default.svc.cluster.local.", true).await;
        assert_eq!(m.id(), 4242);
        assert!(m.authoritative());
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers().len(), 3);
        let m = ask(&s, "nosuch.default.svc.cluster.local.", true).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.name_servers().len(), 1, "the SOA for negative caching");
    }

    #[tokio::test]
    async fn cluster_names_fail_until_the_services_are_listed() {
        let s = server(3, Vec::new());
        let mut snap = (**s.snapshots.borrow()).clone();
        snap.synced = false;
        let (_tx, rx) = watch::channel(Arc::new(snap));
        let s = Server {
            cfg: s.cfg.clone(),
            snapshots: rx,
        };
        let m = ask(&s, "nosuch.default.svc.cluster.local.", true).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
        let s = server(100, Vec::new());
        let m = ask(&s, "many.default.svc.cluster.local.", true).await;
        assert!(m.truncated());
        assert!(m.answers().is_empty());
        let m = ask(&s, "many.default.svc.cluster.local.", false).await;
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 100);
    }

    #[tokio::test]
    async fn other_names_are_relayed_or_fail_without_hanging() {
        // No upstream at all.
        let s = server(0, Vec::new());
        let m = ask(&s, "example.org.", true).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        // An upstream that never answers: SERVFAIL after the upstream timeout.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let s = server(0, vec![silent.local_addr().expect("address")]);
        let started = std::time::Instant::now();
        let m = ask(&s, "example.org.", true).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert!(started.elapsed() < UPSTREAM_TIMEOUT * 2);
        // One that answers: its answer comes back as it sent it.
        let up = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let s = server(0, vec![up.local_addr().expect("address")]);
        let relay = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = up.recv_from(&mut buf).await.expect("query relayed");
            let mut m = Message::from_vec(&buf[..n]).expect("query");
            m.set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::Refused);
            up.send_to(&m.to_vec().expect("encoded"), peer)
                .await
                .expect("sent");
        });
        let m = ask(&s, "example.org.", true).await;
        relay.await.expect("relay");
        assert_eq!(m.id(), 4242);
        assert_eq!(m.response_code(), ResponseCode::Refused);
    }
}
