-- Who is the writer for this database, SQLite backend.
-- Keep in step with migrations/postgres/0004_writer_lease.sql: same table, same semantics.
-- The writer role itself is an exclusive flock on the file `<database>.lock` beside the
-- database, held by the writer process; this one row only names its holder, so that a
-- second control plane can say who it is. A holder killed with SIGKILL leaves its row
-- behind: the next writer overwrites it.

CREATE TABLE writer_lease (
    id         INTEGER  NOT NULL PRIMARY KEY CHECK (id = 1),
    host       TEXT     NOT NULL,
    pid        BIGINT   NOT NULL,
    started_at BIGINT   NOT NULL,
    version    TEXT     NOT NULL
);
