-- Module bytes by digest. A one-machine home leaves it empty (its
-- `modules/` directory is the store); PostgreSQL's is its migration 3.

CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
