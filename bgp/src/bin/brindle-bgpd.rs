//! `brindle-bgpd --config bgpd.toml`: Brindle's BGP speaker as a standalone daemon (an
//! out-of-cluster route reflector, or the speaker under benchmark). SIGTERM / SIGINT stop it:
//! with graceful restart on, sessions are closed without a NOTIFICATION and kernel routes
//! stay (peers keep forwarding while it restarts); otherwise peers get Cease/administrative
//! shutdown and our kernel routes are removed.

use std::path::PathBuf;

use anyhow::Context;
use brindle_bgp::config;
use brindle_bgp::speaker::{default_control_socket, serve_control, Speaker};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

#[derive(Parser)]
#[command(version, about = "Brindle's BGP speaker")]
struct Args {
    /// The configuration file (TOML).
    #[arg(long, short, env = "BRINDLE_BGPD_CONFIG")]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Start as a restarting speaker (RFC 4724 §4.1, like BIRD's `-R`): the OPEN's Restart
    /// State bit is set, and our table goes out (and the kernel changes) only once every
    /// graceful-restart peer has sent End-of-RIB or `restart_time` ran out. Use it when
    /// restarting a speaker whose peers keep its routes; with kernel sync, routes of the last
    /// run found in the kernel mean the same without this flag.
    #[arg(long, short = 'R')]
    recovering: bool,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "BRINDLE_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("brindle-bgpd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = config::load(&args.config)?;
    cfg.speaker.graceful_restart.recovering = args.recovering;
    if args.check {
        println!("{}: ok ({} peers)", args.config.display(), cfg.peers.len());
        return Ok(());
    }
    let graceful = cfg.speaker.graceful_restart.enabled;
    info!(local_as = cfg.speaker.local_as, router_id = %cfg.speaker.router_id, peers = cfg.peers.len(), "starting");
    let speaker = Speaker::start(cfg.speaker).await?;
    // Originations first: each peer's first table dump (and End-of-RIB) then holds them, so
    // a peer that kept our routes through our restart never sees them withdrawn.
    for o in cfg.originate {
        speaker.originate(o).await?;
    }
    for p in cfg.peers {
        let addr = p.addr;
        speaker
            .add_peer(p)
            .await
            .with_context(|| format!("adding peer {addr}"))?;
    }
    speaker.peers_configured().await?;
    let sock = cfg.control_socket.unwrap_or_else(default_control_socket);
    let ctl = speaker.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_control(ctl, &sock).await {
            error!(socket = %sock.display(), "control API stopped: {e}");
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!(graceful, "signal received, stopping");
    speaker.shutdown(graceful).await?;
    Ok(())
}
