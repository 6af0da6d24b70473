//! `ringcast`: the push daemon. CLI -> Config -> start the shards -> wait for a signal -> graceful
//! shutdown. Everything else lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use ringcast::config::{GroupPublishPolicy, JoinPolicy, Permissions};
use ringcast::{Config, OnMessage, Server, SlowConsumerPolicy};

#[derive(Parser)]
#[command(
    name = "ringcast",
    version,
    about = "Thread-per-core io_uring WebSocket broadcast daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: accept WebSocket clients and fan messages out to them.
    Serve(ServeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum OnMessageArg {
    /// Validate and discard client messages (clients only listen).
    Ignore,
    /// Send every client message to every connection of the node, sender included (group chat).
    Relay,
    /// JSON commands: add_group, leave_group, send_to_group, send_to_all, send_to_client, ping
    /// (see docs/api.md), within the --client-* permissions.
    Commands,
}

#[derive(Clone, Copy, ValueEnum)]
enum GroupPublishArg {
    /// Clients may not publish to groups.
    Off,
    /// Only to groups the client has joined.
    Joined,
    /// To any group.
    Any,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum SlowConsumerArg {
    /// Close a client over its outbox bound with 1008 "slow consumer".
    Disconnect,
    /// Skip messages for a client while it is over its outbox bound.
    Drop,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address every shard listens on (shared with SO_REUSEPORT).
    #[arg(long, default_value = "0.0.0.0:2020")]
    listen: SocketAddr,
    /// Number of shards (threads, one io_uring each) [default: one per available CPU].
    #[arg(long)]
    shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0,1" or "2-5"; shard i gets the i-th (wrapping)
    /// [default: the CPUs this process may run on].
    #[arg(long, value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// Do not pin shard threads to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// What a client's Text/Binary message does [default: ignore; with --demo: commands].
    #[arg(long, value_enum)]
    on_message: Option<OnMessageArg>,
    /// Broadcast the server time (Unix seconds, as text) to every client at this interval,
    /// e.g. "10s" (seed 000's timer). Off by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    tick: Option<Duration>,
    /// Maximum open WebSocket connections on this node; past it upgrades get 503
    /// [default: what the open-file limit allows].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest message a client may send, in bytes; larger ones are closed with 1009.
    #[arg(long, default_value_t = 1 << 20)]
    max_message_bytes: usize,
    /// Largest upgrade request head, in bytes; larger ones get 431.
    #[arg(long, default_value_t = 8 * 1024)]
    max_header_bytes: usize,
    /// Bytes that may wait in one connection's outbox (queued plus in flight).
    #[arg(long, default_value_t = 1 << 20)]
    outbox_bytes_max: usize,
    /// What happens to a client over its outbox bound.
    #[arg(long, value_enum, default_value = "disconnect")]
    slow_consumer: SlowConsumerArg,
    /// Interval between server pings; "0s" disables pings and the idle timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ping_interval: Duration,
    /// Close (1001) a client that sent nothing, not even a pong, for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "75s")]
    idle_timeout: Duration,
    /// Time a client has to send its upgrade request (slowloris bound).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// After sending a close frame, how long to wait for the client's before dropping it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    close_timeout: Duration,
    /// On SIGTERM/SIGINT, how long to wait for clients to complete the close handshake.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    shutdown_timeout: Duration,
    /// Capacity of each shard's cross-shard inbox, in events; a full inbox drops events
    /// (counted as mesh_dropped).
    #[arg(long, default_value_t = 64 * 1024, alias = "mesh-capacity")]
    inbox_events_max: usize,
    /// Allow what Workerman's seeds do: commands mode (unless --on-message is given), clients
    /// may join any group and publish to any group, to all and to any client. For trying
    /// ringcast out, never for production.
    #[arg(long)]
    demo: bool,
    /// Send each new connection {"type":"welcome","client_id":..} [default: on in commands
    /// mode, off otherwise].
    #[arg(long, value_enum)]
    welcome: Option<OnOff>,
    /// Groups clients may join by themselves: "off", "any", or comma-separated glob patterns
    /// such as "public:*,room-?" [default: off; --demo: any].
    #[arg(long)]
    client_join: Option<String>,
    /// Groups clients may publish to [default: off; --demo: any].
    #[arg(long, value_enum)]
    client_publish_groups: Option<GroupPublishArg>,
    /// Clients may publish to every connection (send_to_all) [default: no; --demo: yes].
    #[arg(long)]
    client_publish_all: bool,
    /// Clients may send to one client by id (send_to_client) [default: no; --demo: yes].
    #[arg(long)]
    client_publish_clients: bool,
    /// Groups one connection may be in.
    #[arg(long, default_value_t = 64)]
    groups_per_connection_max: usize,
    /// Longest group id or uid, in bytes.
    #[arg(long, default_value_t = 128)]
    group_id_bytes_max: usize,
    /// Commands one client may send per second, sustained; "0" disables the limit.
    #[arg(long, default_value_t = 100)]
    commands_per_sec: u32,
    /// Commands one client may send in a burst above the sustained rate.
    #[arg(long, default_value_t = 200)]
    commands_burst: u32,
    /// Largest per-connection session (JSON text), in bytes.
    #[arg(long, default_value_t = 4096)]
    session_bytes_max: usize,
    /// This node's id, 8 hex digits (part of every client id) [default: generated].
    #[arg(long, value_parser = parse_node_id)]
    node_id: Option<u32>,
    /// Address of the HTTP push API (the control plane); a non-loopback address requires
    /// --api-token.
    #[arg(long, default_value = "127.0.0.1:2021")]
    api_listen: SocketAddr,
    /// Bearer token the HTTP API requires (also RINGCAST_API_TOKEN).
    #[arg(long, env = "RINGCAST_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Largest HTTP API request body, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1 << 20)]
    api_body_bytes_max: usize,
    /// Do not start the HTTP API.
    #[arg(long)]
    no_api: bool,
    /// Log the node's counters at this interval, e.g. "10s"; "0s" disables.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    stats_interval: Duration,
    // ---- cluster (src/cluster/config.rs) ----
    /// Join a cluster over Redis: redis://host:port (one Redis, classic pub/sub), or with
    /// --cluster-bus sharded the comma-separated seed nodes of a Redis Cluster. Off by default
    /// (a single node needs no Redis).
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    cluster: Vec<String>,
    /// Pub/sub flavour: classic (PUBLISH/SUBSCRIBE on one Redis) or sharded
    /// (SPUBLISH/SSUBSCRIBE on a Redis Cluster, Redis >= 7).
    #[arg(long, value_enum, default_value = "classic")]
    cluster_bus: ClusterBusArg,
    /// Prefix of the cluster's Redis channels and keys (several clusters can share a Redis).
    #[arg(long, default_value = "ringcast")]
    cluster_namespace: String,
    /// Interval of presence heartbeats; a dead node vanishes within three of them.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    cluster_heartbeat_interval: Duration,
    /// How long a group's or uid's channel stays subscribed after its last local member left
    /// (no churn when members come and go).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    cluster_unsubscribe_linger: Duration,
    /// Longest a cluster-wide query (stats, group, uid, client) waits for other nodes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    cluster_query_timeout: Duration,
    /// Local publishes waiting to go to Redis; past it they are dropped and counted.
    #[arg(long, default_value_t = 64 * 1024)]
    cluster_outbound_messages_max: usize,
    /// Messages from Redis waiting to be delivered; past it they are dropped and counted.
    #[arg(long, default_value_t = 64 * 1024)]
    cluster_inbound_messages_max: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ClusterBusArg {
    /// PUBLISH/SUBSCRIBE on one Redis (or a primary with replicas).
    Classic,
    /// SPUBLISH/SSUBSCRIBE on a Redis Cluster.
    Sharded,
}

impl ServeArgs {
    fn cluster_config(&self) -> anyhow::Result<ringcast::cluster::ClusterConfig> {
        let c = ringcast::cluster::ClusterConfig {
            urls: self.cluster.iter().filter(|u| !u.is_empty()).cloned().collect(),
            bus: match self.cluster_bus {
                ClusterBusArg::Classic => ringcast::cluster::BusMode::Classic,
                ClusterBusArg::Sharded => ringcast::cluster::BusMode::Sharded,
            },
            namespace: self.cluster_namespace.clone(),
            heartbeat_interval: self.cluster_heartbeat_interval,
            unsubscribe_linger: self.cluster_unsubscribe_linger,
            query_timeout: self.cluster_query_timeout,
            outbound_messages_max: self.cluster_outbound_messages_max,
            inbound_messages_max: self.cluster_inbound_messages_max,
            ..Default::default()
        };
        c.validate().map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
        Ok(c)
    }
}

/// A parsed `--cpus` value (a newtype so clap treats it as one value, not many).
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.parse().map_err(|_| format!("bad CPU '{a}'"))?,
                    b.parse().map_err(|_| format!("bad CPU '{b}'"))?,
                );
                if a > b {
                    return Err(format!("bad CPU range '{part}'"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| format!("bad CPU '{part}'"))?),
        }
    }
    if cpus.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(CpuList(cpus))
}

fn parse_node_id(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 16)
        .map_err(|_| format!("bad node id {s:?}: expected up to 8 hex digits"))
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config { listen: self.listen, ..Config::default() };
        if let Some(n) = self.shards {
            if n == 0 {
                bail!("--shards must be at least 1");
            }
            c.shards = n;
        }
        c.cpus = self.cpus.as_ref().map(|l| l.0.clone());
        c.pin = !self.no_pin;
        c.on_message = match self.on_message {
            None if self.demo => OnMessage::Commands,
            None | Some(OnMessageArg::Ignore) => OnMessage::Ignore,
            Some(OnMessageArg::Relay) => OnMessage::Relay,
            Some(OnMessageArg::Commands) => OnMessage::Commands,
        };
        let mut p = if self.demo { Permissions::demo() } else { Permissions::default() };
        if let Some(join) = &self.client_join {
            p.join = match join.trim() {
                "off" => JoinPolicy::Off,
                "any" | "*" => JoinPolicy::Any,
                list => JoinPolicy::Matching(
                    list.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                ),
            };
        }
        if let Some(g) = self.client_publish_groups {
            p.publish_groups = match g {
                GroupPublishArg::Off => GroupPublishPolicy::Off,
                GroupPublishArg::Joined => GroupPublishPolicy::Joined,
                GroupPublishArg::Any => GroupPublishPolicy::Any,
            };
        }
        p.publish_all |= self.client_publish_all;
        p.publish_clients |= self.client_publish_clients;
        p.groups_per_connection_max = self.groups_per_connection_max;
        if self.group_id_bytes_max == 0 || self.group_id_bytes_max > ringcast::ids::NAME_BYTES_MAX {
            bail!("--group-id-bytes-max must be between 1 and {}", ringcast::ids::NAME_BYTES_MAX);
        }
        p.group_id_bytes_max = self.group_id_bytes_max;
        c.permissions = p;
        c.welcome = self.welcome.map(|w| matches!(w, OnOff::On));
        c.commands_per_sec = self.commands_per_sec;
        c.commands_burst = self.commands_burst.max(1);
        c.session_bytes_max = self.session_bytes_max;
        c.node_id = self.node_id;
        c.tick_interval = self.tick.filter(|d| !d.is_zero());
        if let Some(n) = self.max_connections {
            c.connections_max = n;
        }
        c.message_bytes_max = self.max_message_bytes;
        c.header_bytes_max = self.max_header_bytes;
        c.outbox_bytes_max = self.outbox_bytes_max;
        c.slow_consumer = match self.slow_consumer {
            SlowConsumerArg::Disconnect => SlowConsumerPolicy::Disconnect,
            SlowConsumerArg::Drop => SlowConsumerPolicy::Drop,
        };
        c.ping_interval = Some(self.ping_interval).filter(|d| !d.is_zero());
        if c.ping_interval.is_some_and(|p| self.idle_timeout <= p) {
            bail!(
                "--idle-timeout ({:?}) must be longer than --ping-interval ({:?})",
                self.idle_timeout,
                self.ping_interval
            );
        }
        c.idle_timeout = self.idle_timeout;
        c.handshake_timeout = self.handshake_timeout;
        c.close_timeout = self.close_timeout;
        c.shutdown_timeout = self.shutdown_timeout;
        c.inbox_events_max = self.inbox_events_max.max(1);
        c.cluster = self.cluster_config()?;
        Ok(c)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ringcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Register before starting so an early signal is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    match ringcast::limits::raise_nofile_limit() {
        Ok((old, new)) if old != new => {
            tracing::info!(
                from = old,
                to = new,
                "raised the open-file soft limit to the hard limit"
            )
        }
        Ok((_, new)) => tracing::info!(limit = new, "open-file limit already at its hard limit"),
        Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
    }
    let config = args.config()?;
    let config_cluster = config.cluster.clone();
    let shards = config.shards;
    let handle = Server::builder().config(config).start().context("starting ringcast")?;
    tracing::info!(
        shards,
        capacity = ringcast::limits::connection_capacity(shards),
        "connection capacity (open-file limit minus reserved descriptors)"
    );
    tracing::info!("listening on {}", handle.local_addr());
    let cluster = if config_cluster.enabled() {
        match ringcast::cluster::spawn(handle.clone(), config_cluster) {
            Ok(c) => Some(c),
            Err(e) => {
                handle.shutdown();
                let _ = handle.join();
                return Err(e).context("joining the cluster");
            }
        }
    } else {
        None
    };
    let api = if args.no_api {
        None
    } else {
        let api_config = ringcast::api::ApiConfig {
            listen: args.api_listen,
            token: args.api_token.clone().filter(|t| !t.is_empty()),
            body_bytes_max: args.api_body_bytes_max,
            group_id_bytes_max: args.group_id_bytes_max,
            cluster: cluster.as_ref().map(|c| c.cluster()),
            ..Default::default()
        };
        match ringcast::api::spawn(handle.clone(), api_config) {
            Ok(api) => {
                tracing::info!("HTTP API listening on {}", api.local_addr());
                Some(api)
            }
            Err(e) => {
                handle.shutdown();
                let _ = handle.join();
                return Err(e).context("starting the HTTP API");
            }
        }
    };
    std::thread::scope(|s| {
        if !args.stats_interval.is_zero() {
            let handle = &handle;
            let every = args.stats_interval;
            s.spawn(move || loop {
                std::thread::park_timeout(every);
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let m = handle.metrics();
                let fields: Vec<String> =
                    m.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!("stats {}", fields.join(" "));
            });
        }
        let sig = signals.forever().next();
        tracing::info!(signal = ?sig, "shutting down gracefully");
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(api) = api {
            api.shutdown();
        }
        if let Some(cluster) = cluster {
            cluster.shutdown();
        }
        handle.shutdown();
    });
    handle.join().context("a shard failed")?;
    tracing::info!("stopped");
    Ok(())
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_serve_flag_is_documented() {
        let cmd = super::Cli::command();
        cmd.clone().debug_assert();
        let serve = cmd.find_subcommand("serve").expect("serve subcommand");
        for arg in serve.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" {
                continue;
            }
            assert!(arg.get_help().is_some(), "serve --{id} has no help text");
        }
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(super::parse_cpu_list("0,2-4").unwrap().0, vec![0, 2, 3, 4]);
        assert!(super::parse_cpu_list("3-1").is_err());
        assert!(super::parse_cpu_list("x").is_err());
    }
}
