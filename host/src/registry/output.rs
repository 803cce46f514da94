//! A call's output in the registry: rows of lines per stream and recorder
//! pass, read back by `calls get`, `app logs` and the node's API, and kept
//! within a bound of bytes per app, since a row count alone lets one busy
//! app's output fill the disk.

use anyhow::Result;

use super::Tx;
use super::backend::args;
use super::calls::{CallRecord, LogFilter, LogLine, Stream};

impl Tx<'_> {
    /// Adds output of attempt `attempt` of a call; `dropped` more bytes of
    /// it were not kept.
    pub fn append_output(
        &self,
        call_id: &str,
        app_id: &str,
        attempt: u32,
        lines: &[(i64, Stream, String)],
        dropped: [u64; 2],
    ) -> Result<()> {
        // One row per run of lines of one stream.
        for run in lines.chunk_by(|a, b| a.1 == b.1) {
            let (time, stream) = (run[0].0, run[0].1);
            let data: String = run.iter().map(|l| l.2.as_str()).collect();
            self.execute("INSERT INTO call_output (call_id, app_id, attempt, time, stream, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", args![
                call_id,
                app_id,
                attempt,
                time,
                stream.as_str(),
                data
            ])?;
        }
        if dropped != [0, 0] {
            self.execute("UPDATE calls SET dropped_stdout = dropped_stdout + ?2, dropped_stderr = dropped_stderr + ?3 WHERE id = ?1", args![call_id, dropped[0] as i64, dropped[1] as i64])?;
        }
        Ok(())
    }

    /// The kept stdout and stderr of a call's last attempt, and how many
    /// bytes of each were not kept.
    pub fn call_output(&self, call: &CallRecord) -> Result<([String; 2], [u64; 2])> {
        let rows = self.query(
            "SELECT stream, data FROM call_output WHERE call_id = ?1 AND attempt = ?2 ORDER BY id",
            args![call.id, call.attempts],
            |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?)),
        )?;
        let mut out = [String::new(), String::new()];
        for (stream, data) in rows {
            out[usize::from(stream == "stderr")].push_str(&data);
        }
        let dropped: (i64, i64) = self
            .query_opt(
                "SELECT dropped_stdout, dropped_stderr FROM calls WHERE id = ?1",
                args![call.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or_default();
        Ok((out, [dropped.0 as u64, dropped.1 as u64]))
    }

    /// Log lines of `app_id` after `filter.after`, oldest first: those of
    /// at most `limit` output rows; with `tail`, the last `limit` lines.
    pub fn log_lines(
        &self,
        app_id: &str,
        filter: &LogFilter,
        limit: usize,
        tail: bool,
    ) -> Result<Vec<LogLine>> {
        let order = if tail { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT o.id, o.time, o.call_id, c.function, o.stream, o.data FROM call_output o JOIN calls c ON c.id = o.call_id
             WHERE o.app_id = ?1 AND o.id > ?2 AND (CAST(?3 AS TEXT) IS NULL OR c.function = ?3) AND (CAST(?4 AS TEXT) IS NULL OR o.call_id = ?4)
               AND (CAST(?5 AS BIGINT) IS NULL OR o.time >= ?5)
             ORDER BY o.id {order} LIMIT ?6"
        );
        let mut rows = self.query(
            &sql,
            args![
                app_id,
                filter.after,
                filter.function,
                filter.call,
                filter.since,
                limit as i64
            ],
            |r| {
                let stream = match r.get::<String>(4)?.as_str() {
                    "stderr" => Stream::Stderr,
                    _ => Stream::Stdout,
                };
                let line = LogLine {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    call: r.get(2)?,
                    function: r.get(3)?,
                    stream,
                    line: String::new(),
                };
                Ok((line, r.get::<String>(5)?))
            },
        )?;
        if tail {
            rows.reverse();
        }
        let mut lines: Vec<LogLine> = rows
            .into_iter()
            .flat_map(|(row, data)| {
                data.split_inclusive('\n')
                    .map(|text| LogLine {
                        line: text.strip_suffix('\n').unwrap_or(text).to_owned(),
                        ..row.clone()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if tail && lines.len() > limit {
            lines.drain(..lines.len() - limit);
        }
        Ok(lines)
    }

    /// Deletes the output of each app's oldest calls past its newest
    /// `keep_bytes` bytes of output (the calls' records stay, with their
    /// ends); returns how many output rows it deleted.
    pub fn prune_output(&self, keep_bytes: u64) -> Result<usize> {
        self.execute(
            "DELETE FROM call_output WHERE id IN (
               SELECT id FROM (
                 SELECT id, SUM(octet_length(data)) OVER (PARTITION BY app_id ORDER BY id DESC) AS newer
                 FROM call_output
               ) AS sized WHERE newer > ?1
             )",
            args![keep_bytes as i64],
        )
    }
}
