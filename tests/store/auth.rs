//! Authentication as a user sees it through the real `etcdctl` and `etcd-client`: users,
//! roles and key-range permissions, enabling and disabling auth, the errors etcd
//! prints, and auth state surviving a restart while tokens do not.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::support::{eventually, Server};

const ROOT: &str = "--user=root:rootpw";

/// Creates root, a `reader` role (read under `/app/`, read-write on `/x`) granted to
/// alice, and enables auth.
fn setup(s: &Server) {
    assert_eq!(
        s.etcdctl(&["user", "add", "root", "--new-user-password=rootpw"])
            .out(),
        "User root created\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "add", "alice", "--new-user-password=apw"])
            .out(),
        "User alice created\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "add", "reader"]).out(),
        "Role reader created\n"
    );
    assert_eq!(
        s.etcdctl(&[
            "role",
            "grant-permission",
            "reader",
            "read",
            "/app/",
            "--prefix"
        ])
        .out(),
        "Role reader updated\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "grant-permission", "reader", "readwrite", "/x"])
            .out(),
        "Role reader updated\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "grant-role", "alice", "reader"]).out(),
        "Role reader is granted to user alice\n"
    );
    // etcdctl creates the root role and grants it to root when the server asks for it.
    assert_eq!(
        s.etcdctl(&["auth", "enable"]).out(),
        "Authentication Enabled\n"
    );
}

#[tokio::test]
async fn users_roles_and_permissions_like_etcd() {
    let s = Server::start().await;
    assert!(s
        .etcdctl(&["auth", "enable"])
        .err()
        .contains("Error: etcdserver: root user does not exist"));
    assert!(s
        .etcdctl(&["user", "add", "", "--new-user-password=x"])
        .err()
        .contains("etcdserver: user name is empty"));

    assert_eq!(
        s.etcdctl(&["user", "add", "root", "--new-user-password=rootpw"])
            .out(),
        "User root created\n"
    );
    assert!(s
        .etcdctl(&["user", "add", "root", "--new-user-password=x"])
        .err()
        .contains("Error: etcdserver: user name already exists"));
    assert_eq!(
        s.etcdctl(&["user", "add", "alice", "--new-user-password=apw"])
            .out(),
        "User alice created\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "add", "reader"]).out(),
        "Role reader created\n"
    );
    assert!(s
        .etcdctl(&["role", "add", "reader"])
        .err()
        .contains("Error: etcdserver: role name already exists"));
    for perm in [
        &["read", "/app/", "--prefix"][..],
        &["readwrite", "/x"],
        &["write", "a", "z"],
        &["read", "/from", "--from-key"],
    ] {
        let mut args = vec!["role", "grant-permission", "reader"];
        args.extend_from_slice(perm);
        assert_eq!(s.etcdctl(&args).out(), "Role reader updated\n");
    }
    let reader =
        "Role reader\nKV Read:\n\t[/app/, /app0) (prefix /app/)\n\t[/from, <open ended>\n\t/x\n\
                  KV Write:\n\t/x\n\t[a, z)\n";
    assert_eq!(s.etcdctl(&["role", "get", "reader"]).out(), reader);
    // Sorted by key; READ (0) is omitted from the JSON as proto3 defaults are.
    let j = s.etcdctl(&["role", "get", "reader", "-w", "json"]).json();
    assert_eq!(
        j["perm"],
        serde_json::json!([
            {"key": "L2FwcC8=", "range_end": "L2FwcDA="},
            {"key": "L2Zyb20=", "range_end": "AA=="},
            {"permType": 2, "key": "L3g="},
            {"permType": 1, "key": "YQ==", "range_end": "eg=="},
        ])
    );
    assert!(s
        .etcdctl(&["user", "grant-role", "alice", "nope"])
        .err()
        .contains("etcdserver: role name not found"));
    assert!(s
        .etcdctl(&["user", "grant-role", "nope", "reader"])
        .err()
        .contains("etcdserver: user name not found"));
    assert_eq!(
        s.etcdctl(&["user", "grant-role", "alice", "reader"]).out(),
        "Role reader is granted to user alice\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "get", "alice"]).out(),
        "User: alice\nRoles: reader\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "get", "alice", "--detail"]).out(),
        format!("User: alice\n\n{reader}")
    );
    assert_eq!(
        s.etcdctl(&["user", "get", "alice", "-w", "json"]).json()["roles"],
        serde_json::json!(["reader"])
    );
    assert!(s
        .etcdctl(&["user", "get", "nope"])
        .err()
        .contains("etcdserver: user name not found"));
    assert!(s
        .etcdctl(&["role", "get", "nope"])
        .err()
        .contains("etcdserver: role name not found"));
    assert_eq!(s.etcdctl(&["user", "list"]).out(), "alice\nroot\n");
    assert_eq!(s.etcdctl(&["role", "list"]).out(), "reader\n");

    assert_eq!(
        s.etcdctl(&["role", "revoke-permission", "reader", "a", "z"])
            .out(),
        "Permission of range [a, z) is revoked from role reader\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "revoke-permission", "reader", "/from", "--from-key"])
            .out(),
        "Permission of range [/from, <open ended> is revoked from role reader\n"
    );
    assert_eq!(
        s.etcdctl(&["role", "revoke-permission", "reader", "/x"])
            .out(),
        "Permission of key /x is revoked from role reader\n"
    );
    assert!(s
        .etcdctl(&["role", "revoke-permission", "reader", "/x"])
        .err()
        .contains("etcdserver: permission is not granted to the role"));
    assert!(s
        .etcdctl(&["user", "revoke-role", "root", "reader"])
        .err()
        .contains("etcdserver: role is not granted to the user"));

    // Deleting a role takes it away from its users too.
    assert_eq!(
        s.etcdctl(&["role", "delete", "reader"]).out(),
        "Role reader deleted\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "get", "alice"]).out(),
        "User: alice\nRoles:\n"
    );
    assert_eq!(
        s.etcdctl(&["user", "delete", "alice"]).out(),
        "User alice deleted\n"
    );
    assert!(s
        .etcdctl(&["user", "delete", "alice"])
        .err()
        .contains("etcdserver: user name not found"));
    assert_eq!(s.etcdctl(&["user", "list"]).out(), "root\n");
}

#[tokio::test]
async fn enabled_auth_checks_every_request() {
    let s = Server::start().await;
    setup(&s);
    assert_eq!(
        s.etcdctl(&["role", "list"]).err().lines().last(),
        Some("Error: etcdserver: user name is empty")
    );
    assert_eq!(s.etcdctl(&[ROOT, "role", "list"]).out(), "reader\nroot\n");
    assert_eq!(
        s.etcdctl(&[ROOT, "user", "get", "root"]).out(),
        "User: root\nRoles: root\n"
    );
    assert_eq!(s.etcdctl(&[ROOT, "put", "/app/a", "1"]).out(), "OK\n");
    assert_eq!(s.etcdctl(&[ROOT, "put", "/b", "2"]).out(), "OK\n");

    let alice = "--user=alice:apw";
    assert_eq!(s.etcdctl(&[alice, "get", "/app/a"]).out(), "/app/a\n1\n");
    assert_eq!(
        s.etcdctl(&[alice, "get", "/app/", "--prefix"]).out(),
        "/app/a\n1\n"
    );
    assert_eq!(s.etcdctl(&[alice, "put", "/x", "2"]).out(), "OK\n");
    let denied = "Error: etcdserver: permission denied\n";
    assert!(s.etcdctl(&[alice, "get", "/b"]).err().ends_with(denied));
    assert!(s
        .etcdctl(&[alice, "get", "/", "--prefix"])
        .err()
        .ends_with(denied));
    assert!(s
        .etcdctl(&[alice, "put", "/app/a", "2"])
        .err()
        .ends_with(denied));
    assert!(s.etcdctl(&[alice, "del", "/app/a"]).err().ends_with(denied));
    // Users may read themselves and their roles, and nothing else of auth.
    assert_eq!(
        s.etcdctl(&[alice, "user", "get", "alice"]).out(),
        "User: alice\nRoles: reader\n"
    );
    assert!(s
        .etcdctl(&[alice, "role", "get", "reader"])
        .out()
        .starts_with("Role reader\n"));
    assert!(s
        .etcdctl(&[alice, "user", "get", "root"])
        .err()
        .ends_with(denied));
    assert!(s
        .etcdctl(&[alice, "role", "get", "root"])
        .err()
        .ends_with(denied));
    assert!(s.etcdctl(&[alice, "user", "list"]).err().ends_with(denied));
    assert!(s
        .etcdctl(&[alice, "user", "add", "eve", "--new-user-password=e"])
        .err()
        .ends_with(denied));
    assert!(s
        .etcdctl(&[alice, "auth", "disable"])
        .err()
        .ends_with(denied));

    let failed = "Error: etcdserver: authentication failed, invalid user ID or password\n";
    assert!(s
        .etcdctl(&["--user=alice:wrong", "get", "/app/a"])
        .err()
        .ends_with(failed));
    assert!(s
        .etcdctl(&["--user=nobody:x", "get", "/app/a"])
        .err()
        .ends_with(failed));
    assert!(s
        .etcdctl(&["get", "/app/a"])
        .err()
        .ends_with("Error: etcdserver: user name is empty\n"));

    // The root user and its root role are locked in while auth is on.
    let mgmt = "Error: etcdserver: invalid auth management\n";
    assert!(s
        .etcdctl(&[ROOT, "user", "delete", "root"])
        .err()
        .ends_with(mgmt));
    assert!(s
        .etcdctl(&[ROOT, "role", "delete", "root"])
        .err()
        .ends_with(mgmt));
    assert!(s
        .etcdctl(&[ROOT, "user", "revoke-role", "root", "root"])
        .err()
        .ends_with(mgmt));

    // A new password takes effect at once.
    assert_eq!(
        s.etcdctl_stdin(
            &[ROOT, "user", "passwd", "alice", "--interactive=false"],
            "newpw\n"
        )
        .out(),
        "Password updated\n"
    );
    assert!(s.etcdctl(&[alice, "get", "/app/a"]).err().ends_with(failed));
    assert_eq!(
        s.etcdctl(&["--user=alice:newpw", "get", "/app/a"]).out(),
        "/app/a\n1\n"
    );

    assert_eq!(
        s.etcdctl(&[ROOT, "user", "add", "bob", "--no-password"])
            .out(),
        "User bob created\n"
    );
    assert!(s
        .etcdctl(&["--user=bob:x", "get", "/app/a"])
        .err()
        .contains("auth: authentication failed, password was given for no password user"));

    assert_eq!(
        s.etcdctl(&[ROOT, "auth", "disable"]).out(),
        "Authentication Disabled\n"
    );
    assert_eq!(s.etcdctl(&["get", "/b"]).out(), "/b\n2\n");
    assert_eq!(s.etcdctl(&["user", "list"]).out(), "alice\nbob\nroot\n");
    // With auth off, credentials are accepted and ignored.
    assert_eq!(s.etcdctl(&[alice, "get", "/b"]).out(), "/b\n2\n");
}

fn status_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.message()),
        _ => None,
    }
}

#[tokio::test]
async fn auth_survives_restart_but_tokens_do_not() {
    let mut s = Server::start().await;
    setup(&s);
    let opts = ConnectOptions::new().with_user("alice", "apw");
    let mut c = Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .expect("alice connects");
    c.put("/x", "1", None).await.expect("alice writes /x");
    let e = c
        .put("/y", "1", None)
        .await
        .expect_err("alice may not write /y");
    assert_eq!(status_message(&e), Some("etcdserver: permission denied"));
    let bad = ConnectOptions::new().with_user("alice", "nope");
    let e = Client::connect([s.endpoint.as_str()], Some(bad))
        .await
        .err()
        .expect("wrong password refused");
    assert_eq!(
        status_message(&e),
        Some("etcdserver: authentication failed, invalid user ID or password")
    );

    s.restart().await;
    // Users, roles and the switch are durable; the token lived only in memory. (etcd
    // 3.4, the reference binary here, re-applies its WAL's Authenticate entries on
    // start-up and so revives old tokens; 3.5, which capstan follows, does not.)
    let answer = eventually(
        "the restarted server to answer",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                match c.get("/x", None).await {
                    Ok(r) => Some(Ok(r)),
                    Err(e) if status_message(&e).is_some() => Some(Err(e)),
                    Err(_) => None,
                }
            }
        },
    )
    .await;
    if !crate::support::against_etcd() {
        let e = answer.expect_err("the old token is refused");
        assert_eq!(status_message(&e), Some("etcdserver: invalid auth token"));
    }
    c.refresh_token().await.expect("alice logs in again");
    let r = c.get("/x", None).await.expect("alice reads /x");
    assert_eq!(r.kvs().first().map(|kv| kv.value()), Some(&b"1"[..]));

    assert_eq!(s.etcdctl(&[ROOT, "user", "list"]).out(), "alice\nroot\n");
    assert_eq!(
        s.etcdctl(&[ROOT, "user", "get", "alice"]).out(),
        "User: alice\nRoles: reader\n"
    );
    assert!(s
        .etcdctl(&["--user=alice:apw", "get", "/y"])
        .err()
        .ends_with("Error: etcdserver: permission denied\n"));
    assert!(s
        .etcdctl(&["get", "/x"])
        .err()
        .ends_with("Error: etcdserver: user name is empty\n"));
}
