//! Discovery documents: `/version`, `/api`, `/apis`, each group-version's
//! `APIResourceList`, and the OpenAPI v3 index and per-group-version documents that
//! kubectl reads to learn that the server validates fields itself (`fieldValidation`),
//! so `kubectl create -f` and `apply -f` work without `--validate=false`.

use serde_json::{json, Value};

use crate::resources::{ResourceType, RESOURCES};

/// The Kubernetes version the API matches (kubectl 1.32's).
pub const KUBE_VERSION: (&str, &str) = ("1", "32");

pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": format!("v{}.{}.0-capstan.{}", KUBE_VERSION.0, KUBE_VERSION.1, env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// The group versions served, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = group_versions()
        .into_iter()
        .find(|(g, _)| *g == group && !g.is_empty())?;
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv.clone()], "preferredVersion": gv}),
    )
}

fn resource_entries(r: &ResourceType) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        main["categories"] = json!(r.categories);
    }
    let mut out = vec![main];
    let sub = |name: &str, kind: &str, verbs: &[&str]| json!({"name": format!("{}/{name}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
    if r.status {
        out.push(sub("status", r.kind, &["get", "patch", "update"]));
    }
    if r.scale {
        let mut s = sub("scale", "Scale", &["get", "patch", "update"]);
        s["group"] = json!("autoscaling");
        s["version"] = json!("v1");
        out.push(s);
    }
    if r.kind == "Pod" {
        out.push(sub("binding", "Binding", &["create"]));
        out.push(sub("log", "Pod", &["get"]));
        out.push(sub("exec", "PodExecOptions", &["create", "get"]));
        out.push(sub("attach", "PodAttachOptions", &["create", "get"]));
        out.push(sub(
            "portforward",
            "PodPortForwardOptions",
            &["create", "get"],
        ));
        out.push(sub("eviction", "Eviction", &["create"]));
    }
    if r.kind == "Namespace" {
        out.push(sub("finalize", "Namespace", &["update"]));
    }
    out
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceType> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = rs.into_iter().flat_map(resource_entries).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The media type of aggregated discovery (`apidiscovery.k8s.io`, `version` v2 or
/// v2beta1), as kube-apiserver names it in Content-Type.
pub fn aggregated_media_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Aggregated discovery: every group (the core group alone for `/api`, the named
/// groups for `/apis`) with every version's resources and subresources in one
/// document, so a client learns the whole API in two requests instead of one per group
/// version.
pub fn aggregated(core: bool, version: &str) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for (g, v) in group_versions() {
        if g.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == g && r.version == v)
            .map(resource_discovery)
            .collect();
        let entry = json!({"version": v, "resources": resources, "freshness": "Current"});
        match items.iter_mut().find(|i| i["metadata"]["name"] == g) {
            Some(item) => {
                if let Some(vs) = item["versions"].as_array_mut() {
                    vs.push(entry);
                }
            }
            None => items.push(json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [entry],
            })),
        }
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

fn resource_discovery(r: &ResourceType) -> Value {
    let gvk = |group: &str, version: &str, kind: &str| json!({"group": group, "version": version, "kind": kind});
    let own = gvk(r.group, r.version, r.kind);
    let sub = |name: &str, kind: Value, verbs: &[&str]| json!({"subresource": name, "responseKind": kind, "verbs": verbs});
    let mut subs = Vec::new();
    if r.status {
        subs.push(sub("status", own.clone(), &["get", "patch", "update"]));
    }
    if r.scale {
        subs.push(sub(
            "scale",
            gvk("autoscaling", "v1", "Scale"),
            &["get", "patch", "update"],
        ));
    }
    if r.kind == "Pod" {
        subs.push(sub("binding", gvk("", "v1", "Binding"), &["create"]));
        subs.push(sub("log", own.clone(), &["get"]));
        for (name, kind) in [
            ("exec", "PodExecOptions"),
            ("attach", "PodAttachOptions"),
            ("portforward", "PodPortForwardOptions"),
        ] {
            subs.push(sub(name, gvk("", "v1", kind), &["create", "get"]));
        }
        subs.push(sub(
            "eviction",
            gvk("policy", "v1", "Eviction"),
            &["create"],
        ));
    }
    if r.kind == "Namespace" {
        subs.push(sub("finalize", own.clone(), &["update"]));
    }
    let mut out = json!({
        "resource": r.plural,
        "responseKind": own,
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        out["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        out["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        out["subresources"] = json!(subs);
    }
    out
}

/// The OpenAPI v3 index: one document per group version.
pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in group_versions() {
        let p = openapi_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// One group version's OpenAPI v3 document: every resource's item path with its verbs,
/// tagged with its group/version/kind, and the `fieldValidation` and `dryRun` parameters
/// on writes (what kubectl checks before it leaves validation to the server).
pub fn openapi_v3_doc(path: &str) -> Option<Value> {
    let (g, v) = group_versions()
        .into_iter()
        .find(|(g, v)| openapi_path(g, v) == path)?;
    let mut paths = serde_json::Map::new();
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = |verb: &str| {
            let mut o = json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            });
            if matches!(verb, "patch" | "put" | "post") {
                o["parameters"] = json!([
                    param("dryRun"),
                    param("fieldManager"),
                    param("fieldValidation")
                ]);
            }
            o
        };
        let base = format!("/{}", openapi_path(g, v));
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            coll.clone(),
            json!({"get": op("list"), "post": op("post"), "delete": op("deletecollection")}),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
