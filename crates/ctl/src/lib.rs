//! `brindlectl` (also installed as `kubectl-brindle`, a kubectl plugin): resources, BGP
//! status and IPAM, in calicoctl's verbs and output formats.
//!
//! This crate owns the command line and its output. It reads and writes resources only through
//! the Store (so the datastore's validation applies), IPAM only through `brindle-ipam`, and the
//! agent only through its control socket; it never changes the network or the kernel (`node
//! diags` reads them, through the standard tools).
//!
//! Exit codes: 0 success, 1 error, 2 usage. Data goes to stdout, messages to stderr.
#![forbid(unsafe_code)]

mod calico;
pub mod cli;
mod client;
mod diags;
pub mod graph;
mod graph_cmd;
mod input;
mod ipam_cmd;
mod kind;
pub mod output;
mod policy_cmd;
mod resources;
mod services_cmd;
mod status;

use std::time::Duration;

use brindle_datastore::Store;
use clap::CommandFactory;

use cli::{Cli, Command, IpamCommand, NodeCommand, PolicyCommand};
use client::Client;
use resources::Verb;

/// How a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// Something failed (exit 1).
    Error(anyhow::Error),
    /// Problems were already printed one by one; this is the closing line (exit 1).
    Reported(String),
}

/// Runs brindlectl with the process's arguments; `name` is how it was installed.
pub fn main(name: &'static str) -> std::process::ExitCode {
    let mut cmd = Cli::command().name(name);
    if name == "kubectl-brindle" {
        cmd = cmd.bin_name("kubectl brindle");
    }
    let cli = match cmd.try_get_matches() {
        Ok(m) => match <Cli as clap::FromArgMatches>::from_arg_matches(&m) {
            Ok(c) => c,
            Err(e) => e.exit(),
        },
        Err(e) => e.exit(), // help and version exit 0, usage errors 2
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, name)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("error: {m}\n\nFor more information, try '--help'.");
            std::process::ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
        Err(Failure::Reported(m)) => {
            eprintln!("{m}");
            std::process::ExitCode::from(1)
        }
    }
}

/// How long brindlectl waits for the datastore before saying it cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

async fn connect(cli: &Cli) -> Result<Store, Failure> {
    match tokio::time::timeout(CONNECT_TIMEOUT, cli.datastore.connect()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(Failure::Error(e.into())),
        Err(_) => Err(Failure::Error(anyhow::anyhow!(
            "the {:?} datastore did not answer within {} s",
            cli.datastore.datastore,
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

async fn run(cli: Cli, name: &'static str) -> Result<(), Failure> {
    match &cli.command {
        Command::Completion { shell } => {
            let mut cmd = Cli::command().name(name);
            let bin = if name == "kubectl-brindle" {
                "kubectl-brindle"
            } else {
                name
            };
            let shell = match shell {
                cli::Shell::Bash => clap_complete::Shell::Bash,
                cli::Shell::Zsh => clap_complete::Shell::Zsh,
                cli::Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, bin, &mut std::io::stdout());
            return Ok(());
        }
        Command::Validate(a) => return resources::validate(a),
        Command::Convert(a) => return resources::convert(a),
        Command::Node(NodeCommand::Status {
            control_socket,
            output,
        }) => return status::run(control_socket, *output).await,
        Command::Node(NodeCommand::Diags(a)) => return diags::run(&cli, a).await,
        Command::Version { client } => {
            if *client {
                println!("Client Version:  {}", env!("CARGO_PKG_VERSION"));
                return Ok(());
            }
            return version(&cli).await;
        }
        _ => {}
    }
    let store = connect(&cli).await?;
    let c = Client::new(store.clone());
    match &cli.command {
        Command::Get(a) => resources::get(&c, a).await,
        Command::Create(a) => resources::write(&c, a, Verb::Create).await,
        Command::Apply(a) => resources::write(&c, a, Verb::Apply).await,
        Command::Replace(a) => resources::write(&c, a, Verb::Replace).await,
        Command::Delete(a) => resources::delete(&c, a).await,
        Command::Label(a) => resources::label(&c, a).await,
        Command::Services { refused } => services_cmd::run(&c, &store, *refused).await,
        Command::Policy(PolicyCommand::Explain { from, to, ipv6 }) => {
            policy_cmd::explain(&store, from, to, *ipv6).await
        }
        Command::Node(NodeCommand::Graph(a)) => graph_cmd::run(&c, &store, a).await,
        Command::Ipam(IpamCommand::Show(a)) => ipam_cmd::show(&store, a).await,
        Command::Ipam(IpamCommand::Check { output }) => {
            ipam_cmd::check(&store, output.as_deref()).await
        }
        Command::Ipam(IpamCommand::Release(a)) => ipam_cmd::release(&store, a).await,
        Command::Ipam(IpamCommand::Configure {
            strict_affinity,
            max_blocks_per_host,
            auto_allocate_blocks,
        }) => {
            ipam_cmd::configure(
                &store,
                *strict_affinity,
                *max_blocks_per_host,
                *auto_allocate_blocks,
            )
            .await
        }
        Command::Completion { .. }
        | Command::Validate(_)
        | Command::Convert(_)
        | Command::Node(NodeCommand::Status { .. } | NodeCommand::Diags(_))
        | Command::Version { .. } => Ok(()),
    }
}

/// The client's version, then each node's agent version as recorded at registration.
async fn version(cli: &Cli) -> Result<(), Failure> {
    println!("Client Version:  {}", env!("CARGO_PKG_VERSION"));
    let store = connect(cli).await?;
    let nodes = Client::new(store.clone())
        .list(kind::Kind::Node)
        .await
        .map_err(|e| Failure::Error(e.into()))?;
    println!("Datastore:       {}", store.backend_name());
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let name = n
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            let v = n
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(brindle_api::node::annotations::AGENT_VERSION))
                .and_then(|v| v.as_str())
                .unwrap_or("(not recorded)")
                .to_string();
            vec![name, v]
        })
        .collect();
    if rows.is_empty() {
        println!("Agents:          none registered");
    } else {
        println!("Agents:");
        let mut rows = rows;
        rows.sort();
        print!("{}", output::columns(&["NODE", "AGENT VERSION"], &rows));
    }
    Ok(())
}
