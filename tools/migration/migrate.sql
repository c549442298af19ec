-- stagectl migrate: control and log tables. Applied idempotently before every run.
CREATE TABLE IF NOT EXISTS stage_migration_control (
    run_id         bigserial PRIMARY KEY,
    table_name     text        NOT NULL,
    column_name    text        NOT NULL,
    pk_name        text        NOT NULL,
    dry_run        boolean     NOT NULL,
    transactional  boolean     NOT NULL DEFAULT false,
    -- running: a process holds the run's advisory lock (holder_pid); interrupted: it was found running with no
    -- process holding its lock (killed); aborted: stopped by SIGINT/SIGTERM; failed: gave up (resumable);
    -- abandoned: closed by `stagectl migrate abandon`, never resumed.
    status         text        NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted', 'interrupted',
                                                          'abandoned')),
    last_id        text,                         -- keyset position (the key as text), NULL before the first batch
    batch_no       integer     NOT NULL DEFAULT 0,
    rows_scanned   bigint      NOT NULL DEFAULT 0,
    rows_changed   bigint      NOT NULL DEFAULT 0,  -- in a dry run: planned changes
    rows_unknown   bigint      NOT NULL DEFAULT 0,
    rows_null      bigint      NOT NULL DEFAULT 0,
    rows_skipped   bigint      NOT NULL DEFAULT 0,  -- changed by the application between read and write
    catalog_sha256 text,                         -- stagegate <= 0.1: a hash of the parsed stages (not comparable)
    catalog_version text,                        -- the catalog's version (as the proxy names it): resume checks it
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    reverted_at    timestamptz,
    error          text,
    holder_pid     integer,                      -- the backend that holds (or held) the run's advisory lock
    interrupted_at timestamptz,                  -- when the run was found running without its lock holder
    abandoned_at   timestamptz,
    resumes        integer     NOT NULL DEFAULT 0,
    holder         text,                         -- the stagectl process: "pid 123 on host"
    parallel       integer     NOT NULL DEFAULT 1,  -- key ranges walked at once (stage_migration_ranges when > 1)
    pause_requested boolean    NOT NULL DEFAULT false,  -- `stagectl migrate pause`: hold between batches
    waiting        text                          -- why a running run waits now (paused, replica lag), NULL if not
);
-- Tables created before runs had a lifecycle gain its columns and states; checked first so a routine run
-- takes no ACCESS EXCLUSIVE lock on the control table.
DO $$
DECLARE
    control regclass := to_regclass('stage_migration_control');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = control AND attname = 'resumes' AND NOT attisdropped)
    THEN
        ALTER TABLE stage_migration_control ADD COLUMN IF NOT EXISTS holder_pid integer,
            ADD COLUMN IF NOT EXISTS interrupted_at timestamptz, ADD COLUMN IF NOT EXISTS abandoned_at timestamptz,
            ADD COLUMN resumes integer NOT NULL DEFAULT 0,
            DROP CONSTRAINT IF EXISTS stage_migration_control_status_check,
            ADD CONSTRAINT stage_migration_control_status_check CHECK (status IN ('running', 'completed', 'failed',
                'aborted', 'interrupted', 'abandoned'));
    END IF;
END
$$;
-- Tables of earlier releases gain the catalog version and the holding process (0.1), parallel runs, pausing and
-- the reason a run waits (0.2): checked by the newest column, each added only where missing.
DO $$
DECLARE
    control regclass := to_regclass('stage_migration_control');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = control AND attname = 'waiting' AND NOT attisdropped)
    THEN
        ALTER TABLE stage_migration_control ADD COLUMN IF NOT EXISTS catalog_version text,
            ADD COLUMN IF NOT EXISTS holder text,
            ADD COLUMN IF NOT EXISTS parallel integer NOT NULL DEFAULT 1,
            ADD COLUMN IF NOT EXISTS pause_requested boolean NOT NULL DEFAULT false,
            ADD COLUMN IF NOT EXISTS waiting text;
    END IF;
END
$$;
-- A parallel run (--parallel N) splits the key space into N ranges, (after_id, upto_id], each walked by its own
-- connection. A batch advances its range's row in the statement that writes its data and log rows, so ranges
-- never wait on each other's row locks; the control row's counts are the ranges' sums (refreshed as it runs).
CREATE TABLE IF NOT EXISTS stage_migration_ranges (
    run_id       bigint  NOT NULL,
    range_no     integer NOT NULL,
    after_id     text,                           -- exclusive lower bound, NULL: from the first key
    upto_id      text,                           -- inclusive upper bound, NULL: to the last key
    last_id      text,                           -- keyset position in the range, NULL before its first batch
    batch_no     integer NOT NULL DEFAULT 0,
    rows_scanned bigint  NOT NULL DEFAULT 0,
    rows_changed bigint  NOT NULL DEFAULT 0,
    rows_unknown bigint  NOT NULL DEFAULT 0,
    rows_null    bigint  NOT NULL DEFAULT 0,
    rows_skipped bigint  NOT NULL DEFAULT 0,
    done         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, range_no)
);
-- --resume finds the latest unfinished run of a table/column quickly.
CREATE INDEX IF NOT EXISTS stage_migration_control_target
    ON stage_migration_control (table_name, column_name, dry_run, run_id DESC);

-- No surrogate id and no foreign key: each costs a per-row step (a sequence call and a second index
-- entry; an RI trigger locking the control row) on every logged row, and together they made logging
-- ~40 % of a batch. The primary key (run_id, row_id) is the guarantee that matters - a repeated row
-- violates it - and serves revert (pages through a run's log by row_id) and the summary. Log rows are
-- written only in the statement that also updates their run's control row; the tool rolls the batch
-- back if that row is gone, which is what the foreign key used to prove.
CREATE TABLE IF NOT EXISTS stage_normalization_log (
    run_id     bigint      NOT NULL,
    row_id     text        COLLATE "C" NOT NULL,  -- the key as text; bytewise order keeps the index cheap
    old_value  text,
    new_value  text,
    batch_no   integer     NOT NULL,
    dry_run    boolean     NOT NULL,
    logged_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, row_id)
);
-- A log table created by stagegate 0.1 had both: drop them (catalog-only changes, instant), and only
-- then, so a routine run takes no ACCESS EXCLUSIVE lock on the log.
DO $$
DECLARE
    log regclass := to_regclass('stage_normalization_log');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = log AND contype = 'f') THEN
        ALTER TABLE stage_normalization_log DROP CONSTRAINT IF EXISTS stage_normalization_log_run_id_fkey;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = log AND attname = 'id' AND NOT attisdropped) THEN
        ALTER TABLE stage_normalization_log DROP COLUMN id;
        ALTER TABLE stage_normalization_log ADD PRIMARY KEY USING INDEX stage_normalization_log_run_row;
    END IF;
END
$$;
