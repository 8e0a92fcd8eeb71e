//! `lease-keepalive`: like etcd's benchmark of the same name, each client grants one
//! lease, opens one `LeaseKeepAlive` stream, then sends keep-alives back to back,
//! timing each request to its response.

use std::sync::Arc;
use std::time::Duration;

use capstan_proto::etcdserverpb as pb;
use capstan_proto::etcdserverpb::lease_client::LeaseClient;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::conn::closed_loop;
use crate::stats::Recorder;

/// Long enough that no lease expires mid-run, even on a slow machine.
const LEASE_TTL: i64 = 600;

struct KeepAliveStream {
    id: i64,
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    rx: Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    async fn open(mut lease: LeaseClient<Channel>) -> Result<Self, Status> {
        let id = lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: LEASE_TTL,
                id: 0,
            })
            .await?
            .into_inner()
            .id;
        let (tx, req_rx) = mpsc::channel(1);
        // Queue the first keep-alive before opening the stream: grpc-go sends response
        // headers only with the first response, so awaiting the call first would hang
        // against etcd.
        tx.send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| Status::internal("keep-alive sender closed"))?;
        let mut rx = lease
            .lease_keep_alive(ReceiverStream::new(req_rx))
            .await?
            .into_inner();
        rx.message()
            .await?
            .ok_or_else(|| Status::unavailable("keep-alive stream ended"))?;
        Ok(Self { id, tx, rx })
    }

    async fn keep_alive(&mut self) -> Result<(), Status> {
        self.tx
            .send(pb::LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
        let resp = self
            .rx
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("keep-alive stream ended"))?;
        if resp.ttl <= 0 {
            return Err(Status::not_found(format!("lease {:x} expired", self.id)));
        }
        Ok(())
    }
}

pub async fn keepalive(
    channels: &[Channel],
    clients: usize,
    total: u64,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut streams = Vec::with_capacity(clients);
    for i in 0..clients {
        let lease = LeaseClient::new(channels[i % channels.len()].clone());
        match KeepAliveStream::open(lease).await {
            Ok(s) => streams.push(Arc::new(Mutex::new(s))),
            // Setup failed (typically `Unimplemented`): report it as the run's error
            // rather than dying, so a comparison script can show the row as n/a.
            Err(st) => {
                let mut rec = Recorder::new()?;
                rec.error(st);
                return Ok((rec, Duration::ZERO));
            }
        }
    }
    let ops = streams
        .into_iter()
        .map(|s| {
            move |_seq| {
                let s = s.clone();
                // The lock is never contended: each client awaits its own previous
                // keep-alive before sending the next; it only makes the future 'static.
                async move { s.lock().await.keep_alive().await }
            }
        })
        .collect();
    closed_loop(total, ops).await
}
