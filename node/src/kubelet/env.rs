//! A container's environment, as the kubelet makes it when the container starts:
//! `envFrom` (whole ConfigMaps and Secrets, optionally prefixed), then `env` in order
//! (`$(VAR)` expanded against the variables before it and the service variables;
//! `valueFrom` a key of a ConfigMap or Secret, a downward API `fieldRef` or a
//! `resourceFieldRef`), then the service variables the container did not set itself.
//! The ConfigMaps and Secrets are read through the apiserver once per container start
//! ([`Sources::read`]); a missing one (unless `optional`) fails the start with the
//! kubelet's `CreateContainerConfigError` and is tried again on the next sync.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;

use super::cri::quantity;

/// Why a container's environment could not be made (the container's waiting message,
/// in the kubelet's words).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A ConfigMap or Secret the environment names does not exist and is not optional.
    #[error("{kind} \"{name}\" not found")]
    NotFound {
        /// `configmap` or `secret`, as the kubelet's object managers name them.
        kind: &'static str,
        name: String,
    },
    /// A `configMapKeyRef` or `secretKeyRef` names a key its object lacks.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    NoKey {
        key: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        namespace: String,
        name: String,
    },
    /// Reading a ConfigMap or Secret from the apiserver failed.
    #[error("{0}")]
    Read(String),
    /// A `resourceFieldRef` names a resource the kubelet does not expose.
    #[error("unsupported container resource : {0}")]
    Resource(String),
}

/// The ConfigMaps and Secrets one container's environment names, as read for its start
/// (`None`: not found). Only their `data` counts: a ConfigMap's `binaryData` is not
/// environment material, as in the kubelet.
#[derive(Default)]
pub struct Sources {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources {
    /// Reads every ConfigMap and Secret `c`'s `env` and `envFrom` name, each once.
    pub async fn read(client: &kube::Client, pod: &Pod, c: &Container) -> Result<Self, EnvError> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (mut cms, mut secrets) = (Vec::new(), Vec::new());
        for f in c.env_from.iter().flatten() {
            cms.extend(f.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(f.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            cms.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
        let mut out = Sources::default();
        let read_err = |e: kube::Error| EnvError::Read(e.to_string());
        for name in cms {
            if out.config_maps.contains_key(&name) {
                continue;
            }
            let got = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .map_err(read_err)?;
            let data = got.map(|cm| cm.data.unwrap_or_default());
            out.config_maps.insert(name, data);
        }
        for name in secrets {
            if out.secrets.contains_key(&name) {
                continue;
            }
            let got = Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .map_err(read_err)?;
            let data = got.map(|s| {
                let mut d: BTreeMap<String, String> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                // A Secret written with `stringData` and not yet merged into `data`.
                d.extend(s.string_data.unwrap_or_default());
                d
            });
            out.secrets.insert(name, data);
        }
        Ok(out)
    }
}

/// The node's allocatable CPU (cores) and memory (bytes): what a `resourceFieldRef` to
/// an unset limit reads, as the kubelet defaults such limits for the downward API.
pub struct Allocatable {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// What a container's environment is made of besides its own `env`: the values the
/// downward API's `fieldRef` can name, and the service variables.
pub struct FieldRefs<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    /// From [`service_env`]: after the container's own variables, less those it sets.
    pub service_env: &'a [(String, String)],
}

/// The variables the kubelet derives from Services (docker-links style):
/// `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT NAME>]`, `<SVC>_PORT` and
/// `<SVC>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`, for services with a cluster IP.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = svc
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let n = n.to_uppercase().replace('-', "_");
                out.push((format!("{prefix}_SERVICE_PORT_{n}"), p.port.to_string()));
            }
        }
        out.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let var = format!("{prefix}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((
                var.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{var}_PROTO"), pr.to_lowercase()));
            out.push((format!("{var}_PORT"), p.port.to_string()));
            out.push((format!("{var}_ADDR"), ip.clone()));
        }
    }
    out
}

fn field_ref(pod: &Pod, path: &str, f: &FieldRefs) -> Option<String> {
    match path {
        "status.podIP" | "status.podIPs" => Some(f.pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(f.host_ip.to_string()),
        _ => pod_field(pod, path),
    }
}

/// A downward API field of the pod's own object (its metadata, node and service
/// account); a label or annotation it does not have reads as empty, as upstream's.
pub fn pod_field(pod: &Pod, path: &str) -> Option<String> {
    let spec = pod.spec.as_ref();
    let key_of = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let k = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => spec?.service_account_name.clone(),
        _ => key_of(pod.metadata.labels.as_ref(), "metadata.labels['")
            .or_else(|| key_of(pod.metadata.annotations.as_ref(), "metadata.annotations['")),
    }
}

/// Expands `$(VAR)` references as the kubelet does: defined names are replaced, `$$`
/// escapes a `$`, anything else stays as written.
pub fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(j) if env.contains_key(&body[..j]) => {
                    out.push_str(&env[&body[..j]]);
                    rest = &body[j + 1..];
                }
                Some(j) => {
                    out.push_str(&rest[i..i + 2 + j + 1]);
                    rest = &body[j + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's variables so far, in order, and what `$(VAR)` can name: those, then
/// the service variables.
struct Env {
    vars: Vec<(String, String)>,
    known: HashMap<String, String>,
}

impl Env {
    /// Sets `name`, replacing an earlier value in place.
    fn set(&mut self, name: &str, value: String) {
        self.known.insert(name.to_string(), value.clone());
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_string(), value)),
        }
    }
}

/// A `resourceFieldRef`'s value: the container's limit or request in units of the
/// divisor (default 1), rounded up, an unset limit read as the node's allocatable.
pub fn resource_field_ref(
    pod: &Pod,
    c: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    node: &Allocatable,
) -> Result<String, EnvError> {
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|x| x.name == n)
            .unwrap_or(c),
        None => c,
    };
    let res = target.resources.clone().unwrap_or_default();
    let unsupported = || EnvError::Resource(r.resource.clone());
    let (which, what) = r.resource.split_once('.').ok_or_else(unsupported)?;
    let map = match which {
        "limits" => res.limits.unwrap_or_default(),
        "requests" => res.requests.unwrap_or_default(),
        _ => return Err(unsupported()),
    };
    let divisor = r
        .divisor
        .as_ref()
        .map(|d| d.0.as_str())
        .filter(|d| !d.is_empty());
    let (milli, default) = match what {
        "cpu" => (true, node.cpu_millis),
        "memory" => (false, node.memory_bytes),
        _ => return Err(unsupported()),
    };
    let value = match map.get(what).and_then(|q| quantity(&q.0, milli)) {
        Some(v) => v,
        None if which == "limits" => default,
        None => 0,
    };
    let divisor = divisor
        .and_then(|d| quantity(d, milli))
        .filter(|d| *d > 0)
        .unwrap_or(if milli { 1000 } else { 1 });
    // Rounded up without `value + divisor - 1`, which a huge quantity would overflow.
    Ok((value / divisor + i64::from(value % divisor != 0)).to_string())
}

/// A `configMapKeyRef` or `secretKeyRef`: the key's value, None if an optional source
/// or key is missing. `source` is the object's kind as the not-found and missing-key
/// messages spell it, its namespace and its name.
fn key_ref(
    data: Option<&BTreeMap<String, String>>,
    (kind, key_kind, namespace, name): (&'static str, &'static str, &str, &str),
    key: &str,
    optional: bool,
) -> Result<Option<String>, EnvError> {
    let Some(data) = data else {
        return if optional {
            Ok(None)
        } else {
            Err(EnvError::NotFound {
                kind,
                name: name.to_string(),
            })
        };
    };
    match data.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => Err(EnvError::NoKey {
            key: key.to_string(),
            kind: key_kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
    }
}

/// `c`'s environment (see the module documentation), from the ConfigMaps and Secrets
/// in `sources`.
pub fn resolve(
    pod: &Pod,
    c: &Container,
    f: &FieldRefs,
    node: &Allocatable,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = Env {
        vars: Vec::new(),
        known: f.service_env.iter().cloned().collect(),
    };
    let not_found = |kind: &'static str, name: &str| EnvError::NotFound {
        kind,
        name: name.to_string(),
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(r) = &from.config_map_ref {
            let data = sources.config_maps.get(&r.name).and_then(Option::as_ref);
            ("configmap", &r.name, r.optional, data)
        } else if let Some(r) = &from.secret_ref {
            let data = sources.secrets.get(&r.name).and_then(Option::as_ref);
            ("secret", &r.name, r.optional, data)
        } else {
            continue;
        };
        let Some(data) = data else {
            if optional == Some(true) {
                continue;
            }
            return Err(not_found(kind, name));
        };
        // Every key, as the 1.32 kubelet takes them (RelaxedEnvironmentVariableValidation,
        // on by default): it no longer skips keys that are not C-style names.
        for (k, v) in data {
            env.set(&format!("{prefix}{k}"), v.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let value = e.value.clone().unwrap_or_default();
        let v = if !value.is_empty() {
            expand(&value, &env.known)
        } else if let Some(from) = &e.value_from {
            if let Some(fr) = &from.field_ref {
                match field_ref(pod, &fr.field_path, f) {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_field_ref(pod, c, r, node)?
            } else if let Some(r) = &from.config_map_key_ref {
                let data = sources.config_maps.get(&r.name).and_then(Option::as_ref);
                let source = ("configmap", "ConfigMap", ns.as_str(), r.name.as_str());
                match key_ref(data, source, &r.key, r.optional == Some(true))? {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(r) = &from.secret_key_ref {
                let data = sources.secrets.get(&r.name).and_then(Option::as_ref);
                let source = ("secret", "Secret", ns.as_str(), r.name.as_str());
                match key_ref(data, source, &r.key, r.optional == Some(true))? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(&e.name, v);
    }
    let mut vars = env.vars;
    for (k, v) in f.service_env {
        if !vars.iter().any(|(name, _)| name == k) {
            vars.push((k.clone(), v.clone()));
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_references_expand_like_the_kubelet() {
        let env = HashMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("a$(A", &env), "a$(A");
    }

    #[test]
    fn services_become_docker_link_variables() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-svc"},
            "spec": {"clusterIP": "10.96.0.5",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }))
        .expect("service");
        let env: HashMap<String, String> = service_env(&[svc]).into_iter().collect();
        assert_eq!(env["MY_SVC_SERVICE_HOST"], "10.96.0.5");
        assert_eq!(env["MY_SVC_SERVICE_PORT"], "80");
        assert_eq!(env["MY_SVC_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["MY_SVC_PORT"], "tcp://10.96.0.5:80");
        assert_eq!(env["MY_SVC_PORT_80_TCP"], "tcp://10.96.0.5:80");
        assert_eq!(env["MY_SVC_PORT_80_TCP_PROTO"], "tcp");
        assert_eq!(env["MY_SVC_PORT_80_TCP_PORT"], "80");
        assert_eq!(env["MY_SVC_PORT_80_TCP_ADDR"], "10.96.0.5");
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"containers": containers},
        }))
        .expect("pod")
    }

    const NODE: Allocatable = Allocatable {
        cpu_millis: 2000,
        memory_bytes: 4 << 30,
    };

    fn sources() -> Sources {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Sources {
            config_maps: HashMap::from([
                (
                    "app".to_string(),
                    map(&[("MODE", "prod"), ("1bad", "x"), ("LEVEL", "info")]),
                ),
                ("gone".to_string(), None),
            ]),
            secrets: HashMap::from([("creds".to_string(), map(&[("PASSWORD", "s3cret")]))]),
        }
    }

    fn resolve_one(c: serde_json::Value) -> Result<Vec<(String, String)>, EnvError> {
        let p = pod(serde_json::json!([c]));
        let service_env = vec![
            ("DB_SERVICE_HOST".to_string(), "10.96.0.7".to_string()),
            ("MODE".to_string(), "from-service".to_string()),
        ];
        let f = FieldRefs {
            pod_ip: "10.244.0.5",
            host_ip: "192.0.2.1",
            service_env: &service_env,
        };
        let c = p.spec.as_ref().expect("spec").containers[0].clone();
        resolve(&p, &c, &f, &NODE, &sources())
    }

    #[test]
    fn env_from_then_env_then_the_service_variables_it_did_not_set() {
        let r = resolve_one(serde_json::json!({"name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "CFG_"},
                        {"configMapRef": {"name": "app"}},
                        {"secretRef": {"name": "creds"}},
                        {"configMapRef": {"name": "gone", "optional": true}}],
            "env": [
                {"name": "LEVEL", "value": "debug"},
                {"name": "URL", "value": "$(CFG_MODE)://$(DB_SERVICE_HOST)/$(PASSWORD)/$(NOPE)"},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                {"name": "OPTKEY", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "k", "optional": true}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ]}))
        .expect("resolves");
        let vars: Vec<(&str, &str)> = r.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            vars,
            [
                ("CFG_1bad", "x"),
                ("CFG_LEVEL", "info"),
                ("CFG_MODE", "prod"),
                // Not a C-style name, taken all the same (1.32's relaxed rule).
                ("1bad", "x"),
                ("LEVEL", "debug"),
                ("MODE", "prod"),
                ("PASSWORD", "s3cret"),
                ("URL", "prod://10.96.0.7/s3cret/$(NOPE)"),
                ("PW", "s3cret"),
                ("IP", "10.244.0.5"),
                ("DB_SERVICE_HOST", "10.96.0.7"),
            ]
        );
    }

    #[test]
    fn missing_sources_and_keys_fail_with_the_kubelets_words() {
        let err = |c: serde_json::Value| resolve_one(c).expect_err("fails").to_string();
        assert_eq!(
            err(serde_json::json!({"name": "c", "envFrom": [{"configMapRef": {"name": "gone"}}]})),
            "configmap \"gone\" not found"
        );
        assert_eq!(
            err(serde_json::json!({"name": "c", "envFrom": [{"secretRef": {"name": "nosecret"}}]})),
            "secret \"nosecret\" not found"
        );
        assert_eq!(
            err(serde_json::json!({"name": "c", "env": [{"name": "A",
                "valueFrom": {"configMapKeyRef": {"name": "app", "key": "NOPE"}}}]})),
            "couldn't find key NOPE in ConfigMap shop/app"
        );
        assert_eq!(
            err(serde_json::json!({"name": "c", "env": [{"name": "A",
                "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}}]})),
            "couldn't find key user in Secret shop/creds"
        );
    }

    #[test]
    fn resource_fields_read_limits_requests_and_the_node_for_unset_limits() {
        let r = resolve_one(serde_json::json!({"name": "c",
            "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}},
            "env": [
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
            ]}))
        .expect("resolves");
        let get = |k: &str| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("CPU"), Some("2"));
        assert_eq!(get("CPU_M"), Some("250"));
        assert_eq!(get("MEM_MI"), Some("64"));
        assert_eq!(get("MEM_REQ"), Some("0"));
        let r = resolve_one(serde_json::json!({"name": "c", "env": [
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Gi"}}}]}))
        .expect("resolves");
        let get = |k: &str| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!((get("CPU"), get("MEM")), (Some("2"), Some("4")));
        // A limit too large for an i64 reads as the largest one, without overflowing.
        let r = resolve_one(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "99999999999999999999999"}},
            "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}]}))
        .expect("resolves");
        assert_eq!(r[0].1, (i64::MAX / (1 << 20) + 1).to_string());
    }
}
