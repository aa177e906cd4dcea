//! Runs the Mattermost API emulator standalone:
//! `cargo run --example mattermost-emulator -- --listen 127.0.0.1:8065 --admin-user admin --admin-password secret`.
//! Prints one line with the base URL, then serves until SIGINT or SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use mattermost_emulator::Emulator;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "In-memory Mattermost API v4 + WebSocket emulator for tests")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8065")]
    listen: SocketAddr,
    /// Username of the one system admin.
    #[arg(long, default_value = "admin")]
    admin_user: String,
    /// Password of the system admin.
    #[arg(long)]
    admin_password: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emu = Emulator::start(args.listen, &args.admin_user, &args.admin_password).await?;
    println!("{}", emu.base_url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    emu.shutdown().await;
    Ok(())
}
