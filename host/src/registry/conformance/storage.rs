//! Volumes, their mounts and snapshots, on each backend.

use std::collections::BTreeSet;

use anyhow::Result;

use super::*;
use crate::manifest::Quota;

pub(super) fn volumes(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let quota = Quota {
        max_bytes: Some(1 << 40),
        max_files: None,
    };
    let (owner, named, user, scratch) = registry.write(|tx| {
        let owner = tx.insert_app("data", AppKind::Volume, None, false)?;
        let named = tx.insert_volume(&owner.id, None, Some("data"), quota)?;
        let user = tx.insert_app("web", AppKind::Deployed, None, false)?;
        let scratch = tx.insert_volume(&user.id, Some("scratch"), None, Quota::default())?;
        tx.mount(&owner.id, "self", &named.id)?;
        tx.mount(&user.id, "data", &named.id)?;
        tx.mount(&user.id, "scratch", &scratch.id)?;
        Ok((owner, named, user, scratch))
    })?;
    let mounts = |registry: &mut Registry| -> Result<Vec<(String, String)>> {
        registry.read(|tx| {
            Ok(tx
                .mounted_volumes(&user.id)?
                .into_iter()
                .map(|m| (m.key, m.volume.id))
                .collect())
        })
    };
    registry.read(|tx| {
        let found = tx.named_volume("data")?.expect("the named volume");
        assert_eq!((found.id.as_str(), found.quota), (named.id.as_str(), quota));
        assert_eq!(
            (found.app_id.as_str(), found.key),
            (owner.id.as_str(), None)
        );
        assert!(tx.named_volume("nothing")?.is_none());
        let named_ids: Vec<String> = tx.named_volumes()?.into_iter().map(|v| v.id).collect();
        assert_eq!(named_ids, std::slice::from_ref(&named.id));
        let owned = tx.owned_volumes(&user.id)?;
        assert_eq!(owned.len(), 1);
        assert_eq!(
            (owned[0].key.as_deref(), owned[0].quota),
            (Some("scratch"), Quota::default())
        );
        assert_eq!(ids(&tx.apps_mounting(&named.id)?), [user.id.as_str()]);
        let all: BTreeSet<String> = tx.all_volume_ids()?.into_iter().collect();
        assert_eq!(all, BTreeSet::from([named.id.clone(), scratch.id.clone()]));
        Ok(())
    })?;
    assert_eq!(
        mounts(&mut registry)?,
        [
            ("data".into(), named.id.clone()),
            ("scratch".into(), scratch.id.clone())
        ]
    );
    let again = registry.write(|tx| tx.insert_volume(&owner.id, None, Some("data"), quota));
    assert!(again.is_err(), "two volumes named data");
    let fewer = Quota {
        max_bytes: None,
        max_files: Some(10),
    };
    registry.write(|tx| {
        tx.mount(&user.id, "data", &scratch.id)?;
        tx.unmount(&user.id, "scratch")?;
        tx.set_volume_quota(&named.id, fewer)
    })?;
    assert_eq!(
        mounts(&mut registry)?,
        [("data".into(), scratch.id.clone())]
    );
    registry.read(|tx| {
        assert_eq!(tx.named_volume("data")?.unwrap().quota, fewer);
        assert!(tx.apps_mounting(&named.id)?.is_empty());
        Ok(())
    })?;
    registry.write(|tx| tx.delete_volume(&scratch.id))?;
    assert!(mounts(&mut registry)?.is_empty());
    registry.read(|tx| {
        assert!(tx.owned_volumes(&user.id)?.is_empty());
        Ok(())
    })
}

pub(super) fn snapshots(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let (owner, volume) = registry.write(|tx| {
        let owner = tx.insert_app("data", AppKind::Volume, None, false)?;
        let volume = tx.insert_volume(&owner.id, None, Some("data"), Quota::default())?;
        tx.insert_snapshot(&volume.id, "monday", 1 << 33, 7)?;
        tx.insert_snapshot(&volume.id, "tuesday", 0, 0)?;
        Ok((owner, volume))
    })?;
    let again = registry.write(|tx| tx.insert_snapshot(&volume.id, "monday", 1, 1));
    assert!(again.is_err(), "two snapshots named monday");
    registry.read(|tx| {
        let monday = tx.snapshot(&volume.id, "monday")?.expect("the snapshot");
        assert_eq!((monday.bytes, monday.files), (1 << 33, 7));
        assert!(tx.snapshot(&volume.id, "sunday")?.is_none());
        let names =
            |list: Vec<SnapshotRecord>| list.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(tx.snapshots(None)?), ["monday", "tuesday"]);
        assert_eq!(
            names(tx.snapshots(Some(&volume.id))?),
            ["monday", "tuesday"]
        );
        assert!(tx.snapshots(Some("vo-other"))?.is_empty());
        Ok(())
    })?;
    registry.write(|tx| {
        tx.delete_snapshots(&volume.id, Some("tuesday"))?;
        tx.rename_volume(&volume.id, "archive")
    })?;
    registry.read(|tx| {
        assert_eq!(tx.snapshots(None)?.len(), 1);
        assert!(tx.named_volume("data")?.is_none());
        assert_eq!(tx.named_volume("archive")?.unwrap().id, volume.id);
        assert_eq!(tx.app(&owner.id)?.unwrap().name, "archive");
        Ok(())
    })?;
    registry.write(|tx| tx.delete_volume(&volume.id))?;
    registry.read(|tx| {
        assert!(
            tx.snapshots(None)?.is_empty(),
            "a deleted volume's snapshots stay"
        );
        assert!(tx.named_volume("archive")?.is_none());
        Ok(())
    })
}
