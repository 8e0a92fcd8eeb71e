//! kubectl's typed generator commands (`create deployment`, `run`, `expose`...), which
//! send their objects as Kubernetes protobuf: what the user sees, the stored object
//! (the same as when the same object arrives as JSON through `kubectl create -f`), and
//! upstream's errors for protobuf bodies that cannot be read.

use serde_json::{json, Value};

use crate::Stack;

/// What `kubectl get -o json` shows, less what differs between two creations of the same
/// object (identity, time, allocated addresses and ports, the namespace).
fn comparable(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "namespace",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
    }
    v
}

/// Runs a generator command in namespace `p` (a protobuf body), then sends the object
/// the same command prints with `--dry-run=client -o json` through `kubectl create -f -`
/// in namespace `j` (a JSON body), and checks both stored objects are the same. Returns
/// the protobuf-created object and what the user saw.
fn same_as_json(s: &Stack, args: &[&str], get: &[&str]) -> (Value, String) {
    let api = &s.api;
    let run = |ns: &str, extra: &[&str]| {
        // Flags go before a `--`, after which come the container's arguments.
        let at = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        let mut a: Vec<&str> = args[..at].to_vec();
        a.extend(["-n", ns]);
        a.extend(extra);
        a.extend(&args[at..]);
        api.kubectl(&a)
    };
    let created = run("p", &[]);
    let said = created.out().trim().to_string();
    let manifest = run("j", &["--dry-run=client", "-o", "json"]);
    let by_json = api.kubectl_stdin(&["create", "-n", "j", "-f", "-"], Some(manifest.out()));
    by_json.out();
    let read = |ns: &str| {
        let mut a: Vec<&str> = vec!["get", "-o", "json", "-n", ns];
        a.extend(get);
        api.kubectl(&a).json()
    };
    let (p, j) = (read("p"), read("j"));
    assert_eq!(
        comparable(p.clone()),
        comparable(j),
        "{args:?}: the protobuf body stored something else than the JSON one"
    );
    (p, said)
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T')
}

#[tokio::test(flavor = "multi_thread")]
async fn generator_commands_send_protobuf_and_store_what_json_would() {
    let s = Stack::start().await;
    let api = &s.api;
    for ns in ["p", "j"] {
        api.kubectl(&["create", "namespace", ns]).out();
    }

    // The body really is protobuf (kubectl -v=8 prints the request headers), and the
    // JSON answer is what kubectl shows.
    let created = api.kubectl(&[
        "create",
        "deployment",
        "probe",
        "--image=nginx:1.27",
        "-n",
        "p",
        "-v=8",
    ]);
    assert_eq!(created.out().trim(), "deployment.apps/probe created");
    assert!(
        created
            .stderr
            .contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{}",
        created.stderr
    );

    let (dep, said) = same_as_json(
        &s,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.27",
            "--replicas=3",
            "--port=80",
        ],
        &["deployment", "web"],
    );
    assert_eq!(said, "deployment.apps/web created");
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        dep["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "nginx");
    assert_eq!(c["image"], "nginx:1.27");
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert_eq!(
        dep["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert!(is_rfc3339(&dep["metadata"]["creationTimestamp"]), "{dep}");
    assert_eq!(dep["metadata"]["generation"], 1);

    // --replicas=0 is a pointer set to zero: kept, not defaulted to 1.
    let (zero, _) = same_as_json(
        &s,
        &[
            "create",
            "deployment",
            "idle",
            "--image=nginx:1.27",
            "--replicas=0",
        ],
        &["deployment", "idle"],
    );
    assert_eq!(zero["spec"]["replicas"], 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.properties");
    std::fs::write(&file, "color=blue\nsize=3\n").expect("write");
    let from_file = format!("--from-file={}", file.display());
    let (cm, said) = same_as_json(
        &s,
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
            &from_file,
        ],
        &["configmap", "settings"],
    );
    assert_eq!(said, "configmap/settings created");
    assert_eq!(
        cm["data"],
        json!({"mode": "fast", "app.properties": "color=blue\nsize=3\n"})
    );

    // Binary secret data round-trips byte for byte.
    let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    let bin = dir.path().join("blob");
    std::fs::write(&bin, &binary).expect("write");
    let from_bin = format!("--from-file=blob={}", bin.display());
    let (secret, said) = same_as_json(
        &s,
        &[
            "create",
            "secret",
            "generic",
            "blob",
            &from_bin,
            "--from-literal=user=admin",
        ],
        &["secret", "blob"],
    );
    assert_eq!(said, "secret/blob created");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"]["user"], "YWRtaW4=");
    let raw = api.kubectl(&[
        "get",
        "secret",
        "blob",
        "-n",
        "p",
        "-o",
        "jsonpath={.data.blob}",
    ]);
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.out().trim())
        .expect("base64");
    assert_eq!(decoded, binary);

    // The apiserver's own serving pair is a valid TLS pair.
    let pki = api.kubeconfig.parent().expect("dir").join("pki");
    let cert = format!("--cert={}", pki.join("apiserver.crt").display());
    let key = format!("--key={}", pki.join("apiserver.key").display());
    let (tls, said) = same_as_json(
        &s,
        &["create", "secret", "tls", "serving", &cert, &key],
        &["secret", "serving"],
    );
    assert_eq!(said, "secret/serving created");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    let pem = std::fs::read(pki.join("apiserver.crt")).expect("cert");
    assert_eq!(
        tls["data"]["tls.crt"],
        base64::engine::general_purpose::STANDARD.encode(&pem)
    );

    let (svc, said) = same_as_json(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "backend",
            "--tcp=5678:8080",
        ],
        &["service", "backend"],
    );
    assert_eq!(said, "service/backend created");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "5678-8080", "port": 5678, "protocol": "TCP", "targetPort": 8080}])
    );
    assert_eq!(svc["spec"]["selector"], json!({"app": "backend"}));

    let (np, said) = same_as_json(
        &s,
        &["create", "service", "nodeport", "edge", "--tcp=80:http"],
        &["service", "edge"],
    );
    assert_eq!(said, "service/edge created");
    assert_eq!(np["spec"]["type"], "NodePort");
    assert_eq!(np["spec"]["ports"][0]["targetPort"], "http");
    assert!(np["spec"]["ports"][0]["nodePort"].is_i64(), "{np}");

    let (sa, said) = same_as_json(
        &s,
        &["create", "serviceaccount", "robot"],
        &["serviceaccount", "robot"],
    );
    assert_eq!(said, "serviceaccount/robot created");
    assert_eq!(sa["metadata"]["name"], "robot");

    let (pod, said) = same_as_json(
        &s,
        &[
            "run",
            "shell",
            "--image=busybox:1.36",
            "--port=8080",
            "--labels=app=shell,tier=debug",
            "--restart=Never",
            "--env=MODE=debug",
            "--",
            "sleep",
            "3600",
        ],
        &["pod", "shell"],
    );
    assert_eq!(said, "pod/shell created");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["sleep", "3600"]));
    assert_eq!(c["env"], json!([{"name": "MODE", "value": "debug"}]));
    assert_eq!(
        c["ports"],
        json!([{"containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["status"]["phase"], "Pending");

    let (exposed, said) = same_as_json(
        &s,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8000",
            "--name=web-svc",
        ],
        &["service", "web-svc"],
    );
    assert_eq!(said, "service/web-svc exposed");
    assert_eq!(exposed["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(exposed["spec"]["ports"][0]["targetPort"], 8000);

    let (ing, said) = same_as_json(
        &s,
        &[
            "create",
            "ingress",
            "site",
            "--rule=shop.example.com/cart*=cart:8080",
            "--rule=shop.example.com/=front:http",
        ],
        &["ingress", "site"],
    );
    assert_eq!(said, "ingress.networking.k8s.io/site created");
    let paths = &ing["spec"]["rules"][0]["http"]["paths"];
    assert_eq!(
        paths[0],
        json!({"path": "/cart", "pathType": "Prefix", "backend": {"service": {"name": "cart", "port": {"number": 8080}}}})
    );
    assert_eq!(
        paths[1]["backend"]["service"]["port"],
        json!({"name": "http"})
    );

    let (pull, said) = same_as_json(
        &s,
        &[
            "create",
            "secret",
            "docker-registry",
            "pull",
            "--docker-server=registry.example.com",
            "--docker-username=u",
            "--docker-password=p",
        ],
        &["secret", "pull"],
    );
    assert_eq!(said, "secret/pull created");
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");

    // A Job's selector carries its uid, so it is checked by hand, not against JSON.
    let job = api.kubectl(&[
        "create",
        "job",
        "once",
        "--image=busybox:1.36",
        "-n",
        "p",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(job.out().trim(), "job.batch/once created");
    let job = api
        .kubectl(&["get", "job", "once", "-n", "p", "-o", "json"])
        .json();
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(job["spec"]["completions"], 1);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["echo", "hi"])
    );
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

    let ns = api.kubectl(&["create", "namespace", "team-a"]);
    assert_eq!(ns.out().trim(), "namespace/team-a created");
    let ns = api
        .kubectl(&["get", "namespace", "team-a", "-o", "json"])
        .json();
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team-a"})
    );
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");

    // Server-side dry run: defaulted and shown, never stored.
    let dry = api.kubectl(&[
        "create",
        "deployment",
        "ghost",
        "--image=nginx:1.27",
        "-n",
        "p",
        "--dry-run=server",
        "-o",
        "yaml",
    ]);
    let shown = dry.out();
    assert!(shown.contains("name: ghost"), "{shown}");
    assert!(shown.contains("progressDeadlineSeconds: 600"), "{shown}");
    assert!(shown.contains("maxSurge: 25%"), "{shown}");
    let gone = api.kubectl(&["get", "deployment", "ghost", "-n", "p"]);
    assert!(
        gone.err().contains("deployments.apps \"ghost\" not found"),
        "{}",
        gone.stderr
    );

    // Upstream's errors reach the user the same way as for JSON.
    let again = api.kubectl(&["create", "configmap", "settings", "-n", "p"]);
    assert!(
        again
            .err()
            .contains("configmaps \"settings\" already exists"),
        "{}",
        again.stderr
    );
    let bad = api.kubectl(&["create", "deployment", "Bad_Name", "--image=x", "-n", "p"]);
    assert!(
        bad.err()
            .contains("Deployment.apps \"Bad_Name\" is invalid"),
        "{}",
        bad.stderr
    );
}

/// Protobuf bodies that cannot be read get upstream's 400 and a Status, through kube-rs
/// as a raw HTTP client.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_protobuf_bodies_are_400_with_upstreams_message() {
    let s = Stack::start().await;
    let kc = kube::config::Kubeconfig::read_from(&s.api.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(cfg).expect("client");
    let post = |path: &str, body: Vec<u8>| {
        let client = client.clone();
        let req = http::Request::post(path.to_string())
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(body)
            .expect("request");
        async move { client.request_text(req).await }
    };
    let status = |r: Result<String, kube::Error>| match r {
        Err(kube::Error::Api(e)) => (e.code, e.reason, e.message),
        other => panic!("expected a Status, got {other:?}"),
    };
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, reason, message) = status(post(path, b"{\"kind\":\"Deployment\"}".to_vec()).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        message,
        "the object provided is unrecognized (must be of type Deployment): provided data does not appear to be a protobuf message, expected prefix [107 56 115 0] (7b226b696e64223a224465706c6f796d656e74227d)"
    );

    // The envelope of a ConfigMap (typeMeta v1/ConfigMap, raw = metadata.name "x"),
    // written out by hand: 0x0a typeMeta, 0x12 raw.
    let type_meta = [&[0x0a, 2][..], b"v1", &[0x12, 9], b"ConfigMap"].concat();
    let object = [&[0x0a, 3, 0x0a, 1][..], b"x"].concat();
    let envelope = |raw: &[u8]| {
        [
            &b"k8s\0"[..],
            &[0x0a, type_meta.len() as u8],
            &type_meta,
            &[0x12, raw.len() as u8],
            raw,
        ]
        .concat()
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    let ok = post(cms, envelope(&object)).await.expect("created");
    let ok: Value = serde_json::from_str(&ok).expect("JSON answer");
    assert_eq!(ok["metadata"]["name"], "x");

    // The object's message cut short inside a field.
    let (code, _, message) = status(post(cms, envelope(&object[..4])).await);
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: unexpected EOF"
    );
    // A kind for another endpoint.
    let (code, _, message) = status(post(path, envelope(&object)).await);
    assert_eq!(code, 400);
    assert_eq!(
        message,
        "the API version in the data (v1) does not match the expected API version (apps/v1)"
    );
    // The envelope cut short.
    let full = envelope(&object);
    let (code, _, _) = status(post(cms, full[..full.len() - 2].to_vec()).await);
    assert_eq!(code, 400);
    // Media types the server does not read still get a 415 naming those it does.
    let req = http::Request::post(cms)
        .header("content-type", "text/plain")
        .body(b"x".to_vec())
        .expect("request");
    let (code, reason, message) = status(client.request_text(req).await);
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
    assert_eq!(message, "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf");
    // Still the 3 MiB limit.
    let mut huge = envelope(&object);
    huge.resize(3 * 1024 * 1024 + 1, 0);
    let (code, reason, _) = status(post(cms, huge).await);
    assert_eq!((code, reason.as_str()), (413, "RequestEntityTooLarge"));
}
