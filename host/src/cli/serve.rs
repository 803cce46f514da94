//! `wasmhost serve`: run a node in the foreground.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use wasmhost::invoke::Room;
use wasmhost::lease;
use wasmhost::node::{self, NodeConfig};

use super::logging::{self, LogFormat};
use super::open_state;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to answer the HTTP API on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// How long SIGTERM or SIGINT lets running calls finish before interrupting them.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_grace)]
    grace: Duration,
    /// Most calls this node runs at once.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_calls: u32,
    /// Most calls of any one app this node runs at once (calls run at once
    /// and web requests; queued calls have their `concurrency`), so that a
    /// flood of one app's requests leaves room for the others [default:
    /// three quarters of --max-calls, rounded up].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    max_calls_per_app: Option<u32>,
    /// Most connections open at once, clients of the API and of web
    /// endpoints together; one more is closed as soon as it is accepted.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How often the node renews its lease in a cluster's registry
    /// [env: WASMHOST_HEARTBEAT; default 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    heartbeat: Option<Duration>,
    /// How late a renewal may be before other nodes count this one dead
    /// and retry its calls [env: WASMHOST_DEAD_AFTER; default 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    dead_after: Option<Duration>,
    /// How the node writes its log lines on stderr: `text` (time, level,
    /// node id, message) or `json` (one object a line).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

impl ServeArgs {
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match wasmhost::manifest::units::parse_duration_or_zero(text)? {
        zero if zero.is_zero() => Err("must be more than zero".into()),
        interval => Ok(interval),
    }
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    wasmhost::manifest::units::parse_duration_or_zero(text)
}

pub fn execute(args: ServeArgs) -> Result<u8> {
    let defaults = lease::timing();
    let timing = lease::Timing {
        heartbeat: args.heartbeat.unwrap_or(defaults.heartbeat),
        dead_after: args.dead_after.unwrap_or(defaults.dead_after),
    };
    if timing.dead_after <= timing.heartbeat {
        return Err(super::usage(format!(
            "--dead-after ({:?}) must be longer than --heartbeat ({:?}), or live nodes count as dead",
            timing.dead_after, timing.heartbeat
        )));
    }
    lease::set_timing(timing);
    // Housekeeping first: a node that died left calls this one may retry.
    let (home, registry) = open_state()?;
    drop(registry);
    let most = args.max_calls as usize;
    let per_app = args
        .max_calls_per_app
        .map_or((most * 3).div_ceil(4), |n| n as usize)
        .min(most);
    let config = NodeConfig {
        listen: args.listen,
        grace: args.grace,
        room: Room { most, per_app },
        max_connections: args.max_connections as usize,
    };
    node::serve(&home, config, |address, node| {
        logging::set_node(node);
        eprintln!(
            "node {node} serving {} on http://{address} (token in {})",
            home.root().display(),
            node::token_file(&home).display()
        );
    })?;
    eprintln!("node stopped");
    Ok(0)
}
