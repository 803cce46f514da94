-- What made each call: `call` (a command or the API), `web` (a request to
-- an endpoint) or `schedule` (a tick), so that `calls list` can keep a
-- busy endpoint's requests from drowning the rest. (SQLite's migration 12.)

ALTER TABLE calls ADD COLUMN kind TEXT NOT NULL DEFAULT 'call'
    CHECK (kind IN ('call', 'web', 'schedule'));
UPDATE calls SET kind = 'schedule' WHERE tick IS NOT NULL;
CREATE INDEX calls_by_kind ON calls (kind, created_at);
