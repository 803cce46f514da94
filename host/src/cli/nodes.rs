//! `wasmhost nodes`: the nodes serving this home or cluster.

use anyhow::Result;
use clap::Subcommand;
use wasmhost::node;
use wasmhost::registry::NodeState;

use super::open_state;
use super::output::{outln, table, timestamp_ms};

#[derive(Subcommand)]
pub enum NodesCommand {
    /// List nodes: alive, and dead (gone without stopping, e.g. killed).
    List {
        /// Also nodes that stopped.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn execute(command: NodesCommand) -> Result<u8> {
    let (home, mut registry) = open_state()?;
    match command {
        NodesCommand::List { all, json } => {
            let nodes = node::list(&home, &mut registry, all)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&nodes)?)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let state = match n.state {
                        NodeState::Alive => "alive",
                        NodeState::Dead => "dead",
                        NodeState::Stopped => "stopped",
                    };
                    vec![
                        n.id.clone(),
                        state.to_owned(),
                        n.host.clone(),
                        n.address.clone(),
                        n.running_calls.to_string(),
                        timestamp_ms(n.started_at),
                        n.last_heartbeat.map(timestamp_ms).unwrap_or_default(),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(
                    &[
                        "ID",
                        "STATE",
                        "HOST",
                        "ADDRESS",
                        "RUNNING",
                        "STARTED",
                        "LAST HEARTBEAT"
                    ],
                    &rows
                )
            )?;
            Ok(0)
        }
    }
}
