-- stagectl migrate: control and log tables. Applied idempotently before every run.
CREATE TABLE IF NOT EXISTS stage_migration_control (
    run_id         bigserial PRIMARY KEY,
    table_name     text        NOT NULL,
    column_name    text        NOT NULL,
    pk_name        text        NOT NULL,
    dry_run        boolean     NOT NULL,
    transactional  boolean     NOT NULL DEFAULT false,
    status         text        NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted')),
    last_id        text,                         -- keyset position (the key as text), NULL before the first batch
    batch_no       integer     NOT NULL DEFAULT 0,
    rows_scanned   bigint      NOT NULL DEFAULT 0,
    rows_changed   bigint      NOT NULL DEFAULT 0,  -- in a dry run: planned changes
    rows_unknown   bigint      NOT NULL DEFAULT 0,
    rows_null      bigint      NOT NULL DEFAULT 0,
    rows_skipped   bigint      NOT NULL DEFAULT 0,  -- changed by the application between read and write
    catalog_sha256 text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    reverted_at    timestamptz,
    error          text
);
-- --resume finds the latest unfinished run of a table/column quickly.
CREATE INDEX IF NOT EXISTS stage_migration_control_target
    ON stage_migration_control (table_name, column_name, dry_run, run_id DESC);

CREATE TABLE IF NOT EXISTS stage_normalization_log (
    id         bigserial   PRIMARY KEY,
    run_id     bigint      NOT NULL REFERENCES stage_migration_control (run_id),
    row_id     text        COLLATE "C" NOT NULL,  -- the key as text; bytewise order keeps the index cheap
    old_value  text,
    new_value  text,
    batch_no   integer     NOT NULL,
    dry_run    boolean     NOT NULL,
    logged_at  timestamptz NOT NULL DEFAULT now()
);
-- One log row per changed row per run: a repeat would violate it. It also serves revert, which pages
-- through a run's log by row_id, and the summary; no other index, so logging stays cheap.
CREATE UNIQUE INDEX IF NOT EXISTS stage_normalization_log_run_row ON stage_normalization_log (run_id, row_id);
