//! The command line, as clap sees it. Verbs and flags follow calicoctl and kubectl.

use std::net::IpAddr;
use std::path::PathBuf;

use brindle_datastore::DatastoreArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "brindlectl",
    version,
    about = "Manage Brindle's resources, see BGP status and inspect IPAM",
    long_about = "Manage Brindle's resources, see BGP status and inspect IPAM.\n\n\
Data goes to stdout, messages to stderr. Exit codes: 0 success, 1 error, 2 usage."
)]
pub struct Cli {
    #[command(flatten)]
    pub datastore: DatastoreArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show resources: get KIND [NAME] (kinds: ippools, bgppeers, bgpconfigurations,
    /// ipamblocks, blockaffinities, ipamhandles, ipamconfigs, nodes)
    Get(GetArgs),
    /// Create resources from files; fails for one that exists.
    Create(FileArgs),
    /// Create or update resources from files.
    Apply(FileArgs),
    /// Replace existing resources from files; fails for one that does not exist.
    Replace(FileArgs),
    /// Delete resources named in files, or one by KIND NAME.
    Delete(DeleteArgs),
    /// Add (k=v) or remove (k-) labels on a resource.
    Label(LabelArgs),
    /// Check files without writing anything.
    Validate(FileArgs),
    /// Print Calico v3 documents as Brindle documents, without applying them.
    Convert(ConvertArgs),
    /// Every Service's externalIPs, LoadBalancer addresses and nodePorts: programmed, or
    /// refused by the agents and why (the operator's allowed ranges, node, peer and pool
    /// addresses, BGP ports).
    Services {
        /// Only what the agents refuse.
        #[arg(long)]
        refused: bool,
    },
    /// Kubernetes NetworkPolicy: why a connection is allowed or denied.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The node agent: BGP session status.
    #[command(subcommand)]
    Node(NodeCommand),
    /// IP address management.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// This client's version and the agents' versions recorded in the datastore.
    Version {
        /// Only this client's version (no datastore needed), as `kubectl version --client`.
        #[arg(long)]
        client: bool,
    },
    /// Print a shell completion script (bash, zsh or fish).
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub kind: String,
    pub name: Option<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// A file, a directory (its .yaml, .yml and .json files) or - for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub files: FileArgs,
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: DocOutput,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocOutput {
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Delete what these files name.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    pub files: Vec<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Succeed when a resource does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    pub kind: String,
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub labels: Vec<String>,
    /// Change a label that already has another value.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// The verdict for a new connection FROM → TO, each direction with the policy and
    /// rule that decide it, from the datastore by the agents' own rules. FROM and TO are
    /// namespace/pod or an address; TO may end in :PORT[/PROTO] (default 80/TCP).
    Explain {
        from: String,
        to: String,
        /// Over the pods' IPv6 addresses (implied when FROM or TO is an IPv6 address); else
        /// their first, as Kubernetes' `status.podIP`.
        #[arg(long)]
        ipv6: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// The BGP sessions of the agent on this machine, from its control socket.
    Status {
        /// The agent's control socket (brindle-node --control-socket).
        #[arg(
            long,
            env = "BRINDLE_CONTROL_SOCKET",
            default_value = "/run/brindle/bgpd.sock"
        )]
        control_socket: PathBuf,
        /// `wide` adds AS, router ID and prefix counts; `json` prints the agent's data.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What a bug report needs from this node, in one tarball (secrets redacted): the
    /// agent's version, flags and logs, routes, rules, links, our iptables/nftables/ipset
    /// state, the speaker's peers and RIB, metrics, and this node's IPAM blocks.
    Diags(DiagsArgs),
    /// The fabric in Graphviz DOT: every node (grouped by AS number or a label), the routers
    /// they peer with, and each BGP session an edge coloured by its state with the prefixes
    /// each end received, as the agents' metrics report them.
    Graph(GraphArgs),
}

/// `node graph`.
#[derive(Args, Debug)]
pub struct GraphArgs {
    /// The port of each agent's metrics (brindle-node --metrics-listen), read at the node's
    /// recorded address.
    #[arg(long, default_value_t = 9091)]
    pub metrics_port: u16,
    /// Group nodes by this label's value (a rack or zone label) instead of their AS number.
    #[arg(long, value_name = "KEY")]
    pub group_by_label: Option<String>,
    /// How long to wait for each agent's metrics, in seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
    /// Write here instead of stdout: `.svg` or `.png` is drawn with Graphviz's `dot`,
    /// anything else gets the DOT text.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `node diags`.
#[derive(Args, Debug)]
pub struct DiagsArgs {
    /// The agent's control socket (brindle-node --control-socket).
    #[arg(
        long,
        env = "BRINDLE_CONTROL_SOCKET",
        default_value = "/run/brindle/bgpd.sock"
    )]
    pub control_socket: PathBuf,
    /// The agent's metrics (brindle-node --metrics-listen).
    #[arg(long, default_value = "http://127.0.0.1:9091/metrics")]
    pub metrics_url: String,
    /// The node's name (default: the agent's --nodename, else the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// A log to include (the last 5,000 lines); the kubelet's pod logs of brindle-node
    /// under /var/log/pods are found without it.
    #[arg(long = "log-file")]
    pub log_files: Vec<PathBuf>,
    /// Where to write the tarball (default ./brindle-diags-<node>-<time>.tar.gz).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Pool usage, or who holds one address.
    Show(ShowArgs),
    /// Look for leaks, duplicates and records that disagree; exit 1 when anything is found.
    Check {
        /// Also write the full report as JSON to this file (for `ipam release --from-report`).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Free addresses.
    Release(ReleaseArgs),
    /// Change the cluster's IPAM settings (the IPAMConfig named default).
    Configure {
        #[arg(long = "strictaffinity", action = clap::ArgAction::Set)]
        strict_affinity: Option<bool>,
        #[arg(long)]
        max_blocks_per_host: Option<u32>,
        #[arg(long = "autoallocateblocks", action = clap::ArgAction::Set)]
        auto_allocate_blocks: Option<bool>,
    },
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Who holds this address.
    #[arg(long, conflicts_with_all = ["show_blocks", "show_borrowed", "show_configuration"])]
    pub ip: Option<IpAddr>,
    /// A row per block under each pool.
    #[arg(long)]
    pub show_blocks: bool,
    /// Addresses nodes took from other nodes' blocks.
    #[arg(long)]
    pub show_borrowed: bool,
    /// The cluster's IPAM settings.
    #[arg(long)]
    pub show_configuration: bool,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Free this address.
    #[arg(
        long,
        required_unless_present = "from_report",
        conflicts_with = "from_report"
    )]
    pub ip: Option<IpAddr>,
    /// Free the leaked addresses of a report written by `ipam check -o`.
    #[arg(long)]
    pub from_report: Option<PathBuf>,
    /// Free an address even though its owner still exists.
    #[arg(long)]
    pub force: bool,
}
