//! Calls (queue, claims, output, endings) and schedules, on each backend.

use std::collections::BTreeMap;

use anyhow::Result;

use super::*;

pub(super) fn calls_claimed_and_requeued(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "worker")?;
    let id = new_call_id();
    let args = vec!["a".to_owned(), "b c".to_owned()];
    let env = BTreeMap::from([("KEY".to_owned(), "value".to_owned())]);
    registry.write(|tx| {
        tx.insert_call(&NewCall {
            args: &args,
            env: &env,
            module: Some("sha256:m"),
            max_attempts: 2,
            ..call(&id, &app.id, None)
        })?;
        tx.notify(QUEUED)
    })?;
    let claimed = registry.write_shared(|tx| {
        let claimable: Vec<String> = tx
            .claimable_calls(10, true)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(claimable, std::slice::from_ref(&id));
        Ok(tx.claim_call(&id, "holder-1", Some("node-1"))?
            && !tx.claim_call(&id, "holder-2", None)?)
    })?;
    assert!(claimed, "claimed once, and only once");
    registry.read(|tx| {
        let running = tx.call(&id)?.expect("the call");
        assert_eq!(
            (running.state, running.attempts, running.max_attempts),
            (CallState::Running, 1, 2)
        );
        assert_eq!(
            (running.holder.as_deref(), running.node.as_deref()),
            (Some("holder-1"), Some("node-1"))
        );
        assert_eq!(
            (&running.args, &running.env, running.module.as_deref()),
            (&args, &env, Some("sha256:m"))
        );
        assert_eq!(
            (running.app.as_str(), running.function.as_str()),
            ("worker", "f")
        );
        assert!(running.started_at.is_some() && running.finished_at.is_none());
        assert_eq!(tx.running_count(&app.id, "f")?, 1);
        assert_eq!(tx.running_calls(Some(&app.id))?.len(), 1);
        assert_eq!(tx.running_calls(None)?.len(), 1);
        assert!(tx.claimable_calls(10, false)?.is_empty());
        assert!(tx.attempt_open(&id)?);
        assert!(tx.module_digests_in_use()?.contains("sha256:m"));
        Ok(())
    })?;
    let later = now_ms() + 60_000;
    registry.write(|tx| {
        assert!(tx.requeue_call(&id, later, Some(1), "exit 1")?);
        assert!(
            !tx.requeue_call(&id, later, Some(1), "again")?,
            "requeued a queued call"
        );
        Ok(())
    })?;
    registry.read(|tx| {
        let queued = tx.call(&id)?.unwrap();
        assert_eq!(
            (queued.state, queued.attempts, queued.started_at),
            (CallState::Queued, 1, None)
        );
        assert!(
            tx.claimable_calls(10, false)?.is_empty(),
            "claimable before its backoff"
        );
        let attempts = tx.attempts(&queued)?;
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            (
                attempts[0].attempt,
                attempts[0].node.as_deref(),
                attempts[0].exit_code
            ),
            (1, Some("node-1"), Some(1))
        );
        assert_eq!(attempts[0].error.as_deref(), Some("exit 1"));
        assert_eq!(queued.env, env, "its next attempt needs its --env");
        Ok(())
    })?;
    // Once it ended, no node needs its --env: the record forgets it.
    registry.write(|tx| tx.cancel_call(&id, "cancelled by a test"))?;
    let ended = registry.read(|tx| tx.call(&id))?.expect("the call");
    assert!(ended.env.is_empty(), "an ended call kept {:?}", ended.env);
    Ok(())
}

pub(super) fn calls_output(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "worker")?;
    let id = new_call_id();
    registry.write(|tx| tx.insert_call(&call(&id, &app.id, Some(("holder", None)))))?;
    let at = now_ms();
    let lines = [
        (at, Stream::Stdout, "one\n".to_owned()),
        (at, Stream::Stdout, "two\n".to_owned()),
        (at + 1, Stream::Stderr, "oops\n".to_owned()),
        (at + 2, Stream::Stdout, "tail".to_owned()),
    ];
    registry.write_shared(|tx| tx.append_output(&id, &app.id, 1, &lines, [3, 0]))?;
    registry.read(|tx| {
        let record = tx.call(&id)?.unwrap();
        let (output, dropped) = tx.call_output(&record)?;
        assert_eq!(output, ["one\ntwo\ntail".to_owned(), "oops\n".to_owned()]);
        assert_eq!(dropped, [3, 0]);
        let all = tx.log_lines(&app.id, &LogFilter::default(), 100, false)?;
        let text: Vec<(&str, Stream)> = all.iter().map(|l| (l.line.as_str(), l.stream)).collect();
        assert_eq!(
            text,
            [
                ("one", Stream::Stdout),
                ("two", Stream::Stdout),
                ("oops", Stream::Stderr),
                ("tail", Stream::Stdout)
            ]
        );
        assert!(all.iter().all(|l| l.call == id && l.function == "f"));
        let last = tx.log_lines(&app.id, &LogFilter::default(), 1, true)?;
        assert_eq!(
            last.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["tail"]
        );
        let after = LogFilter {
            after: all[2].seq,
            ..LogFilter::default()
        };
        assert_eq!(tx.log_lines(&app.id, &after, 100, false)?.len(), 1);
        let other = LogFilter {
            function: Some("g".into()),
            ..LogFilter::default()
        };
        assert!(tx.log_lines(&app.id, &other, 100, false)?.is_empty());
        let later = LogFilter {
            since: Some(at + 1),
            ..LogFilter::default()
        };
        assert_eq!(tx.log_lines(&app.id, &later, 100, false)?.len(), 2);
        Ok(())
    })?;
    // Each app keeps its newest output within a bound of bytes; another
    // app's is its own.
    let busy = deployed(&mut registry, "busy")?;
    for n in 0..10 {
        let id = new_call_id();
        registry.write(|tx| tx.insert_call(&call(&id, &busy.id, Some(("holder", None)))))?;
        let line = [(at + n, Stream::Stdout, format!("{n}{}\n", "x".repeat(98)))];
        registry.write(|tx| tx.append_output(&id, &busy.id, 1, &line, [0, 0]))?;
    }
    let deleted = registry.write(|tx| tx.prune_output(350))?;
    assert_eq!(
        deleted, 7,
        "the output of all but the newest 3 100-byte rows"
    );
    registry.read(|tx| {
        let kept = tx.log_lines(&busy.id, &LogFilter::default(), 100, false)?;
        let firsts: Vec<&str> = kept.iter().map(|l| &l.line[..1]).collect();
        assert_eq!(firsts, ["7", "8", "9"]);
        assert_eq!(
            tx.log_lines(&app.id, &LogFilter::default(), 100, false)?
                .len(),
            4
        );
        Ok(())
    })
}

pub(super) fn calls_ended(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "worker")?;
    let [done, cancelled, queued, running, recorded] = std::array::from_fn(|_| new_call_id());
    let at = now_ms();
    registry.write(|tx| {
        tx.insert_call(&call(&done, &app.id, Some(("holder", None))))?;
        tx.insert_call(&call(&cancelled, &app.id, None))?;
        tx.insert_call(&call(&queued, &app.id, None))?;
        tx.insert_call(&call(&running, &app.id, Some(("holder", None))))?;
        tx.insert_call(&NewCall {
            ended: Some(CallEnd {
                state: CallState::Failed,
                exit_code: Some(2),
                error: Some("boom"),
                started_at: at - 10,
                finished_at: at,
            }),
            ..call(&recorded, &app.id, None)
        })?;
        tx.append_output(
            &recorded,
            &app.id,
            1,
            &[(at, Stream::Stderr, "boom\n".into())],
            [0, 0],
        )
    })?;
    registry.write(|tx| {
        assert!(tx.finish_call(&done, CallState::Succeeded, Some(0), None, now_ms())?);
        assert!(!tx.finish_call(&done, CallState::Failed, Some(1), Some("late"), now_ms())?);
        assert!(tx.cancel_call(&cancelled, "not wanted")?);
        assert!(!tx.cancel_call(&cancelled, "twice")?);
        assert_eq!(tx.cancel_app_calls(&app.id, "app stopped")?, 2);
        Ok(())
    })?;
    registry.read(|tx| {
        let state = |id: &str| -> Result<(CallState, Option<String>)> {
            let call = tx.call(id)?.unwrap();
            assert!(call.finished_at.is_some(), "{id} has no end");
            Ok((call.state, call.error))
        };
        assert_eq!(state(&done)?, (CallState::Succeeded, None));
        assert_eq!(tx.call(&done)?.unwrap().exit_code, Some(0));
        assert!(!tx.attempt_open(&done)?);
        assert_eq!(
            state(&cancelled)?,
            (CallState::Cancelled, Some("not wanted".into()))
        );
        assert_eq!(state(&queued)?.0, CallState::Cancelled);
        assert_eq!(
            state(&running)?,
            (CallState::Cancelled, Some("app stopped".into()))
        );
        assert!(tx.attempt_open(&running)?, "its runner has yet to let go");
        let failed = tx.call(&recorded)?.unwrap();
        assert_eq!(
            (failed.state, failed.exit_code, failed.started_at),
            (CallState::Failed, Some(2), Some(at - 10))
        );
        // Newest first; calls of one millisecond in the order they were made.
        let newest: Vec<String> = tx
            .list_calls(Some("worker"), KindFilter::All, 3)?
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(newest, [running.clone(), queued.clone(), cancelled.clone()]);
        assert_eq!(tx.list_calls(None, KindFilter::All, 100)?.len(), 5);
        Ok(())
    })?;
    // The recorded call began 10 ms before the others were made.
    let pruned = registry.write(|tx| tx.prune_calls(at - 5, 100))?;
    assert_eq!(pruned, 1, "ended calls made before the cutoff");
    registry.read(|tx| {
        assert!(tx.call(&recorded)?.is_none());
        assert_eq!(tx.list_calls(Some(&app.id), KindFilter::All, 100)?.len(), 4);
        let lines = tx.log_lines(&app.id, &LogFilter::default(), 100, false)?;
        assert!(lines.is_empty(), "a pruned call's output stayed");
        Ok(())
    })
}

/// Web requests are listed by kind, and summed up per endpoint.
pub(super) fn calls_by_kind(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "worker")?;
    registry.write(|tx| tx.insert_call(&call(&new_call_id(), &app.id, None)))?;
    let at = now_ms();
    let requests: Vec<String> = (0..3).map(|_| new_call_id()).collect();
    registry.write(|tx| {
        for (n, id) in requests.iter().enumerate() {
            tx.insert_call(&NewCall {
                kind: CallKind::Web,
                ended: Some(CallEnd {
                    state: if n == 0 {
                        CallState::Failed
                    } else {
                        CallState::Succeeded
                    },
                    exit_code: Some(if n == 0 { 500 } else { 200 }),
                    error: None,
                    started_at: at + n as i64,
                    finished_at: at + n as i64,
                }),
                ..call(id, &app.id, Some(("holder", None)))
            })?;
        }
        Ok(())
    })?;
    registry.read(|tx| {
        let kinds = |filter| -> Result<Vec<CallKind>> {
            Ok(tx
                .list_calls(Some(&app.id), filter, 100)?
                .iter()
                .map(|c| c.kind)
                .collect())
        };
        assert_eq!(kinds(KindFilter::Only(CallKind::Web))?, [CallKind::Web; 3]);
        assert!(!kinds(KindFilter::NotWeb)?.contains(&CallKind::Web));
        assert_eq!(
            kinds(KindFilter::All)?.len(),
            kinds(KindFilter::NotWeb)?.len() + 3
        );
        assert_eq!(kinds(KindFilter::NotWeb)?, [CallKind::Call]);
        let summed = tx.web_requests(Some("worker"))?;
        assert_eq!(summed.len(), 1);
        let (name, function, count, failed, _) = &summed[0];
        assert_eq!(
            (name.as_str(), function.as_str(), *count, *failed),
            ("worker", "f", 3, 1)
        );
        Ok(())
    })
}

pub(super) fn schedules(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "cron")?;
    let entry = |f: &str, schedule: &str, tick: i64| (f.to_owned(), schedule.to_owned(), tick);
    registry.write(|tx| {
        tx.set_schedules(
            &app.id,
            &[
                entry("tick", "@every 1m", 1_000),
                entry("tock", "@every 5m", 2_000),
            ],
        )
    })?;
    registry.write(|tx| {
        let due: Vec<(String, i64)> = tx
            .due_schedules(1_500)?
            .into_iter()
            .map(|d| (d.function, d.next_tick))
            .collect();
        assert_eq!(due, [("tick".to_owned(), 1_000)]);
        assert!(tx.advance_schedule(&app.id, "tick", 1_000, 61_000)?);
        assert!(
            !tx.advance_schedule(&app.id, "tick", 1_000, 61_000)?,
            "one tick claimed twice"
        );
        // Unchanged schedules keep their next tick; changed ones start anew.
        tx.set_schedules(
            &app.id,
            &[
                entry("tick", "@every 1m", 5),
                entry("tock", "@every 9m", 3_000),
            ],
        )
    })?;
    registry.read(|tx| {
        let ticks = tx.next_ticks()?;
        let expected = BTreeMap::from([("tick".to_owned(), 61_000), ("tock".to_owned(), 3_000)]);
        assert_eq!(ticks.get(&app.id), Some(&expected));
        Ok(())
    })?;
    let id = new_call_id();
    registry.write(|tx| {
        tx.set_schedules(&app.id, &[entry("tick", "@every 1m", 61_000)])?;
        assert!(!tx.scheduled_run_going(&app.id, "f")?);
        tx.insert_call(&NewCall {
            tick: Some(61_000),
            kind: CallKind::Schedule,
            ..call(&id, &app.id, None)
        })?;
        assert!(tx.scheduled_run_going(&app.id, "f")?);
        tx.insert_skipped(&new_call_id(), &app.id, "f", 121_000, "busy")
    })?;
    let twice =
        registry.write(|tx| tx.insert_skipped(&new_call_id(), &app.id, "f", 61_000, "busy"));
    assert!(twice.is_err(), "two calls for one tick");
    registry.read(|tx| {
        let tock_gone = tx.next_ticks()?[&app.id]
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(tock_gone, ["tick"]);
        let calls = tx.list_calls(Some(&app.id), KindFilter::All, 10)?;
        let skipped = calls
            .iter()
            .find(|c| c.state == CallState::Skipped)
            .expect("the skipped tick");
        assert_eq!(
            (skipped.tick, skipped.error.as_deref()),
            (Some(121_000), Some("busy"))
        );
        assert!(skipped.started_at.is_none() && skipped.finished_at.is_some());
        assert!(calls.iter().all(|c| c.kind == CallKind::Schedule));
        Ok(())
    })?;
    registry.write(|tx| tx.mark_stopped(&app.id))?;
    registry.read(|tx| {
        assert!(tx.due_schedules(i64::MAX)?.is_empty());
        assert!(!tx.next_ticks()?.contains_key(&app.id));
        Ok(())
    })
}
