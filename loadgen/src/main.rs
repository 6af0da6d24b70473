//! `ringcast-loadgen`: command line front end of the [`ringcast_loadgen`] library.

use std::process::ExitCode;

use clap::Parser;
use ringcast_loadgen::{parse_secs, Config, IoMode, Mode, Publish, SourceIps};

/// Open-loop fan-out latency load generator for WebSocket broadcast servers.
///
/// Opens --connections subscriber WebSocket clients (plus --publishers publisher
/// connections), has the publishers send --rate messages/s in total for --duration seconds
/// without ever waiting for replies, and measures every delivery's latency (receive time minus
/// the send time carried in the message, one monotonic clock for the whole process), losses,
/// duplicates and reorders. Prints a table on stdout, or one JSON object with --json (all
/// other output goes to stderr).
#[derive(Debug, Parser)]
#[command(name = "ringcast-loadgen", version, about, long_about)]
struct Args {
    /// WebSocket URL of the server under test, e.g. ws://127.0.0.1:2020/ (plain ws only).
    #[arg(long)]
    url: String,

    /// Number of subscriber connections; publisher connections come on top of these.
    #[arg(long, default_value_t = 100)]
    connections: usize,

    /// Offered load in messages per second, all publishers together (split evenly).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,

    /// Seconds of measured publishing per run (per step with --find-max); accepts 10, 10s, 500ms.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: f64,

    /// Size in bytes of each message (at least 24: the header, then padding).
    #[arg(long, default_value_t = 64)]
    payload: usize,

    /// Print one JSON object (schema in docs/loadgen-contract.md) instead of the table.
    #[arg(long)]
    json: bool,

    /// Step the offered rate up from --start-rate by --rate-step-factor until p99 exceeds
    /// --p99-bound-ms or fewer than 99% of deliveries arrive, and report the highest
    /// sustainable deliveries/s (connections are kept between steps).
    #[arg(long)]
    find_max: bool,

    /// Number of publisher connections; each sends its own sequence-numbered stream.
    #[arg(long, default_value_t = 1)]
    publishers: usize,

    /// Connection attempts started per second during ramp-up (0 means no limit).
    #[arg(long, default_value_t = 5000.0)]
    ramp_rate: f64,

    /// Most TCP connects + WebSocket handshakes in flight at once, over all threads.
    #[arg(long, default_value_t = 256)]
    max_inflight_handshakes: usize,

    /// Local addresses to bind before connecting, round-robin: "auto" (127.0.0.1-127.0.0.8
    /// when the target is IPv4 loopback, so >28k connections fit), "none", or a comma list of
    /// addresses and IPv4 ranges like 127.0.0.1-127.0.0.16.
    #[arg(long, default_value = "auto")]
    source_ips: SourceIps,

    /// Worker threads driving the connections (0 means one per available CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,

    /// Seconds of unmeasured load before measuring (lets groups joins settle and caches warm).
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    warmup: f64,

    /// Highest acceptable p99 fan-out latency in milliseconds for a --find-max step.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,

    /// First offered rate (messages/s) of --find-max; defaults to --rate.
    #[arg(long)]
    start_rate: Option<f64>,

    /// Factor the offered rate is multiplied by after each --find-max step that met the bounds.
    #[arg(long, default_value_t = 1.5)]
    rate_step_factor: f64,

    /// Most climbing steps --find-max runs (retries and bisections come on top).
    #[arg(long, default_value_t = 12)]
    max_steps: usize,

    /// --find-max: how many times a step that missed the bounds is run again before it
    /// counts as failed (a single noisy step then does not end the search).
    #[arg(long, default_value_t = 1)]
    step_retries: usize,

    /// --find-max: after the first confirmed failure, bisect this many times (geometric
    /// midpoint) between the best passing rate and the failed one; 3 bisections narrow a
    /// 1.5x step to about 5%.
    #[arg(long, default_value_t = 3)]
    bisect_steps: usize,

    /// Run the whole measurement (warm-up, then the run or the find-max search) N times over
    /// the same connections; report the median repetition and the spread (min, max).
    #[arg(long, default_value_t = 1)]
    repeat: usize,

    /// Connect storm: open --connections as fast as --ramp-rate (0 = no limit) and
    /// --max-inflight-handshakes allow, report handshakes/s and connect-latency percentiles
    /// (first attempt to verified 101, retries included), close them, publish nothing.
    #[arg(long)]
    connect_only: bool,

    /// Subscribers' receive path: "auto" (io_uring multishot recv over provided buffers when
    /// the kernel allows, else epoll), "uring" (fail without io_uring) or "epoll". The report
    /// says which ran and why.
    #[arg(long, default_value = "auto")]
    io: IoMode,

    /// io_uring path: let a wait hold completions back up to this many microseconds (or
    /// until 64 are ready) so the thread wakes once per batch, not once per TCP segment
    /// (kernel >= 6.12). Adds at most this much to measured latencies; 0 = wake for each.
    #[arg(long, default_value_t = 50)]
    recv_batch_us: u64,

    /// Seconds to keep waiting after the last send for in-flight deliveries (ends earlier once
    /// everything expected has arrived).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    drain_secs: f64,

    /// "plain": publishers send binary messages the server relays to everyone; "groups":
    /// subscribers join groups and publishers send JSON send_to_group commands whose message
    /// string holds the header hex-encoded (see README).
    #[arg(long, default_value = "plain")]
    mode: Mode,

    /// Comma-separated group ids for --mode groups; subscriber i joins group i mod count and
    /// publishers rotate over all groups (default: one group named "loadgen").
    #[arg(long, value_delimiter = ',', conflicts_with = "group_count")]
    groups: Vec<String>,

    /// For --mode groups: use N groups named {group-prefix}0 .. {group-prefix}N-1 instead of
    /// listing them with --groups.
    #[arg(long, default_value_t = 0)]
    group_count: usize,

    /// Name prefix of the groups generated by --group-count.
    #[arg(long, default_value = "g")]
    group_prefix: String,

    /// How publishers inject messages: "ws" over their own WebSocket connections; "http" as
    /// pipelined POST {http-url}?content=<text>&to_group=<G> requests (the seed form);
    /// "http-json" as POST {http-url}api/publish with {"data":..,"to":{"groups":[G]}};
    /// "http-batch" as POST {http-url}api/publish/batch with --batch-size publishes each.
    #[arg(long, default_value = "ws")]
    publish: Publish,

    /// Base URL of the HTTP push API for --publish http*, e.g. http://127.0.0.1:2021/.
    #[arg(long)]
    http_url: Option<String>,

    /// Bearer token for the HTTP push API, sent as "Authorization: Bearer TOKEN" (needed
    /// when the API does not listen on loopback).
    #[arg(long)]
    http_token: Option<String>,

    /// Publishes per request with --publish http-batch (each to the next group in
    /// rotation); --rate still counts messages, so requests/s = rate / batch size.
    #[arg(long, default_value_t = 10)]
    batch_size: usize,

    /// Retries per connection after a refused, reset or timed-out connect or handshake
    /// (exponential backoff from 50 ms up to 2 s).
    #[arg(long, default_value_t = 5)]
    connect_retries: u32,

    /// Seconds one connect + handshake attempt may take before it is retried.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    connect_timeout: f64,

    /// Always show the live progress line on stderr (default: only when stderr is a terminal
    /// and the run lasts more than ~3 s).
    #[arg(long, conflicts_with = "no_progress")]
    progress: bool,

    /// Never show the live progress line.
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    fn into_config(self) -> Config {
        Config {
            url: self.url,
            connections: self.connections,
            rate: self.rate,
            duration_s: self.duration,
            payload: self.payload,
            publishers: self.publishers,
            ramp_rate: self.ramp_rate,
            max_inflight_handshakes: self.max_inflight_handshakes,
            source_ips: self.source_ips,
            threads: self.threads,
            warmup_s: self.warmup,
            p99_bound_ms: self.p99_bound_ms,
            find_max: self.find_max,
            start_rate: self.start_rate,
            rate_step_factor: self.rate_step_factor,
            max_steps: self.max_steps,
            step_retries: self.step_retries,
            bisect_steps: self.bisect_steps,
            repeat: self.repeat,
            connect_only: self.connect_only,
            io: self.io,
            recv_batch_us: self.recv_batch_us,
            drain_s: self.drain_secs,
            mode: self.mode,
            groups: self.groups,
            group_count: self.group_count,
            group_prefix: self.group_prefix,
            publish: self.publish,
            http_url: self.http_url,
            http_token: self.http_token,
            batch_size: self.batch_size,
            connect_retries: self.connect_retries,
            connect_timeout_s: self.connect_timeout,
            progress: if self.progress {
                Some(true)
            } else if self.no_progress {
                Some(false)
            } else {
                None
            },
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let cfg = args.into_config();
    match ringcast_loadgen::run(&cfg) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.human());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_documented() {
        let cmd = super::Args::command();
        cmd.clone().debug_assert();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "--{id} has no help text"
            );
        }
    }
}
