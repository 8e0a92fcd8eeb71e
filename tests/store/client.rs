//! What etcdctl does not reach, through the `etcd-client` crate and raw gRPC: every
//! compare target and result, range compares, nested txns, ignore_value/ignore_lease,
//! and malformed messages. Each expectation was checked against the reference etcd.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::support::Server;

fn succeeded(r: &etcd_client::TxnResponse) -> bool {
    r.succeeded()
}

#[tokio::test]
async fn compares_on_every_target_and_result() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.put("k", "m", None).await.expect("put"); // rev 2
    c.put("k", "m2", None).await.expect("put"); // rev 3, version 2
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("k", CompareOp::Equal, 2), true),
        (Compare::version("k", CompareOp::Greater, 2), false),
        (Compare::version("k", CompareOp::Less, 3), true),
        (Compare::version("k", CompareOp::NotEqual, 2), false),
        (Compare::create_revision("k", CompareOp::Equal, 2), true),
        (Compare::mod_revision("k", CompareOp::Greater, 2), true),
        (Compare::mod_revision("k", CompareOp::Less, 3), false),
        (Compare::value("k", CompareOp::Equal, "m2"), true),
        (Compare::value("k", CompareOp::Greater, "m"), true),
        (Compare::value("k", CompareOp::Less, "m"), false),
        (Compare::value("k", CompareOp::NotEqual, "m"), true),
        (Compare::lease("k", CompareOp::Equal, 0), true),
        // A missing key: version, create and mod are 0; a value compare fails.
        (Compare::version("nope", CompareOp::Equal, 0), true),
        (Compare::mod_revision("nope", CompareOp::Equal, 0), true),
        (Compare::value("nope", CompareOp::NotEqual, "x"), false),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let r = c.txn(Txn::new().when([cmp])).await.expect("txn");
        assert_eq!(succeeded(&r), want, "case {i}");
    }
    // A range compare holds only if it holds for every key in the range.
    c.put("r1", "a", None).await.expect("put");
    c.put("r2", "b", None).await.expect("put");
    let all_small = Compare::version("r", CompareOp::Equal, 1).with_range("s");
    assert!(succeeded(
        &c.txn(Txn::new().when([all_small])).await.expect("txn")
    ));
    c.put("r2", "c", None).await.expect("put");
    let all_small = Compare::version("r", CompareOp::Equal, 1).with_range("s");
    assert!(!succeeded(
        &c.txn(Txn::new().when([all_small])).await.expect("txn")
    ));
}

#[tokio::test]
async fn nested_txn_applies_as_one_revision() {
    let s = Server::start().await;
    let mut c = s.client().await;
    c.put("a", "1", None).await.expect("put");
    let inner = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("b", "2", None), TxnOp::get("a", None)]);
    let outer = Txn::new()
        .when([Compare::version("a", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("c", "3", None), TxnOp::txn(inner)]);
    let r = c.txn(outer).await.expect("txn");
    assert!(r.succeeded());
    let header_rev = r.header().expect("header").revision();
    assert_eq!(header_rev, 3, "the whole nested txn is one revision");
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(t) => {
            assert!(t.succeeded());
            match &t.op_responses()[1] {
                TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"1"),
                other => panic!("expected a get response, got {other:?}"),
            }
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
    for k in ["b", "c"] {
        let g = c.get(k, None).await.expect("get");
        assert_eq!(g.kvs()[0].mod_revision(), 3, "{k}");
    }
    // A put and a delete of the same key in nested branches is a duplicate.
    let dup = Txn::new().and_then([
        TxnOp::put("x", "1", None),
        TxnOp::txn(Txn::new().and_then([TxnOp::delete("x", None)])),
    ]);
    let e = c.txn(dup).await.expect_err("duplicate");
    assert!(
        e.to_string()
            .contains("etcdserver: duplicate key given in txn request"),
        "{e}"
    );
}

#[tokio::test]
async fn ignore_value_and_ignore_lease() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let e = c
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect_err("ignore_value on a missing key");
    assert!(e.to_string().contains("etcdserver: key not found"), "{e}");
    c.put("k", "keep", None).await.expect("put");
    c.put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect("put");
    let g = c.get("k", None).await.expect("get");
    assert_eq!(g.kvs()[0].value(), b"keep");
    assert_eq!(g.kvs()[0].version(), 2);
    let e = c
        .put("k", "v", Some(PutOptions::new().with_ignore_value()))
        .await
        .expect_err("value with ignore_value");
    assert!(
        e.to_string().contains("etcdserver: value is provided"),
        "{e}"
    );
    let e = c
        .put(
            "k",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await
        .expect_err("lease with ignore_lease");
    assert!(
        e.to_string().contains("etcdserver: lease is provided"),
        "{e}"
    );
}

/// A `PutRequest` look-alike whose field 1 (key, bytes on the wire) is a varint: every
/// protobuf decoder must reject it.
#[derive(Clone, PartialEq, prost::Message)]
struct MalformedPut {
    #[prost(uint64, tag = "1")]
    key: u64,
}

#[tokio::test]
async fn malformed_message_is_refused_and_changes_nothing() {
    let s = Server::start().await;
    let channel = tonic::transport::Endpoint::from_shared(s.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec =
        tonic_prost::ProstCodec::<MalformedPut, capstan_proto::etcdserverpb::PutResponse>::default(
        );
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let err = grpc
        .unary(tonic::Request::new(MalformedPut { key: 7 }), path, codec)
        .await
        .expect_err("malformed request");
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    let mut c = s.client().await;
    let g = c
        .get("", Some(etcd_client::GetOptions::new().with_from_key()))
        .await
        .expect("get");
    assert!(g.kvs().is_empty());
    assert_eq!(g.header().expect("header").revision(), 1);
}
