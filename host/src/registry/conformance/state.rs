//! Apps, transactions, secrets and stored modules, on each backend.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

use super::*;
use crate::manifest::AppManifest;

fn manifest(name: &str) -> AppManifest {
    let json = format!(r#"{{"name":"{name}","entrypoint":null,"volumes":{{}},"functions":{{}}}}"#);
    serde_json::from_str(&json).unwrap()
}

pub(super) fn apps(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let web = manifest("web");
    let (first, second, job) = registry.write(|tx| {
        let first = tx.insert_app("web", AppKind::Deployed, Some(&web), false)?;
        let second = tx.insert_app("web", AppKind::Deployed, None, false)?;
        let job = tx.insert_app("job", AppKind::Ephemeral, None, true)?;
        Ok((first, second, job))
    })?;
    registry.read(|tx| {
        let stored = tx.app(&first.id)?.expect("the app is stored");
        assert_eq!(
            (stored.name.as_str(), stored.kind, stored.state),
            ("web", AppKind::Deployed, AppState::Running)
        );
        assert_eq!(stored.manifest.as_ref(), Some(&web));
        assert_eq!(
            (stored.created_at, stored.stopped_at),
            (first.created_at, None)
        );
        assert!(tx.app(&job.id)?.unwrap().has_lease);
        let found: BTreeSet<String> = tx.find_apps("web")?.into_iter().map(|a| a.id).collect();
        assert_eq!(found, BTreeSet::from([first.id.clone(), second.id.clone()]));
        assert_eq!(ids(&tx.find_apps(&job.id)?), [job.id.as_str()]);
        // The newest of a name: the later row of one second.
        let latest = tx.latest_app_named("web", AppKind::Deployed)?.unwrap();
        assert_eq!(latest.id, second.id);
        assert_eq!(ids(&tx.leased_running_apps()?), [job.id.as_str()]);
        Ok(())
    })?;
    registry.write(|tx| {
        assert!(tx.mark_stopped(&second.id)?);
        assert!(!tx.mark_stopped(&second.id)?, "stopped twice");
        tx.set_manifest(&second.id, &web)
    })?;
    registry.read(|tx| {
        let stopped = tx.app(&second.id)?.unwrap();
        assert_eq!(stopped.state, AppState::Stopped);
        assert!(stopped.stopped_at.is_some());
        assert_eq!(stopped.manifest, Some(web.clone()));
        // A running app is the latest of its name before a newer stopped one.
        let latest = tx.latest_app_named("web", AppKind::Deployed)?.unwrap();
        assert_eq!(latest.id, first.id);
        assert!(tx.find_apps("web")?.iter().all(|a| a.id != second.id));
        assert_eq!(ids(&tx.list_apps(false)?), [first.id.as_str(), &job.id]);
        assert_eq!(
            ids(&tx.list_apps(true)?),
            [first.id.as_str(), &second.id, &job.id]
        );
        Ok(())
    })
}

pub(super) fn transactions(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let failed: Result<()> = registry.write(|tx| {
        tx.insert_app("ghost", AppKind::Deployed, None, false)?;
        bail!("changed its mind")
    });
    assert!(failed.is_err());
    let shared: Result<()> = registry.write_shared(|tx| {
        tx.insert_app("ghost", AppKind::Deployed, None, false)?;
        bail!("changed its mind")
    });
    assert!(shared.is_err());
    registry.read(|tx| {
        assert!(tx.find_apps("ghost")?.is_empty(), "a failed write was kept");
        Ok(())
    })?;
    // A failed statement ends its transaction, not the connection.
    let app = registry.write(|tx| tx.insert_app("kept", AppKind::Deployed, None, false))?;
    let duplicate = registry
        .write(|tx| tx.insert_app_with_id(&app.id, "again", AppKind::Deployed, None, false));
    assert!(duplicate.is_err(), "two apps of one id");
    registry.read(|tx| {
        assert_eq!(ids(&tx.list_apps(true)?), [app.id.as_str()]);
        Ok(())
    })
}

pub(super) fn secrets(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let keys = ["USER".to_owned(), "PASSWORD".to_owned()];
    let first = SealedSecret {
        nonce: vec![0, 1, 2, 255],
        sealed: vec![0; 40],
    };
    let second = SealedSecret {
        nonce: vec![7; 12],
        sealed: vec![255; 3],
    };
    registry.write(|tx| {
        assert!(tx.put_secret("db", &keys, &first, false)?);
        assert!(
            !tx.put_secret("db", &keys[..1], &second, false)?,
            "replaced unasked"
        );
        Ok(())
    })?;
    registry.read(|tx| {
        let stored = tx.sealed_secret("db")?.expect("the secret");
        assert_eq!(
            (stored.nonce, stored.sealed),
            (first.nonce.clone(), first.sealed.clone())
        );
        assert!(tx.sealed_secret("none")?.is_none());
        Ok(())
    })?;
    registry.write(|tx| {
        assert!(tx.put_secret("db", &keys[..1], &second, true)?);
        assert!(tx.put_secret("api", &[], &second, false)?);
        Ok(())
    })?;
    registry.read(|tx| {
        let listed: Vec<(String, Vec<String>)> = tx
            .secrets()?
            .into_iter()
            .map(|s| (s.name, s.keys))
            .collect();
        assert_eq!(
            listed,
            [("api".into(), vec![]), ("db".into(), vec!["USER".into()])]
        );
        assert_eq!(tx.sealed_secret("db")?.unwrap().sealed, second.sealed);
        Ok(())
    })?;
    registry.write(|tx| {
        assert!(tx.delete_secret("db")?);
        assert!(!tx.delete_secret("db")?);
        Ok(())
    })
}

pub(super) fn modules(db: &Location) -> Result<()> {
    let mut registry = Registry::open(db)?;
    let app = deployed(&mut registry, "web")?;
    let digests = BTreeMap::from([
        ("f".to_owned(), "sha256:a".to_owned()),
        ("g".to_owned(), "sha256:b".to_owned()),
    ]);
    let bytes: Vec<u8> = (0..=255).collect();
    registry.write(|tx| {
        tx.set_app_modules(&app.id, &digests)?;
        tx.put_module("sha256:a", &bytes)?;
        tx.put_module("sha256:a", &bytes)?;
        tx.put_module("sha256:z", b"\0unused")
    })?;
    registry.read(|tx| {
        assert_eq!(tx.app_modules(&app.id)?, digests);
        assert_eq!(tx.module_bytes("sha256:a")?, Some(bytes.clone()));
        assert_eq!(
            tx.module_bytes("sha256:z")?.as_deref(),
            Some(&b"\0unused"[..])
        );
        assert!(tx.module_bytes("sha256:none")?.is_none());
        let in_use: Vec<String> = tx.module_digests_in_use()?.into_iter().collect();
        assert_eq!(in_use, ["sha256:a", "sha256:b"]);
        Ok(())
    })?;
    registry.write(|tx| tx.delete_unused_modules())?;
    registry.read(|tx| {
        assert!(
            tx.module_bytes("sha256:z")?.is_none(),
            "an unused module stayed"
        );
        assert!(
            tx.module_bytes("sha256:a")?.is_some(),
            "a module in use went"
        );
        Ok(())
    })?;
    registry.write(|tx| tx.mark_stopped(&app.id))?;
    registry.read(|tx| {
        assert!(tx.module_digests_in_use()?.is_empty());
        Ok(())
    })
}
