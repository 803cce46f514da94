-- The schema SQLite's migrations 1-8 arrived at, in PostgreSQL's types:
-- integers are BIGINT (times in Unix seconds for apps and volumes,
-- milliseconds for calls), booleans are 0/1 as in SQLite, and `seq` keeps
-- the order rows were made in, which SQLite's rowid gives.
CREATE TABLE apps (
    seq         BIGSERIAL NOT NULL,
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ephemeral', 'deployed', 'volume')),
    state       TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
    created_at  BIGINT NOT NULL,
    stopped_at  BIGINT,
    manifest    TEXT,
    has_lease   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX apps_by_name ON apps (name, state);
CREATE INDEX apps_by_state ON apps (state, has_lease);
CREATE TABLE volumes (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id),
    key         TEXT,
    name        TEXT,
    created_at  BIGINT NOT NULL,
    max_bytes   BIGINT CHECK (max_bytes >= 0),
    max_files   BIGINT CHECK (max_files >= 0)
);
CREATE UNIQUE INDEX named_volumes ON volumes (name) WHERE name IS NOT NULL;
CREATE TABLE mounts (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    volume_id   TEXT NOT NULL REFERENCES volumes (id),
    key         TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE TABLE app_modules (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (app_id, function)
);
CREATE INDEX app_modules_by_digest ON app_modules (digest);
CREATE TABLE calls (
    seq             BIGSERIAL NOT NULL,
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps (id),
    function        TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    error           TEXT,
    module          TEXT,
    args            TEXT NOT NULL DEFAULT '[]',
    env             TEXT NOT NULL DEFAULT '{}',
    holder          TEXT,
    node            TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL DEFAULT 1,
    run_after       BIGINT NOT NULL DEFAULT 0,
    exit_code       BIGINT,
    dropped_stdout  BIGINT NOT NULL DEFAULT 0,
    dropped_stderr  BIGINT NOT NULL DEFAULT 0,
    released_at     BIGINT,
    tick            BIGINT,
    CHECK (CASE state WHEN 'queued' THEN started_at IS NULL
                      WHEN 'skipped' THEN started_at IS NULL
                      WHEN 'cancelled' THEN true
                      ELSE started_at IS NOT NULL END),
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX calls_by_app ON calls (app_id, id);
CREATE INDEX calls_running ON calls (app_id, function) WHERE state = 'running';
CREATE INDEX calls_queue ON calls (run_after, created_at) WHERE state = 'queued';
CREATE UNIQUE INDEX calls_by_tick ON calls (app_id, function, tick) WHERE tick IS NOT NULL;
CREATE INDEX calls_ticking ON calls (app_id, function)
    WHERE tick IS NOT NULL AND state IN ('queued', 'running');
CREATE TABLE call_attempts (
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    attempt     BIGINT NOT NULL,
    node        TEXT,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    exit_code   BIGINT,
    error       TEXT,
    PRIMARY KEY (call_id, attempt)
);
CREATE TABLE call_output (
    id          BIGSERIAL PRIMARY KEY,
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    time        BIGINT NOT NULL,
    stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data        TEXT NOT NULL
);
CREATE INDEX call_output_by_call ON call_output (call_id, attempt, id);
CREATE INDEX call_output_by_app ON call_output (app_id, id);
CREATE TABLE snapshots (
    volume_id   TEXT NOT NULL REFERENCES volumes (id),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    bytes       BIGINT NOT NULL,
    files       BIGINT NOT NULL,
    PRIMARY KEY (volume_id, name)
);
CREATE TABLE schedules (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    schedule    TEXT NOT NULL,
    next_tick   BIGINT NOT NULL,
    PRIMARY KEY (app_id, function)
);
CREATE INDEX schedules_due ON schedules (next_tick);
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    keys        TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
