//! Schedules' next ticks, and the calls they make (see `crate::triggers::schedule`).

use std::collections::BTreeMap;

use anyhow::Result;

use super::Tx;
use super::backend::args;
use super::calls::now_ms;

/// A scheduled function whose next tick has come.
#[derive(Debug, Clone)]
pub struct DueTick {
    pub app_id: String,
    pub function: String,
    /// Unix ms.
    pub next_tick: i64,
}

impl Tx<'_> {
    /// Sets the scheduled functions of `app_id`: (function, schedule as
    /// written, its first tick). A function whose schedule is unchanged
    /// keeps its next tick; one no longer listed loses its row.
    pub fn set_schedules(&self, app_id: &str, schedules: &[(String, String, i64)]) -> Result<()> {
        let mut kept = Vec::new();
        for (function, schedule, first_tick) in schedules {
            self.execute(
                "INSERT INTO schedules (app_id, function, schedule, next_tick) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app_id, function) DO UPDATE SET schedule = excluded.schedule, next_tick = excluded.next_tick
                 WHERE schedules.schedule != excluded.schedule",
                args![app_id, function, schedule, first_tick],
            )?;
            kept.push(function.as_str());
        }
        let stored: Vec<String> = self.query(
            "SELECT function FROM schedules WHERE app_id = ?1",
            args![app_id],
            |r| r.get(0),
        )?;
        for gone in stored.iter().filter(|f| !kept.contains(&f.as_str())) {
            self.execute(
                "DELETE FROM schedules WHERE app_id = ?1 AND function = ?2",
                args![app_id, gone],
            )?;
        }
        Ok(())
    }

    /// Forgets the schedules of `app_id` (it stopped).
    pub(super) fn delete_schedules(&self, app_id: &str) -> Result<()> {
        self.execute("DELETE FROM schedules WHERE app_id = ?1", args![app_id])?;
        Ok(())
    }

    /// The earliest next tick of a running app's schedule (Unix ms).
    pub fn next_schedule_tick(&self) -> Result<Option<i64>> {
        self.query_value(
            "SELECT MIN(s.next_tick) FROM schedules s JOIN apps a ON a.id = s.app_id WHERE a.state = 'running'",
            args![],
        )
    }

    /// Scheduled functions of running apps whose next tick is at or before
    /// `now` (Unix ms).
    pub fn due_schedules(&self, now: i64) -> Result<Vec<DueTick>> {
        self.query(
            "SELECT s.app_id, s.function, s.next_tick FROM schedules s JOIN apps a ON a.id = s.app_id
             WHERE s.next_tick <= ?1 AND a.state = 'running' ORDER BY s.next_tick",
            args![now], |r| {
            Ok(DueTick {
                app_id: r.get(0)?,
                function: r.get(1)?,
                next_tick: r.get(2)?,
            })
        })
    }

    /// Claims tick `tick` of a schedule by moving it on to `next`; false if
    /// someone else claimed it first.
    pub fn advance_schedule(
        &self,
        app_id: &str,
        function: &str,
        tick: i64,
        next: i64,
    ) -> Result<bool> {
        let changed = self.execute("UPDATE schedules SET next_tick = ?4 WHERE app_id = ?1 AND function = ?2 AND next_tick = ?3", args![app_id, function, tick, next])?;
        Ok(changed == 1)
    }

    /// Whether a call an earlier tick made is still queued or running.
    pub fn scheduled_run_going(&self, app_id: &str, function: &str) -> Result<bool> {
        self.query_value(
            "SELECT EXISTS (SELECT 1 FROM calls WHERE app_id = ?1 AND function = ?2
                                AND tick IS NOT NULL AND state IN ('queued', 'running'))",
            args![app_id, function],
        )
    }

    /// Records tick `tick` as skipped, `why`.
    pub fn insert_skipped(
        &self,
        id: &str,
        app_id: &str,
        function: &str,
        tick: i64,
        why: &str,
    ) -> Result<()> {
        let now = now_ms();
        self.execute("INSERT INTO calls (id, app_id, function, state, created_at, finished_at, released_at, error, tick, kind)
                 VALUES (?1, ?2, ?3, 'skipped', ?4, ?4, ?4, ?5, ?6, 'schedule')", args![id, app_id, function, now, why, tick])?;
        Ok(())
    }

    /// App id -> function -> (next tick as stored, Unix ms), for every
    /// scheduled function of a running app.
    pub fn next_ticks(&self) -> Result<BTreeMap<String, BTreeMap<String, i64>>> {
        let rows = self.query(
            "SELECT s.app_id, s.function, s.next_tick FROM schedules s JOIN apps a ON a.id = s.app_id
             WHERE a.state = 'running'",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut ticks: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for (app, function, tick) in rows {
            let (app, function, tick): (String, String, i64) = (app, function, tick);
            ticks.entry(app).or_default().insert(function, tick);
        }
        Ok(ticks)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::migrations;
    use super::super::{Location, Registry};

    /// Rebuilding `calls` keeps every call, and the attempts and output
    /// that reference them (which a drop with foreign keys on would
    /// delete).
    #[test]
    fn migration_8_keeps_calls_their_attempts_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for migration in &migrations::SQLITE[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute_batch(
            "INSERT INTO apps (id, name, kind, state, created_at) VALUES ('ap-1', 'a', 'deployed', 'running', 1);
             INSERT INTO calls (id, app_id, function, state, created_at, started_at, finished_at, released_at, attempts, args)
                 VALUES ('ca-1', 'ap-1', 'f', 'failed', 1, 2, 3, 3, 2, '[\"x\"]');
             INSERT INTO call_attempts (call_id, attempt, started_at, finished_at, error) VALUES ('ca-1', 1, 1, 2, 'boom');
             INSERT INTO call_output (call_id, app_id, attempt, time, stream, data) VALUES ('ca-1', 'ap-1', 2, 2, 'stdout', 'hi\n');",
        )
        .unwrap();
        drop(conn);

        let mut registry = Registry::open(&Location::File(path.clone())).unwrap();
        registry
            .read(|tx| {
                let call = tx.call("ca-1")?.expect("the call survived");
                assert_eq!(
                    (&call.args[..], call.attempts, call.tick),
                    (&["x".to_owned()][..], 2, None)
                );
                assert_eq!(tx.attempts(&call)?.len(), 2);
                assert_eq!(tx.call_output(&call)?.0[0], "hi\n");
                Ok(())
            })
            .unwrap();
        // Foreign keys are on again once migrated.
        let on: bool = registry.db.query("PRAGMA foreign_keys", &[]).unwrap()[0]
            .get(0)
            .unwrap();
        assert!(on);
        registry
            .write(|tx| {
                tx.insert_skipped("ca-2", "ap-1", "f", 1000, "busy")?;
                assert!(
                    tx.insert_skipped("ca-3", "ap-1", "f", 1000, "busy")
                        .is_err()
                );
                Ok(())
            })
            .unwrap();
    }
}
