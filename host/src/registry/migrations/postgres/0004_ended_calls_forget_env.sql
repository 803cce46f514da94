-- A caller's `--env` values are kept only while a node may still claim
-- the call from the queue (see `Tx::insert_call`): forget those of calls
-- that ended before this release, which kept them until pruned. (SQLite's
-- migration 11.)

UPDATE calls SET env = '{}' WHERE state NOT IN ('queued', 'running');
