//! placeholder
pub async fn run(_c: kube::Client) {}
