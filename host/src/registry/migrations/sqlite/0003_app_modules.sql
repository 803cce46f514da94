-- The module snapshot each function of a deployed app runs.

CREATE TABLE app_modules (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    digest      TEXT NOT NULL,
    PRIMARY KEY (app_id, function)
);
CREATE INDEX app_modules_by_digest ON app_modules (digest);
