//! How a call ended, said once. The runtime reports how its instance ended
//! (`runtime::Finished`, which knows nothing of who asked it to stop);
//! supervision adds why a stop was asked for ([`Stop`]); the result is one
//! [`Ended`], which the CLI, the node, the HTTP API, web endpoints and
//! schedules translate (an exit code, a call record, an HTTP status) and
//! never rebuild.

use crate::calls::Ending;
use crate::manifest::FunctionSpec;
use crate::registry::{CallState, now_ms};
use crate::runtime::{Finished, Outcome};

/// Why a call was stopped before its guest ended it. The first cause
/// asked for is the one a call ends with (see `StopFlag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C (or SIGTERM) to the process that runs it.
    Signal,
    /// Its app was stopped (`wasmhost app stop`, a replacing deploy).
    AppStopped,
    /// The call was cancelled from elsewhere (`calls cancel`, `deploy
    /// --force`); the registry holds why.
    CallCancelled,
    /// The node running it drained and its grace period ran out.
    Drain,
}

/// How a call ended. A timeout is not a [`Stop`]: it is the function's own
/// limit, and its reason says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The guest exited with this code (0 when `_start` returned).
    Exited(i32),
    /// The guest did not finish (a trap, a start that failed): one line.
    Failed(String),
    /// The function's `timeout` ended it: the reason, as for `Failed`.
    TimedOut(String),
    /// Stopped from outside before it ended.
    Stopped(Stop),
}

impl Ended {
    /// An instance's end as the runtime saw it; `stop` is why it was
    /// stopped, if it was (a stop with no cause recorded is taken for a
    /// signal, as the CLI always has).
    pub fn of(finished: &Finished, stop: Option<Stop>) -> Self {
        match &finished.outcome {
            Outcome::Exited(code) => Ended::Exited(*code),
            Outcome::Failed(reason) if finished.timed_out => Ended::TimedOut(reason.clone()),
            Outcome::Failed(reason) => Ended::Failed(reason.clone()),
            Outcome::Interrupted => Ended::Stopped(stop.unwrap_or(Stop::Signal)),
        }
    }

    pub fn succeeded(&self) -> bool {
        *self == Ended::Exited(0)
    }

    /// Why a call that did not succeed failed, in the words of its record
    /// and of a `--map` summary ("exited with code 3" there reads "exit code
    /// 3"); None for a success or a stop, which each caller names itself.
    pub fn reason(&self) -> Option<String> {
        match self {
            Ended::Exited(0) | Ended::Stopped(_) => None,
            Ended::Exited(code) => Some(format!("exited with code {code}")),
            Ended::Failed(reason) | Ended::TimedOut(reason) => Some(reason.clone()),
        }
    }

    /// How this end of attempt `attempt` of a call of `spec` that gets
    /// `max_attempts` changes its record: a failure is retried while
    /// attempts remain.
    pub fn ending(&self, attempt: u32, max_attempts: u32, spec: &FunctionSpec) -> Ending {
        if self.succeeded() {
            return Ending::Finished {
                state: CallState::Succeeded,
                exit_code: Some(0),
                error: None,
                at: now_ms(),
            };
        }
        let exit_code = match self {
            Ended::Exited(code) => Some(*code),
            _ => None,
        };
        let error = self.reason().unwrap_or_else(|| "interrupted".to_owned());
        Ending::failed(exit_code, error, attempt, max_attempts, spec)
    }
}
