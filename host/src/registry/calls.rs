//! Calls of deployed apps: a queue that nodes claim from, and the record of
//! every call with its attempts and output, which `calls`, `app logs` and
//! the node's API read.
//!
//! Times are Unix milliseconds. A call's state implies its timestamps (the
//! CHECKs of migration 2). The calls row holds its current (or last)
//! attempt; an attempt followed by a retry is moved to `call_attempts` when
//! the call goes back in the queue. So a call that runs once, as nearly all
//! do, costs one row, and one output row per stream and recorder pass.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Serialize, Serializer};

use super::Tx;
use super::backend::{Row, Value, args};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A schedule's tick that came while the previous tick's call was
    /// still queued or running: recorded, never run.
    Skipped,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running => "running",
            CallState::Succeeded => "succeeded",
            CallState::Failed => "failed",
            CallState::Cancelled => "cancelled",
            CallState::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "queued" => CallState::Queued,
            "running" => CallState::Running,
            "succeeded" => CallState::Succeeded,
            "failed" => CallState::Failed,
            "skipped" => CallState::Skipped,
            _ => CallState::Cancelled,
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, CallState::Queued | CallState::Running)
    }
}

/// One call of a deployed app's function, as `calls get --json` shows it
/// (without its output, which [`Tx::call_output`] reads).
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// `ca-` and random characters.
    pub id: String,
    /// The app's name.
    pub app: String,
    pub app_id: String,
    pub function: String,
    pub args: Vec<String>,
    /// Not shown: a caller's variables may hold credentials. Kept only
    /// while the call may still be claimed from the queue (see
    /// [`Tx::insert_call`]); empty once it ended.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    pub state: CallState,
    /// Attempts started so far.
    pub attempts: u32,
    #[serde(skip)]
    pub max_attempts: u32,
    /// The node that ran the last attempt; none for a call run by a
    /// `wasmhost call` process.
    pub node: Option<String>,
    pub exit_code: Option<i32>,
    /// Why it failed or was cancelled, in one line.
    pub error: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: i64,
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub finished_at: Option<i64>,
    #[serde(skip)]
    pub holder: Option<String>,
    /// The module snapshot's digest.
    #[serde(skip)]
    pub module: Option<String>,
    /// The schedule's tick this call ran (or skipped) for; none for a call
    /// someone made.
    #[serde(serialize_with = "rfc3339_opt")]
    pub tick: Option<i64>,
    pub kind: CallKind,
}

/// What made a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// A command (`call`, `run` of a deployed app's function) or the API.
    Call,
    /// A request to a web endpoint.
    Web,
    /// A schedule's tick.
    Schedule,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Call => "call",
            CallKind::Web => "web",
            CallKind::Schedule => "schedule",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "web" => CallKind::Web,
            "schedule" => CallKind::Schedule,
            _ => CallKind::Call,
        }
    }
}

/// Which calls a listing shows, by what made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindFilter {
    All,
    Only(CallKind),
    /// Every kind but web requests, which a busy endpoint makes by the
    /// thousand (see [`Tx::web_requests`]).
    NotWeb,
}

/// A web endpoint's requests, summed up: (app, function, requests,
/// failed, newest's creation time in Unix ms).
pub type WebRequests = (String, String, u64, u64, i64);

/// Unix milliseconds as RFC 3339 (`2026-11-27T18:00:00.123Z`).
pub fn format_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

pub(super) fn rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ms(*ms))
}

pub(super) fn rfc3339_opt<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

/// A call to record.
pub struct NewCall<'a> {
    pub id: &'a str,
    pub app_id: &'a str,
    pub function: &'a str,
    pub args: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub module: Option<&'a str>,
    pub max_attempts: u32,
    /// `Some((holder, node))`: it starts running now, under that lease;
    /// `None`: it is queued for the nodes.
    pub running: Option<(&'a str, Option<&'a str>)>,
    /// How it already ended (a call recorded once it was over).
    pub ended: Option<CallEnd<'a>>,
    /// The schedule's tick it runs for (Unix ms), if a schedule made it.
    pub tick: Option<i64>,
    pub kind: CallKind,
}

/// How a call ended, and when it had started.
#[derive(Debug, Clone, Copy)]
pub struct CallEnd<'a> {
    pub state: CallState,
    pub exit_code: Option<i32>,
    pub error: Option<&'a str>,
    pub started_at: i64,
    pub finished_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of a call's output, as `app logs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Where `--follow` continues from.
    #[serde(skip)]
    pub seq: i64,
    #[serde(serialize_with = "rfc3339")]
    pub time: i64,
    pub call: String,
    pub function: String,
    pub stream: Stream,
    /// Without its newline.
    pub line: String,
}

/// Which lines `app logs` wants.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub function: Option<String>,
    pub call: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    /// Only lines after this one (`LogLine::seq`).
    pub after: i64,
}

/// The columns of a [`CallRecord`], from calls joined with their apps.
/// `CROSS JOIN` makes SQLite drive every query from the calls' own indexes
/// (the queue's and the running calls' are partial, and small); left to
/// itself, it would walk every call of every running app to find queued
/// ones.
const CALL_COLUMNS: &str = "c.id, a.name, c.app_id, c.function, c.args, c.env, c.state, c.attempts, c.max_attempts, c.node, c.exit_code, c.error, c.created_at, c.started_at, c.finished_at, c.holder, c.module, c.tick, c.kind FROM calls c CROSS JOIN apps a ON a.id = c.app_id";

/// What every ending of a call sets, so that its `--env` values are not
/// kept once no node can need them.
const FORGET_ENV: &str = "env = '{}'";

/// The variables `call`'s record keeps: all of them while a node may have
/// to claim it from the queue (it is queued, or may be queued again for a
/// retry), none otherwise.
fn kept_env<'a>(call: &NewCall<'a>) -> &'a BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    let may_be_claimed = call.ended.is_none() && (call.running.is_none() || call.max_attempts > 1);
    if may_be_claimed { call.env } else { &NONE }
}

fn call_from_row(row: &Row) -> Result<CallRecord> {
    let json = |at: usize| -> Result<String> { row.get(at) };
    Ok(CallRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        app_id: row.get(2)?,
        function: row.get(3)?,
        args: serde_json::from_str(&json(4)?).unwrap_or_default(),
        env: serde_json::from_str(&json(5)?).unwrap_or_default(),
        state: CallState::parse(&row.get::<String>(6)?),
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        node: row.get(9)?,
        exit_code: row.get(10)?,
        error: row.get(11)?,
        created_at: row.get(12)?,
        started_at: row.get(13)?,
        finished_at: row.get(14)?,
        holder: row.get(15)?,
        module: row.get(16)?,
        tick: row.get(17)?,
        kind: CallKind::parse(&row.get::<String>(18)?),
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Tx<'_> {
    fn query_calls(&self, sql: &str, params: &[Value]) -> Result<Vec<CallRecord>> {
        self.query(sql, params, call_from_row)
    }

    /// Records a call: queued, running its first attempt, or over. Who
    /// queues calls wakes the nodes ([`Tx::notify`] on `QUEUED`) once for
    /// all of a transaction's.
    ///
    /// A caller's `--env` may hold credentials, so the record keeps its
    /// values only while a node may still claim the call from the queue
    /// and need them: a call that starts at once with no retries, or is
    /// over, keeps none, and every ending below forgets them
    /// ([`FORGET_ENV`]).
    pub fn insert_call(&self, call: &NewCall) -> Result<()> {
        let now = now_ms();
        let (mut state, mut started, holder, node) = match call.running {
            Some((holder, node)) => (CallState::Running, Some(now), Some(holder), node),
            None => (CallState::Queued, None, None, None),
        };
        let (mut finished, mut exit_code, mut error) = (None, None, None);
        if let Some(end) = call.ended {
            (state, started, finished) = (end.state, Some(end.started_at), Some(end.finished_at));
            (exit_code, error) = (end.exit_code, end.error);
        }
        self.execute("INSERT INTO calls (id, app_id, function, state, created_at, started_at, module, args, env, holder, node,
                                    attempts, max_attempts, finished_at, released_at, exit_code, error, tick, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, ?16, ?17, ?18)", args![
                call.id,
                call.app_id,
                call.function,
                state.as_str(),
                started.unwrap_or(now).min(now),
                started,
                call.module,
                serde_json::to_string(call.args)?,
                serde_json::to_string(kept_env(call))?,
                holder,
                node,
                u32::from(started.is_some()),
                call.max_attempts.max(1),
                finished,
                exit_code,
                error,
                call.tick,
                call.kind.as_str(),
            ])?;
        Ok(())
    }

    pub fn call(&self, id: &str) -> Result<Option<CallRecord>> {
        let sql = format!("SELECT {CALL_COLUMNS} WHERE c.id = ?1");
        Ok(self.query_calls(&sql, args![id])?.pop())
    }

    /// The newest calls of the kinds `kinds` lets through first, at most
    /// `limit`: of every app whose id or name is `app` (a redeployed app
    /// has a new id, under the same name), or of all apps.
    pub fn list_calls(
        &self,
        app: Option<&str>,
        kinds: KindFilter,
        limit: usize,
    ) -> Result<Vec<CallRecord>> {
        let (only, but) = match kinds {
            KindFilter::All => (None, None),
            KindFilter::Only(kind) => (Some(kind.as_str()), None),
            KindFilter::NotWeb => (None, Some(CallKind::Web.as_str())),
        };
        let sql = format!(
            "SELECT {CALL_COLUMNS} WHERE (CAST(?1 AS TEXT) IS NULL OR c.app_id = ?1 OR a.name = ?1)
               AND (CAST(?3 AS TEXT) IS NULL OR c.kind = ?3) AND (CAST(?4 AS TEXT) IS NULL OR c.kind <> ?4)
             ORDER BY c.created_at DESC, c.rowid DESC LIMIT ?2"
        );
        self.query_calls(&sql, args![app, limit as i64, only, but])
    }

    /// The web requests of every app whose id or name is `app` (or of all
    /// apps), summed up per endpoint.
    pub fn web_requests(&self, app: Option<&str>) -> Result<Vec<WebRequests>> {
        self.query(
            "SELECT a.name, c.function, COUNT(*), SUM(CASE WHEN c.state = 'failed' THEN 1 ELSE 0 END), MAX(c.created_at)
             FROM calls c CROSS JOIN apps a ON a.id = c.app_id
             WHERE c.kind = 'web' AND (CAST(?1 AS TEXT) IS NULL OR c.app_id = ?1 OR a.name = ?1)
             GROUP BY a.name, c.function ORDER BY a.name, c.function",
            args![app],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)? as u64, r.get::<i64>(3)? as u64, r.get(4)?)),
        )
    }

    /// Running calls, of one app or of all.
    pub fn running_calls(&self, app_id: Option<&str>) -> Result<Vec<CallRecord>> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} WHERE c.state = 'running' AND (CAST(?1 AS TEXT) IS NULL OR c.app_id = ?1) ORDER BY +c.created_at, c.rowid"
        );
        self.query_calls(&sql, args![app_id])
    }

    /// Queued calls of running apps that may start now, oldest first;
    /// with `lock`, locked for this transaction, skipping those another
    /// claim has locked (`FOR UPDATE SKIP LOCKED` in a cluster).
    pub fn claimable_calls(&self, limit: usize, lock: bool) -> Result<Vec<CallRecord>> {
        let lock = if lock {
            self.skip_locked("c")
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {CALL_COLUMNS} WHERE c.state = 'queued' AND c.run_after <= ?1 AND a.state = 'running'
             ORDER BY c.run_after, c.created_at LIMIT ?2{lock}"
        );
        self.query_calls(&sql, args![now_ms(), limit as i64])
    }

    /// How many calls of `function` of `app_id` run now, by anyone.
    pub fn running_count(&self, app_id: &str, function: &str) -> Result<u32> {
        self.query_value(
            "SELECT count(*) FROM calls WHERE app_id = ?1 AND function = ?2 AND state = 'running'",
            args![app_id, function],
        )
    }

    /// Starts the next attempt of queued call `id` under `holder`; false if
    /// it is no longer queued.
    pub fn claim_call(&self, id: &str, holder: &str, node: Option<&str>) -> Result<bool> {
        let changed = self.execute(
            "UPDATE calls SET state = 'running', started_at = ?2, holder = ?3, node = ?4,
                 attempts = attempts + 1, released_at = NULL, exit_code = NULL, error = NULL
                 WHERE id = ?1 AND state = 'queued'",
            args![id, now_ms(), holder, node],
        )?;
        Ok(changed == 1)
    }

    /// Ends call `id` as `state`; a call already ended (cancelled from
    /// elsewhere) keeps its first ending. Returns whether this one counted.
    pub fn finish_call(
        &self,
        id: &str,
        state: CallState,
        exit_code: Option<i32>,
        error: Option<&str>,
        at: i64,
    ) -> Result<bool> {
        let changed = self.execute(&format!("UPDATE calls SET state = ?2, finished_at = ?3, released_at = ?3, exit_code = ?4, error = ?5, {FORGET_ENV}
                 WHERE id = ?1 AND state IN ('queued', 'running')"), args![id, state.as_str(), at, exit_code, error])?;
        if changed == 0 {
            self.release(id)?;
        }
        if changed == 1 {
            self.notify(super::ENDED)?;
        }
        Ok(changed == 1)
    }

    /// Says that the runner of call `id`, which ended otherwise (it was
    /// cancelled), has let go of it.
    fn release(&self, id: &str) -> Result<()> {
        self.execute(
            "UPDATE calls SET released_at = ?2 WHERE id = ?1 AND released_at IS NULL",
            args![id, now_ms()],
        )?;
        Ok(())
    }

    /// Cancels a queued or running call; whoever runs it lets go of it once
    /// it has stopped (see [`Tx::attempt_open`]).
    pub fn cancel_call(&self, id: &str, reason: &str) -> Result<bool> {
        let changed = self.execute(
            &format!(
                "UPDATE calls SET state = 'cancelled', finished_at = ?2, error = ?3, {FORGET_ENV}
                 WHERE id = ?1 AND state IN ('queued', 'running')"
            ),
            args![id, now_ms(), reason],
        )?;
        if changed == 1 {
            self.notify(super::ENDED)?;
        }
        Ok(changed == 1)
    }

    /// Cancels every queued or running call of app `app_id` (it was
    /// stopped): a queued one would otherwise wait forever, since calls of
    /// a stopped app are never claimed. Returns how many.
    pub fn cancel_app_calls(&self, app_id: &str, reason: &str) -> Result<usize> {
        let mut cancelled = 0;
        // One state at a time, written out, so each uses its partial index.
        for state in ["running", "queued"] {
            let sql = format!(
                "UPDATE calls SET state = 'cancelled', finished_at = ?2, error = ?3, {FORGET_ENV} WHERE state = '{state}' AND app_id = ?1"
            );
            cancelled += self.execute(&sql, args![app_id, now_ms(), reason])?;
        }
        if cancelled > 0 {
            self.notify(super::ENDED)?;
        }
        Ok(cancelled)
    }

    /// Whether an attempt of call `id` has started and its runner has not
    /// let go of it yet.
    pub fn attempt_open(&self, id: &str) -> Result<bool> {
        self.query_value("SELECT EXISTS (SELECT 1 FROM calls WHERE id = ?1 AND started_at IS NOT NULL AND released_at IS NULL)", args![id])
    }

    /// Puts running call `id` back in the queue for another attempt no
    /// earlier than `run_after`, its attempt (moved to `call_attempts`)
    /// ended by `error`.
    pub fn requeue_call(
        &self,
        id: &str,
        run_after: i64,
        exit_code: Option<i32>,
        error: &str,
    ) -> Result<bool> {
        let moved = self.execute("INSERT INTO call_attempts (call_id, attempt, node, started_at, finished_at, exit_code, error)
                 SELECT id, attempts, node, started_at, ?2, ?3, ?4 FROM calls WHERE id = ?1 AND state = 'running'", args![id, now_ms(), exit_code, error])?;
        if moved == 0 {
            self.release(id)?;
            return Ok(false);
        }
        self.execute(
            "UPDATE calls SET state = 'queued', started_at = NULL, holder = NULL, run_after = ?2,
                 exit_code = ?3, error = ?4 WHERE id = ?1",
            args![id, run_after, exit_code, error],
        )?;
        self.notify(super::QUEUED)?;
        Ok(true)
    }

    /// Deletes ended calls (with their attempts and output) created before
    /// `before`, and all but the newest `keep` ended calls. Returns how many.
    pub fn prune_calls(&self, before: i64, keep: usize) -> Result<usize> {
        let cutoff: Option<i64> = self.query_opt(
            "SELECT created_at FROM calls WHERE finished_at IS NOT NULL ORDER BY created_at DESC LIMIT 1 OFFSET ?1",
            args![keep as i64],
            |r| r.get(0),
        )?;
        let before = cutoff.map_or(before, |c| c.max(before));
        self.execute(
            "DELETE FROM calls WHERE finished_at IS NOT NULL AND created_at < ?1",
            args![before],
        )
    }
}
