//! The scheduler's own HTTPS endpoint, as kube-scheduler's `--secure-port` (10259):
//! `/healthz`, `/livez`, `/readyz` and Prometheus `/metrics` (its own metrics and
//! client-go's), on a self-signed certificate made at start (kube-scheduler does the
//! same without `--tls-cert-file`); the server itself is the shared one of
//! `capstan_client::serve`.

use std::net::SocketAddr;

use capstan_client::serve::Endpoint;

use crate::Error;

/// Binds `addr` and serves until the future is dropped.
pub async fn serve(addr: SocketAddr) -> Result<(), Error> {
    let serving = Endpoint::new(addr, true)
        .with_metrics(crate::metrics::gather)
        .bind()
        .await
        .map_err(|e| Error::Serve(e.to_string()))?;
    serving.await;
    Ok(())
}
