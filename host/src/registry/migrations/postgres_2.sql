-- The lead's (leases, nodes). A placeholder on branch `shared`: only the
-- leases table that `lease::process_id`'s stub writes to.
CREATE TABLE leases (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
