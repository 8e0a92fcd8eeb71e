//! The cluster domain's records, as CoreDNS's `kubernetes` plugin answers them, from a
//! [`Snapshot`]: `<svc>.<ns>.svc.<domain>` (the cluster IP; a headless Service's ready
//! endpoints; an ExternalName's CNAME), `<host>.<svc>.<ns>.svc.<domain>` (an endpoint of
//! a headless Service, by hostname or dashed IP), `_<port>._<proto>.<svc>.<ns>.svc.<domain>`
//! (SRV) and `<a-b-c-d>.<ns>.pod.<domain>` (a pod's dashed IP, CoreDNS's `pods
//! insecure`). Everything else under the domain does not exist.
//!
//! Pure, so every answer is unit-tested without sockets.

use std::net::Ipv4Addr;

use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::services::{Endpoint, ServiceInfo, Snapshot};

/// CoreDNS's default TTL for cluster records.
pub const TTL: u32 = 5;

/// The answer to one question.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The name is not in the cluster domain: ask upstream.
    NotOurs,
    /// NXDOMAIN.
    NoSuchName,
    /// The name exists but has no record of the type asked (NOERROR, no answers).
    NoData,
    /// Records.
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

fn a(owner: &str, ip: Ipv4Addr) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, TTL, RData::A(A(ip))))
}

/// The label a headless Service's endpoint is known by: its hostname, or its dashed IP.
fn host_label(e: &Endpoint) -> String {
    e.hostname
        .clone()
        .unwrap_or_else(|| e.ip.to_string().replace('.', "-"))
}

/// The domain's SOA record, for the authority section of negative answers (its
/// minimum is the negative-caching TTL).
pub fn soa(domain: &str) -> Option<Record> {
    let rdata = SOA::new(
        name(&format!("ns.dns.{domain}"))?,
        name(&format!("hostmaster.{domain}"))?,
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Some(Record::from_rdata(name(domain)?, TTL, RData::SOA(rdata)))
}

/// Answers `qname` (lowercase, without the final dot) of type `qtype` from `snap`.
pub fn resolve(snap: &Snapshot, domain: &str, qname: &str, qtype: RecordType) -> Outcome {
    let rest = if qname == domain {
        ""
    } else {
        match qname.strip_suffix(domain).and_then(|r| r.strip_suffix('.')) {
            Some(r) => r,
            None => return Outcome::NotOurs,
        }
    };
    let labels: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    let found = |answers: Vec<Record>, additionals: Vec<Record>| {
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Found {
                answers,
                additionals,
            }
        }
    };
    let service = |ns: &str, svc: &str| snap.services.get(&(ns.to_string(), svc.to_string()));
    match labels.as_slice() {
        [] => match qtype {
            RecordType::SOA => found(soa(domain).into_iter().collect(), Vec::new()),
            _ => Outcome::NoData,
        },
        ["svc"] | ["pod"] => Outcome::NoData,
        [ns, "svc"] | [ns, "pod"] => {
            if snap.services.keys().any(|(n, _)| n == ns) {
                Outcome::NoData
            } else {
                Outcome::NoSuchName
            }
        }
        [svc, ns, "svc"] => match service(ns, svc) {
            Some(s) => service_records(s, qname, qtype, domain),
            None => Outcome::NoSuchName,
        },
        [host, svc, ns, "svc"] => {
            let Some(s) = service(ns, svc) else {
                return Outcome::NoSuchName;
            };
            let ips: Vec<Ipv4Addr> = s
                .ready()
                .filter(|e| s.headless && host_label(e) == *host)
                .map(|e| e.ip)
                .collect();
            if ips.is_empty() {
                return Outcome::NoSuchName;
            }
            match qtype {
                RecordType::A => found(
                    ips.iter().filter_map(|ip| a(qname, *ip)).collect(),
                    Vec::new(),
                ),
                _ => Outcome::NoData,
            }
        }
        [port, proto, svc, ns, "svc"] => {
            let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_'))
            else {
                return Outcome::NoSuchName;
            };
            let Some(s) = service(ns, svc) else {
                return Outcome::NoSuchName;
            };
            let ports: Vec<_> = s
                .ports
                .iter()
                .filter(|p| p.name == port && p.protocol.lower() == proto)
                .collect();
            if ports.is_empty() {
                return Outcome::NoSuchName;
            }
            match qtype {
                RecordType::SRV => {
                    let (answers, additionals) = srv(s, qname, &ports, domain);
                    found(answers, additionals)
                }
                _ => Outcome::NoData,
            }
        }
        [ip, _ns, "pod"] => match ip.replace('-', ".").parse::<Ipv4Addr>() {
            Ok(addr) => match qtype {
                RecordType::A => found(a(qname, addr).into_iter().collect(), Vec::new()),
                _ => Outcome::NoData,
            },
            Err(_) => Outcome::NoSuchName,
        },
        _ => Outcome::NoSuchName,
    }
}

/// The records of a Service's own name.
fn service_records(s: &ServiceInfo, qname: &str, qtype: RecordType, domain: &str) -> Outcome {
    if let Some(target) = &s.external_name {
        // CNAME answers every type; the client follows it.
        let Some(t) = name(target.trim_end_matches('.')) else {
            return Outcome::NoData;
        };
        let Some(owner) = name(qname) else {
            return Outcome::NoSuchName;
        };
        return Outcome::Found {
            answers: vec![Record::from_rdata(owner, TTL, RData::CNAME(CNAME(t)))],
            additionals: Vec::new(),
        };
    }
    let addresses: Vec<Ipv4Addr> = match (s.headless, s.cluster_ip) {
        (true, _) => s.ready().map(|e| e.ip).collect(),
        (false, Some(ip)) => vec![ip],
        (false, None) => Vec::new(),
    };
    // A headless Service without ready endpoints has no name, as in CoreDNS.
    if s.headless && addresses.is_empty() {
        return Outcome::NoSuchName;
    }
    let (answers, additionals) = match qtype {
        RecordType::A => (
            addresses.iter().filter_map(|ip| a(qname, *ip)).collect(),
            Vec::new(),
        ),
        RecordType::SRV => {
            let ports: Vec<_> = s.ports.iter().collect();
            srv(s, qname, &ports, domain)
        }
        _ => (Vec::new(), Vec::new()),
    };
    if answers.is_empty() {
        Outcome::NoData
    } else {
        Outcome::Found {
            answers,
            additionals,
        }
    }
}

/// SRV records for `ports` of `s`, owned by `qname`: the Service's name for a cluster
/// IP, each ready endpoint's for a headless Service (with their A records).
fn srv(
    s: &ServiceInfo,
    qname: &str,
    ports: &[&crate::services::Port],
    domain: &str,
) -> (Vec<Record>, Vec<Record>) {
    let svc_name = format!("{}.{}.svc.{domain}", s.name, s.namespace);
    let Some(owner) = name(qname) else {
        return (Vec::new(), Vec::new());
    };
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for p in ports {
        if s.headless {
            let ready: Vec<&Endpoint> = s.ready().collect();
            // Equal weights summing to about 100, as CoreDNS spreads them.
            let weight = u16::try_from(100 / ready.len().max(1)).unwrap_or(100);
            for e in ready {
                let Some(port) = e.ports.get(&(p.name.clone(), p.protocol)) else {
                    continue;
                };
                let target = format!("{}.{svc_name}", host_label(e));
                let Some(t) = name(&target) else { continue };
                answers.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, weight, *port, t)),
                ));
                additionals.extend(a(&target, e.ip));
            }
        } else if let (Some(ip), Some(t)) = (s.cluster_ip, name(&svc_name)) {
            answers.push(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::SRV(SRV::new(0, 100, p.port, t)),
            ));
            additionals.extend(a(&svc_name, ip));
        }
    }
    (answers, additionals)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::services::{Port, Protocol};

    fn ep(ip: [u8; 4], ready: bool, hostname: Option<&str>) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            ready,
            hostname: hostname.map(str::to_string),
            node_name: None,
            ports: BTreeMap::from([(("http".to_string(), Protocol::Tcp), 8080)]),
        }
    }

    fn svc(name: &str, cluster_ip: Option<[u8; 4]>, endpoints: Vec<Endpoint>) -> ServiceInfo {
        ServiceInfo {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: cluster_ip.map(Ipv4Addr::from),
            headless: cluster_ip.is_none(),
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
            endpoints,
        }
    }

    fn snap() -> Snapshot {
        let mut ext = svc("ext", None, Vec::new());
        ext.headless = false;
        ext.kind = "ExternalName".into();
        ext.external_name = Some("example.org".into());
        let svcs = vec![
            svc(
                "web",
                Some([10, 96, 0, 20]),
                vec![ep([10, 88, 0, 5], true, None)],
            ),
            svc(
                "db",
                None,
                vec![
                    ep([10, 88, 0, 7], true, Some("db-0")),
                    ep([10, 88, 0, 8], false, None),
                    ep([10, 88, 0, 9], true, None),
                ],
            ),
            svc("empty", None, vec![ep([10, 88, 0, 8], false, None)]),
            ext,
        ];
        Snapshot {
            services: svcs
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), s))
                .collect(),
            synced: true,
        }
    }

    fn rdata(o: &Outcome) -> Vec<String> {
        match o {
            Outcome::Found { answers, .. } => {
                answers.iter().map(|r| r.data().to_string()).collect()
            }
            other => vec![format!("{other:?}")],
        }
    }

    const D: &str = "cluster.local";

    #[test]
    fn a_cluster_ip_service_resolves_to_its_cluster_ip() {
        let o = resolve(&snap(), D, "web.default.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&o), ["10.96.0.20"]);
        let o = resolve(
            &snap(),
            D,
            "web.default.svc.cluster.local",
            RecordType::AAAA,
        );
        assert_eq!(o, Outcome::NoData);
    }

    #[test]
    fn a_headless_service_resolves_to_its_ready_endpoints() {
        let o = resolve(&snap(), D, "db.default.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&o), ["10.88.0.7", "10.88.0.9"]);
        let o = resolve(
            &snap(),
            D,
            "db-0.db.default.svc.cluster.local",
            RecordType::A,
        );
        assert_eq!(rdata(&o), ["10.88.0.7"]);
        let o = resolve(
            &snap(),
            D,
            "10-88-0-9.db.default.svc.cluster.local",
            RecordType::A,
        );
        assert_eq!(rdata(&o), ["10.88.0.9"]);
        let o = resolve(
            &snap(),
            D,
            "10-88-0-8.db.default.svc.cluster.local",
            RecordType::A,
        );
        assert_eq!(o, Outcome::NoSuchName);
        let o = resolve(&snap(), D, "empty.default.svc.cluster.local", RecordType::A);
        assert_eq!(o, Outcome::NoSuchName);
    }

    #[test]
    fn srv_records_name_the_service_or_its_endpoints() {
        let o = resolve(
            &snap(),
            D,
            "_http._tcp.web.default.svc.cluster.local",
            RecordType::SRV,
        );
        assert_eq!(rdata(&o), ["0 100 80 web.default.svc.cluster.local."]);
        let o = resolve(
            &snap(),
            D,
            "_http._tcp.db.default.svc.cluster.local",
            RecordType::SRV,
        );
        assert_eq!(
            rdata(&o),
            [
                "0 50 8080 db-0.db.default.svc.cluster.local.",
                "0 50 8080 10-88-0-9.db.default.svc.cluster.local."
            ]
        );
        let o = resolve(
            &snap(),
            D,
            "_http._udp.web.default.svc.cluster.local",
            RecordType::SRV,
        );
        assert_eq!(o, Outcome::NoSuchName);
    }

    #[test]
    fn unknown_names_in_the_domain_do_not_exist_and_others_are_not_ours() {
        for n in [
            "nosuch.default.svc.cluster.local",
            "web.other.svc.cluster.local",
            "web.default.svc.cluster.local.default.svc.cluster.local",
            "x.cluster.local",
        ] {
            assert_eq!(
                resolve(&snap(), D, n, RecordType::A),
                Outcome::NoSuchName,
                "{n}"
            );
        }
        assert_eq!(
            resolve(&snap(), D, "example.org", RecordType::A),
            Outcome::NotOurs
        );
        assert_eq!(
            resolve(&snap(), D, "notcluster.local", RecordType::A),
            Outcome::NotOurs
        );
        assert_eq!(
            resolve(&snap(), D, "default.svc.cluster.local", RecordType::A),
            Outcome::NoData
        );
    }

    #[test]
    fn external_names_and_pod_names() {
        let o = resolve(&snap(), D, "ext.default.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&o), ["example.org."]);
        let o = resolve(
            &snap(),
            D,
            "10-88-0-5.default.pod.cluster.local",
            RecordType::A,
        );
        assert_eq!(rdata(&o), ["10.88.0.5"]);
    }
}
