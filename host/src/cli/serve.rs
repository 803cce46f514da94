//! `wasmhost serve`: run a node in the foreground.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use wasmhost::node::{self, NodeConfig};

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
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    wasmhost::manifest::units::parse_duration_or_zero(text)
}

pub fn execute(args: ServeArgs) -> Result<u8> {
    // Housekeeping first: a node that died left calls this one may retry.
    let (home, registry) = open_state()?;
    drop(registry);
    let config = NodeConfig {
        listen: args.listen,
        grace: args.grace,
        max_calls: args.max_calls as usize,
    };
    node::serve(&home, config, |address, node| {
        eprintln!(
            "node {node} serving {} on http://{address} (token in {})",
            home.root().display(),
            node::token_file(&home).display()
        );
    })?;
    eprintln!("node stopped");
    Ok(0)
}
