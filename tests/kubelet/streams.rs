//! `kubectl logs`, `exec`, `attach` and `port-forward` end to end: the real kubectl
//! against the apiserver, which proxies to the kubelet's HTTPS server, which reads
//! containerd's CRI log files and relays the streams to containerd's streaming server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::containerd::BUSYBOX;
use super::support::{eventually, Apiserver};
use super::{jsonpath, node_ready, stack, NODE, WAIT};

/// What a kubectl run gave: its exit code, stdout and stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs kubectl with the admin kubeconfig, `stdin` fed and closed.
fn kubectl(api: &Apiserver, args: &[&str], stdin: Option<&str>) -> Run {
    kubectl_env(api, args, stdin, &[])
}

/// [`kubectl`] with environment variables.
fn kubectl_env(api: &Apiserver, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new("kubectl")
        .envs(env.iter().copied())
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let (Some(input), Some(mut s)) = (stdin, child.stdin.take()) {
        s.write_all(input.as_bytes()).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a kubectl that keeps running, its stdout lines arriving on the receiver.
fn kubectl_lines(api: &Apiserver, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn running(api: &Apiserver, pod: &str) -> bool {
    jsonpath(api, &["get", "pod", pod], "{.status.phase}").as_deref() == Some("Running")
}

#[tokio::test]
async fn kubectl_logs_and_exec_reach_real_containers() {
    let mut s = stack().await;
    node_ready(&mut s).await;
    let api = &s.api;
    let port = jsonpath(
        api,
        &["get", "node", NODE],
        "{.status.daemonEndpoints.kubeletEndpoint.Port}",
    );
    assert!(
        port.as_deref().is_some_and(|p| p != "10250" && p != "0"),
        "the node advertises its --port: {port:?}"
    );

    // `talker` says three lines, then one more each time /tmp/go appears (made by
    // exec, while a follow is under way). `restarts` fails once, then stays up, each
    // attempt saying which it is. `two` has two containers. `nowhere`'s image does
    // not exist.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'echo one; echo two; sleep 0.2; echo three >&2; while true; do if [ -f /tmp/go ]; then rm /tmp/go; echo late; fi; sleep 0.1; done']
---
apiVersion: v1
kind: Pod
metadata: {{name: restarts}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  volumes: [{{name: d, emptyDir: {{}}}}]
  containers:
  - name: c
    image: {BUSYBOX}
    volumeMounts: [{{name: d, mountPath: /data}}]
    command: [sh, -c, 'n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo attempt $n; if [ $n -lt 2 ]; then exit 1; fi; exec sleep 3600']
---
apiVersion: v1
kind: Pod
metadata: {{name: two}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: a, image: {BUSYBOX}, command: [sh, -c, 'echo from a; exec sleep 3600']}}
  - {{name: b, image: {BUSYBOX}, command: [sh, -c, 'echo from b; exec sleep 3600']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: brief}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sh, -c, 'echo a; sleep 3; echo b']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unscheduled}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nowhere}}
spec:
  nodeName: {NODE}
  containers:
  - {{name: c, image: capstan.local/no-such-image:1, imagePullPolicy: IfNotPresent}}
"#
    );
    let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest));
    assert!(out.ok, "{}", out.stderr);
    eventually("talker and two Running", WAIT, || {
        let ok = running(api, "talker") && running(api, "two");
        async move { ok.then_some(()) }
    })
    .await;

    // Plain logs: stdout and stderr as the container wrote them.
    let logs = eventually("talker's three lines", WAIT, || {
        let r = kubectl(api, &["logs", "talker"], None);
        let ok = r.code == Some(0) && r.stdout.lines().count() == 3;
        async move { ok.then_some(r.stdout) }
    })
    .await;
    assert_eq!(logs, "one\ntwo\nthree\n");
    // The kubelet itself lets in only certificates of the cluster CA.
    let url = format!(
        "https://127.0.0.1:{}/containerLogs/default/talker/c",
        port.as_deref().unwrap_or_default()
    );
    let anonymous = Command::new("curl")
        .args(["-sk", "--max-time", "10", &url])
        .output()
        .expect("curl runs");
    assert!(
        !anonymous.status.success(),
        "no client certificate: refused"
    );
    let pki = api.pki_dir();
    let admin = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--cert"])
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(&url)
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&admin.stdout), "one\ntwo\nthree\n");
    let r = kubectl(api, &["logs", "talker", "--tail", "1"], None);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "three\n"),
        "{}",
        r.stderr
    );
    let r = kubectl(api, &["logs", "talker", "--limit-bytes", "6"], None);
    assert_eq!(r.stdout, "one\ntw");
    let r = kubectl(api, &["logs", "talker", "--timestamps"], None);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    for (line, text) in lines.iter().zip(["one", "two", "three"]) {
        let (ts, rest) = line
            .split_once(' ')
            .expect("a timestamp, a space, the line");
        assert_eq!(rest, text);
        let parsed = chrono_like(ts);
        assert!(parsed, "RFC3339 with nine fraction digits: {ts:?}");
    }
    let r = kubectl(api, &["logs", "talker", "--since", "1h"], None);
    assert_eq!(r.stdout, "one\ntwo\nthree\n");

    // `-f` streams: a line written after the follow started arrives while it runs.
    let (mut follow, rx) = kubectl_lines(api, &["logs", "-f", "talker"]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    assert_eq!(seen, ["one", "two", "three"], "the follow's first lines");
    let r = kubectl(api, &["exec", "talker", "--", "touch", "/tmp/go"], None);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let late = rx.recv_timeout(WAIT);
    assert_eq!(
        late.as_deref(),
        Ok("late"),
        "a line written after the follow began"
    );
    assert!(
        matches!(follow.try_wait(), Ok(None)),
        "the follow goes on while the container runs"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    // A follow ends with the container, after its last line.
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["logs", "-f", "brief"])
        .stdin(Stdio::null())
        .output()
        .expect("kubectl logs -f runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the follow ended on its own"
    );

    // exec: stdout, stderr and the exit code come back apart.
    let r = kubectl(
        api,
        &[
            "exec",
            "talker",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(r.stdout, "out\n");
    assert!(r.stderr.contains("err\n"), "{}", r.stderr);
    assert_eq!(r.code, Some(3), "the command's exit code: {}", r.stderr);
    // That was a WebSocket (`v5.channel.k8s.io`), which kubectl 1.32 tries first: no
    // fallback to SPDY happened.
    let r = kubectl(api, &["exec", "-v=6", "talker", "--", "true"], None);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("101 Switching Protocols") && !r.stderr.contains("fallback"),
        "{}",
        r.stderr
    );
    // kubectl on SPDY (as older clients, and client-go by default): relayed as is.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let r = kubectl_env(
        api,
        &[
            "exec",
            "-v=6",
            "-i",
            "talker",
            "--",
            "sh",
            "-c",
            "cat; echo err >&2; exit 4",
        ],
        Some("over spdy\n"),
        &spdy,
    );
    assert_eq!(r.stdout, "over spdy\n", "{}", r.stderr);
    assert!(r.stderr.contains("err\n"), "{}", r.stderr);
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("POST https://") && l.contains("101 Switching Protocols")),
        "an SPDY upgrade (POST): {}",
        r.stderr
    );
    // stdin reaches the command, and its end ends `cat`.
    let r = kubectl(
        api,
        &["exec", "-i", "talker", "--", "cat"],
        Some("hi\nthere\n"),
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "hi\nthere\n"),
        "{}",
        r.stderr
    );
    // With a tty (kubectl wants a terminal on its stdin: script(1) gives it one).
    let inner = format!(
        "kubectl --kubeconfig {} exec -it talker -- sh -c 'tty; echo cols=$(stty size); exit 5'",
        api.kubeconfig.display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/"),
        "a terminal in the container: {text:?}"
    );
    assert!(text.contains("cols="), "{text:?}");
    assert_eq!(out.status.code(), Some(5), "{text:?}");

    // Errors, as upstream words them.
    let r = kubectl(
        api,
        &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
        None,
    );
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr
            .contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{}",
        r.stderr
    );
    let r = kubectl(api, &["logs", "two", "-c", "b"], None);
    assert_eq!(r.stdout, "from b\n", "{}", r.stderr);
    let r = kubectl(api, &["exec", "two", "-c", "b", "--", "echo", "in b"], None);
    assert_eq!(r.stdout, "in b\n", "{}", r.stderr);
    let r = kubectl(
        api,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/two/log?container=zz",
        ],
        None,
    );
    assert!(
        r.stderr.contains("container zz is not valid for pod two"),
        "{}",
        r.stderr
    );
    let r = kubectl(api, &["logs", "ghost"], None);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(
            "error from server (NotFound): pods \"ghost\" not found in namespace \"default\""
        ),
        "{}",
        r.stderr
    );
    let r = kubectl(
        api,
        &["get", "--raw", "/api/v1/namespaces/default/pods/ghost/log"],
        None,
    );
    assert!(r.stderr.contains("NotFound"), "{}", r.stderr);
    let r = kubectl(api, &["exec", "ghost", "--", "true"], None);
    assert!(
        r.stderr
            .contains("Error from server (NotFound): pods \"ghost\" not found"),
        "{}",
        r.stderr
    );
    let msg = eventually("nowhere's log refused while it waits", WAIT, || {
        let r = kubectl(api, &["logs", "nowhere"], None);
        let ok = r.stderr.contains("is waiting to start");
        async move { ok.then_some(r.stderr) }
    })
    .await;
    assert!(
        msg.contains("Error from server (BadRequest): container \"c\" in pod \"nowhere\" is waiting to start"),
        "{msg}"
    );
    // A pod on no node yet: no logs (upstream answers an empty body), no exec.
    let r = kubectl(api, &["logs", "unscheduled"], None);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""), "{}", r.stderr);
    let r = kubectl(api, &["exec", "unscheduled", "--", "true"], None);
    assert!(
        r.stderr
            .contains("pod unscheduled does not have a host assigned"),
        "{}",
        r.stderr
    );
    let r = kubectl(api, &["logs", "talker", "--previous"], None);
    assert!(
        r.stderr
            .contains("previous terminated container \"c\" in pod \"talker\" not found"),
        "{}",
        r.stderr
    );

    // `--previous`: the instance before the restart.
    eventually("restarts on its second attempt", WAIT, || {
        let r = kubectl(api, &["logs", "restarts"], None);
        let ok = r.stdout == "attempt 2\n";
        async move { ok.then_some(()) }
    })
    .await;
    let r = kubectl(api, &["logs", "restarts", "--previous"], None);
    assert_eq!(r.stdout, "attempt 1\n", "{}", r.stderr);

    // The apiserver counts them under upstream's verbs and subresources.
    let metrics = api.kubectl(&["get", "--raw", "/metrics"]);
    let counted = |parts: &[&str]| {
        metrics.stdout.lines().any(|l| {
            l.starts_with("apiserver_request_total{") && parts.iter().all(|p| l.contains(p))
        })
    };
    assert!(
        counted(&[
            r#"verb="CONNECT""#,
            r#"subresource="exec""#,
            r#"code="101""#
        ]),
        "exec upgrades counted"
    );
    assert!(
        counted(&[r#"verb="GET""#, r#"subresource="log""#, r#"code="200""#]),
        "logs counted"
    );
}

#[tokio::test]
async fn kubectl_port_forward_and_attach_reach_real_containers() {
    let mut s = stack().await;
    node_ready(&mut s).await;
    let api = &s.api;
    // `web` serves a page on 8080 inside its pod's network; `reader` answers one line
    // of its stdin.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {NODE}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir /www; echo hello from the pod > /www/index.html; exec httpd -f -p 8080 -h /www']
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  nodeName: {NODE}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'read line; echo "got $line"']
"#
    );
    let r = kubectl(api, &["apply", "-f", "-"], Some(&manifest));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for pod in ["web", "reader"] {
        eventually(&format!("{pod} Running"), WAIT, || {
            let ok = running(api, pod);
            async move { ok.then_some(()) }
        })
        .await;
    }

    // port-forward: a local port that reaches the pod's 8080, one connection after
    // another over the same forward.
    let (mut forward, lines) = kubectl_lines(api, &["port-forward", "pod/web", ":8080"]);
    let first = lines.recv_timeout(WAIT);
    let local = first
        .as_deref()
        .ok()
        .and_then(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
        .and_then(|l| l.strip_suffix(" -> 8080"))
        .and_then(|p| p.parse::<u16>().ok());
    let Some(local) = local else {
        let _ = forward.kill();
        let out = forward.wait_with_output().expect("kubectl ends");
        panic!(
            "no forwarding line: {first:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .expect("the forwarded port accepts");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .expect("request sent");
        let mut page = String::new();
        tokio::time::timeout(WAIT, conn.read_to_string(&mut page))
            .await
            .expect("the pod answers in time")
            .expect("the answer reads");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.ends_with("hello from the pod\n"), "{page}");
    }
    assert!(
        matches!(forward.try_wait(), Ok(None)),
        "the forward goes on after its connections end"
    );
    let _ = forward.kill();
    let _ = forward.wait();

    // attach: the container's own stdin and stdout (`stdinOnce`: it ends with them).
    let r = kubectl(api, &["attach", "-i", "reader"], Some("hello\n"));
    assert!(
        r.stdout.contains("got hello"),
        "{} / {}",
        r.stdout,
        r.stderr
    );
    eventually("reader Completed", WAIT, || {
        let phase = jsonpath(api, &["get", "pod", "reader"], "{.status.phase}");
        async move { (phase.as_deref() == Some("Succeeded")).then_some(()) }
    })
    .await;

    // Errors, as upstream words them.
    let r = kubectl(api, &["port-forward", "pod/ghost", ":80"], None);
    assert!(
        r.stderr.contains("pods \"ghost\" not found"),
        "{}",
        r.stderr
    );
    // Counted under upstream's verb and subresources.
    let metrics = api.kubectl(&["get", "--raw", "/metrics"]).stdout;
    for sub in ["portforward", "attach"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("apiserver_request_total{")
                    && l.contains(r#"verb="CONNECT""#)
                    && l.contains(&format!(r#"subresource="{sub}""#))
                    && l.contains(r#"code="101""#)),
            "{sub} upgrades counted"
        );
    }
}

/// `2006-01-02T15:04:05.000000000Z`: what upstream's `--timestamps` prints.
fn chrono_like(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 30
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[29] == b'Z'
        && b[20..29].iter().all(u8::is_ascii_digit)
}
