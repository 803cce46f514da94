//! Calls run at once: most HTTP calls of the API run on the request's
//! own thread, without the queue, when the node has room and nothing makes
//! them wait their turn (a `concurrency`) or come back (`retries`); their
//! answer is built from what this node saw rather than read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::oneshot;

use super::worker::Worker;
use crate::calls::Ending;
use crate::registry::{Attempt, CallKind, CallRecord, new_call_id, now_ms};
use crate::runtime::OutputLog;
use crate::views::FullCall;

impl Worker {
    /// Runs a call of a deployed app at once, on the calling thread, if the
    /// node has room and nothing makes it wait its turn (a `concurrency`)
    /// or come back (`retries`): what most HTTP calls are. Records it
    /// without a transaction of its own (the recorder writes it with
    /// others, once, as it ended). Returns where its record comes once it
    /// is written, or None if the call must be queued instead.
    pub fn call_now(
        self: &Arc<Self>,
        app: &str,
        function: &str,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Option<oneshot::Receiver<Answer>>> {
        let (live, function) = self.live_app(app, function)?;
        let spec = &live.manifest.functions[&function];
        if spec.concurrency.is_some() || spec.retries.max > 0 {
            return Ok(None);
        }
        let id = new_call_id();
        let admitted = (self.supervisor).admit(&live.record.id, &id, self.room, Instant::now());
        let Some(watch) = admitted else {
            return Ok(None);
        };
        let log = OutputLog::retaining();
        let input = (args, env);
        let call = self.begin(&live, &function, CallKind::Call, input, log.clone(), &watch);
        let (tx, rx) = oneshot::channel();
        self.clone().run_call(call, &live, watch, log, Some(tx));
        Ok(Some(rx))
    }
}

/// A call run at once, as it ended: or why its record could not be written.
pub type Answer = Result<FullCall, String>;

/// The record of a call run at once, as it ended with `ending`, built
/// from what this node saw rather than read back from the registry.
pub(super) fn ended_call(mut call: CallRecord, ending: &Ending, log: &OutputLog) -> FullCall {
    let mut finished_at = now_ms();
    if let Ending::Finished {
        state,
        exit_code,
        error,
        at,
    } = ending
    {
        (call.state, call.exit_code, call.error) = (*state, *exit_code, error.clone());
        finished_at = *at;
        call.finished_at = Some(finished_at);
    }
    let ([stdout, stderr], [dropped_stdout, dropped_stderr]) = log.retained();
    let attempt = Attempt {
        attempt: call.attempts,
        node: call.node.clone(),
        started_at: call.started_at.unwrap_or(finished_at),
        finished_at: call.finished_at,
        exit_code: call.exit_code,
        error: call.error.clone(),
    };
    FullCall {
        call,
        stdout,
        stderr,
        dropped_stdout,
        dropped_stderr,
        attempt_history: vec![attempt],
    }
}
