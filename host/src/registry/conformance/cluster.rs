//! Nodes and the reaper's lock on each backend; leases and guest locks,
//! which are rows only in a cluster, on PostgreSQL.

use anyhow::Result;

use super::*;

pub(super) fn nodes(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "web")?;
    let id = new_call_id();
    registry.write(|tx| {
        tx.insert_node("no-1", "host-a", "10.0.0.1:7000", 41)?;
        tx.insert_node("no-2", "host-b", "10.0.0.2:7000", 42)?;
        tx.insert_call(&call(&id, &app.id, Some(("no-1", Some("no-1")))))
    })?;
    registry.read(|tx| {
        let nodes = tx.nodes(0)?;
        let seen: Vec<(&str, NodeState, u32, u64)> = nodes
            .iter()
            .map(|n| (n.id.as_str(), n.state, n.pid, n.running_calls))
            .collect();
        assert_eq!(
            seen,
            [
                ("no-1", NodeState::Alive, 41, 1),
                ("no-2", NodeState::Alive, 42, 0)
            ]
        );
        assert_eq!(
            (nodes[0].host.as_str(), nodes[0].address.as_str()),
            ("host-a", "10.0.0.1:7000")
        );
        assert!(nodes[0].stopped_at.is_none());
        Ok(())
    })?;
    registry.write(|tx| {
        tx.node_stopped("no-2")?;
        tx.node_stopped("no-2")
    })?;
    registry.read(|tx| {
        let stopped = tx.nodes(0)?.pop().unwrap();
        assert_eq!(
            (stopped.id.as_str(), stopped.state),
            ("no-2", NodeState::Stopped)
        );
        let since: Vec<String> = tx
            .nodes(now_ms() + 60_000)?
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(since, ["no-1"], "a node stopped before `since` is listed");
        Ok(())
    })
}

/// One reaper at a time in a cluster; on one machine, every caller reaps.
pub(super) fn reaper(db: &Location) -> Result<()> {
    let mut first = Registry::open(db)?;
    let mut second = Registry::open(db)?;
    let inner = first.as_the_only_reaper(|_| second.as_the_only_reaper(|_| Ok(())))?;
    let expected = if db.is_shared() {
        Some(None)
    } else {
        Some(Some(()))
    };
    assert_eq!(inner, expected);
    // Let go of once done.
    assert_eq!(second.as_the_only_reaper(|_| Ok(1))?, Some(1));
    Ok(())
}

pub(super) fn leases(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    registry.write(|tx| {
        assert!(tx.take_lease("le-1", "owner-a", 60_000)?);
        assert!(
            !tx.take_lease("le-1", "owner-b", 60_000)?,
            "took a live lease"
        );
        tx.renew_leases("owner-a", 60_000)?;
        assert_eq!(tx.lease_owner("le-1")?.as_deref(), Some("owner-a"));
        assert_eq!(tx.live_lease_owner("le-1")?.as_deref(), Some("owner-a"));
        assert!(!tx.take_lease_from("le-1", "owner-x", "owner-b", 60_000)?);
        assert!(tx.take_lease_from("le-1", "owner-a", "owner-b", 60_000)?);
        assert_eq!(tx.lease_owner("le-1")?.as_deref(), Some("owner-b"));
        tx.abandon_lease("le-1")?;
        assert!(tx.live_lease_owner("le-1")?.is_none());
        // Already expired when taken.
        assert!(tx.take_lease("le-2", "owner-c", -1_000)?);
        Ok(())
    })?;
    registry.write(|tx| {
        let mut leases = tx.leases()?;
        leases.sort();
        assert_eq!(
            leases,
            [("le-1".to_owned(), true), ("le-2".to_owned(), true)]
        );
        assert!(
            tx.take_lease("le-1", "owner-c", 60_000)?,
            "an expired lease is free"
        );
        tx.delete_expired_lease("le-1")?;
        tx.delete_expired_lease("le-2")?;
        assert_eq!(tx.leases()?, [("le-1".to_owned(), false)]);
        tx.delete_lease("le-1")?;
        assert!(tx.leases()?.is_empty());
        Ok(())
    })
}

pub(super) fn cluster_locks(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let alive = |_: &str| false;
    let first = registry.write_shared(|tx| {
        tx.take_lease("owner-a", "owner-a", 60_000)?;
        tx.take_lease("owner-b", "owner-b", 60_000)?;
        tx.take_cluster_lock("vo-1/f", "in-1", "owner-a", alive)
    })?;
    let first = first.expect("a free lock");
    let second = registry.write_shared(|tx| {
        assert!(
            tx.take_cluster_lock("vo-1/f", "in-2", "owner-b", alive)?
                .is_none(),
            "a held lock granted"
        );
        // Its holder's process died here, before its lease expired.
        tx.take_cluster_lock("vo-1/f", "in-2", "owner-b", |owner| owner == "owner-a")
    })?;
    let second = second.expect("a dead holder's lock");
    assert!(second > first, "fences only grow: {first}, then {second}");
    let third = registry.write_shared(|tx| {
        tx.release_cluster_locks("in-1", Some("vo-1/f"))?;
        assert!(
            tx.take_cluster_lock("vo-1/f", "in-3", "owner-a", alive)?
                .is_none(),
            "released by a former holder"
        );
        tx.release_cluster_locks("in-2", None)?;
        tx.take_cluster_lock("vo-1/f", "in-3", "owner-a", alive)
    })?;
    assert!(third.expect("a released lock") > second);
    Ok(())
}
