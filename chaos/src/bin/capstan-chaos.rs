//! `capstan-chaos`: the chaos suite as its own binary (also `capstan chaos`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "capstan-chaos",
    version,
    about = "Chaos and failover suite for etcd-compatible clusters"
)]
struct Cli {
    #[command(flatten)]
    args: capstan_chaos::cli::Args,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    // The capstan binary normally sits next to this one (same target dir / install dir).
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("capstan")))
        .filter(|p| p.exists());
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(capstan_chaos::cli::run(cli.args, sibling))?;
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
