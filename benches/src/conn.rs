//! Connections to the servers and the closed-loop driver every request/response
//! workload shares: `--clients` tasks spread over `--conns` HTTP/2 connections, each
//! issuing its next request as soon as the previous one is answered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

use crate::stats::Recorder;

/// Opens `conns` separate HTTP/2 connections, round-robin over `endpoints`.
pub async fn connect(endpoints: &[String], conns: usize) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    anyhow::ensure!(conns > 0, "--conns must be at least 1");
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns {
        let ep = &endpoints[i % endpoints.len()];
        let url = if ep.contains("://") {
            ep.clone()
        } else {
            format!("http://{ep}")
        };
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("endpoint {url:?}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // Watch fan-out pushes far more bytes than the default 64 KiB HTTP/2 window
            // lets through per round trip; etcd's Go client also grows its windows.
            .http2_adaptive_window(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// Runs `total` operations over the given clients (one future-producing closure per
/// client, called with a global sequence number) and returns the merged latencies and
/// the wall time. A client stops early when the server answers `Unimplemented`, since
/// every further request would fail the same way.
pub async fn closed_loop<G, Fut>(
    total: u64,
    clients: Vec<G>,
) -> anyhow::Result<(Recorder, Duration)>
where
    G: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for mut op in clients {
        let next = next.clone();
        let abort = abort.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new()?;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || abort.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                match op(seq).await {
                    Ok(()) => rec.record(t.elapsed()),
                    Err(st) => {
                        if st.code() == tonic::Code::Unimplemented {
                            abort.store(true, Ordering::Relaxed);
                        }
                        rec.error(st);
                    }
                }
            }
            anyhow::Ok(rec)
        }));
    }
    let mut all = Recorder::new()?;
    for t in tasks {
        all.merge(t.await.context("client task panicked")??)?;
    }
    Ok((all, start.elapsed()))
}
