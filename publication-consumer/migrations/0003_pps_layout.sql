-- The Prompt Publication Service's state layout (its alembic revision b59eced2ad76, the one the
-- deployed 1.0.x runs; issue 18): `visit`, `exposure`, `"group"`, `dataset` and
-- `unknown_dataset` with PPS's columns, per-repository statuses and indexes, and
-- `alembic_version` at that revision, so that PPS can take over this schema and this consumer
-- can take over one PPS has been writing (`Store::open` adopts such a schema). What only this
-- consumer records moves to tables PPS does not know: `dataset_release` (a dataset's RUN, data
-- ID, times and release under the policy) and `unknown_dataset_batch` (which batch listed an
-- unknown id). `batch` and `failed_event` stay as they are.
--
-- Status values, stored as smallint as PPS stores its enums:
--   datasets (DatasetLocationStatus): 0 NEVER_PRESENT, 1 PRESENT, 2 MISSING, 3 DELETED;
--   visits, exposures, groups (DimensionRecordStatus): 0 NEVER_PRESENT, 1 INITIAL, 2 REVISED.
-- Repositories: embargo, prompt_prep (/sdf/.../prompt_prep), repo_main (/repo/main), google_int
-- and google_prod (the Google `prompt` repositories).

-- Migrations 1 and 2 laid out tables of the same names: keep their rows aside, then drop them.
-- (A schema PPS laid out has none of them with these columns, and is left as it is.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'visit'
                 AND column_name = 'observation_end') THEN
        CREATE TEMP TABLE old_visit ON COMMIT DROP AS SELECT * FROM visit;
        CREATE TEMP TABLE old_exposure ON COMMIT DROP AS SELECT * FROM exposure;
        CREATE TEMP TABLE old_group ON COMMIT DROP AS SELECT * FROM "group";
        CREATE TEMP TABLE old_dataset ON COMMIT DROP AS SELECT * FROM dataset;
        CREATE TEMP TABLE old_unknown ON COMMIT DROP AS SELECT * FROM unknown_dataset;
        DROP TABLE dataset, unknown_dataset, visit, exposure, "group";
    END IF;
END $$;

-- PPS's tables, as its revision b59eced2ad76 creates them.
CREATE TABLE IF NOT EXISTS visit (
    id bigint NOT NULL,
    instrument varchar NOT NULL,
    day_obs bigint NOT NULL,
    time timestamptz,
    embargo_status smallint,
    prompt_prep_status smallint,
    repo_main_status smallint,
    google_int_status smallint,
    google_prod_status smallint,
    PRIMARY KEY (id, instrument)
);
CREATE INDEX IF NOT EXISTS ix_visit_embargo_status ON visit (embargo_status);
CREATE INDEX IF NOT EXISTS ix_visit_prompt_prep_status ON visit (prompt_prep_status);
CREATE INDEX IF NOT EXISTS ix_visit_repo_main_status ON visit (repo_main_status);
CREATE INDEX IF NOT EXISTS ix_visit_google_int_status ON visit (google_int_status);
CREATE INDEX IF NOT EXISTS ix_visit_google_prod_status ON visit (google_prod_status);

CREATE TABLE IF NOT EXISTS exposure (
    id bigint NOT NULL,
    instrument varchar NOT NULL,
    day_obs bigint NOT NULL,
    time timestamptz,
    can_see_sky boolean NOT NULL,
    embargo_status smallint,
    prompt_prep_status smallint,
    repo_main_status smallint,
    google_int_status smallint,
    google_prod_status smallint,
    PRIMARY KEY (id, instrument)
);
CREATE INDEX IF NOT EXISTS ix_exposure_embargo_status ON exposure (embargo_status);
CREATE INDEX IF NOT EXISTS ix_exposure_prompt_prep_status ON exposure (prompt_prep_status);
CREATE INDEX IF NOT EXISTS ix_exposure_repo_main_status ON exposure (repo_main_status);
CREATE INDEX IF NOT EXISTS ix_exposure_google_int_status ON exposure (google_int_status);
CREATE INDEX IF NOT EXISTS ix_exposure_google_prod_status ON exposure (google_prod_status);

CREATE TABLE IF NOT EXISTS "group" (
    id varchar NOT NULL,
    instrument varchar NOT NULL,
    embargo_status smallint,
    prompt_prep_status smallint,
    repo_main_status smallint,
    google_int_status smallint,
    google_prod_status smallint,
    PRIMARY KEY (id, instrument)
);
CREATE INDEX IF NOT EXISTS ix_group_embargo_status ON "group" (embargo_status);
CREATE INDEX IF NOT EXISTS ix_group_prompt_prep_status ON "group" (prompt_prep_status);
CREATE INDEX IF NOT EXISTS ix_group_repo_main_status ON "group" (repo_main_status);
CREATE INDEX IF NOT EXISTS ix_group_google_int_status ON "group" (google_int_status);
CREATE INDEX IF NOT EXISTS ix_group_google_prod_status ON "group" (google_prod_status);

CREATE TABLE IF NOT EXISTS dataset (
    id uuid NOT NULL PRIMARY KEY,
    origin smallint NOT NULL,
    dataset_type varchar NOT NULL,
    instrument varchar,
    visit bigint,
    exposure bigint,
    "group" varchar,
    butler_data_id json,
    embargo_status smallint NOT NULL,
    prompt_prep_status smallint NOT NULL,
    repo_main_status smallint NOT NULL,
    google_int_status smallint NOT NULL,
    google_prod_status smallint NOT NULL,
    unembargo_time timestamptz,
    FOREIGN KEY (visit, instrument) REFERENCES visit (id, instrument),
    FOREIGN KEY (exposure, instrument) REFERENCES exposure (id, instrument),
    FOREIGN KEY ("group", instrument) REFERENCES "group" (id, instrument)
);
CREATE INDEX IF NOT EXISTS dataset_embargo_status_lookup
    ON dataset (embargo_status, prompt_prep_status, origin, dataset_type);
CREATE INDEX IF NOT EXISTS dataset_repo_main_status_lookup
    ON dataset (repo_main_status, prompt_prep_status, origin, dataset_type);
CREATE INDEX IF NOT EXISTS dataset_google_prod_status_lookup
    ON dataset (google_prod_status, prompt_prep_status, origin, dataset_type);
CREATE INDEX IF NOT EXISTS dataset_google_int_status_lookup
    ON dataset (google_int_status, prompt_prep_status, origin, dataset_type);

CREATE TABLE IF NOT EXISTS unknown_dataset (
    id uuid NOT NULL PRIMARY KEY,
    origin smallint NOT NULL,
    error varchar NOT NULL
);

CREATE TABLE IF NOT EXISTS alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version (version_num)
    SELECT 'b59eced2ad76' WHERE NOT EXISTS (SELECT 1 FROM alembic_version);

-- This consumer's events and skipped events (migration 1's tables), for a schema PPS laid out.
CREATE TABLE IF NOT EXISTS batch (
    batch_id uuid PRIMARY KEY,
    origin text NOT NULL,
    batch_file text NOT NULL,
    datasets integer NOT NULL,
    unknown_datasets integer NOT NULL,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    processed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS failed_event (
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    batch_id uuid,
    batch_file text,
    payload text,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);

-- This consumer's own record of each dataset it recorded: the rest of what the registry said,
-- and its release under the policy (migration 2's columns).
CREATE TABLE dataset_release (
    id uuid PRIMARY KEY REFERENCES dataset (id),
    run text NOT NULL,
    detector bigint,
    day_obs bigint,
    data_id jsonb NOT NULL,
    ingest_date timestamptz NOT NULL,
    observation_end timestamptz NOT NULL,
    observation_end_source text NOT NULL,
    release_at timestamptz,
    embargo_hours integer,
    publish_to_public boolean,
    retention_days integer,
    release_basis text,
    batch_id uuid NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX dataset_release_release_at ON dataset_release (release_at, id);

-- Which batch listed an unknown id, and where its event was.
CREATE TABLE unknown_dataset_batch (
    dataset_id uuid NOT NULL,
    batch_id uuid NOT NULL,
    batch_file text NOT NULL,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (dataset_id, batch_id)
);

-- The rows of migrations 1 and 2, in the new layout: nothing recorded is lost.
DO $$
BEGIN
    IF to_regclass('pg_temp.old_visit') IS NOT NULL THEN
        INSERT INTO visit (id, instrument, day_obs, time, embargo_status, prompt_prep_status,
                           repo_main_status, google_int_status, google_prod_status)
            SELECT id, instrument, coalesce(day_obs, 0), observation_end, 1, 0, 0, 0, 0
            FROM old_visit;
        INSERT INTO exposure (id, instrument, day_obs, time, can_see_sky, embargo_status,
                              prompt_prep_status, repo_main_status, google_int_status,
                              google_prod_status)
            SELECT id, instrument, coalesce(day_obs, 0), observation_end, true, 1, 0, 0, 0, 0
            FROM old_exposure;
        INSERT INTO "group" (id, instrument, embargo_status, prompt_prep_status,
                             repo_main_status, google_int_status, google_prod_status)
            SELECT name, instrument, 1, 0, 0, 0, 0 FROM old_group;
        INSERT INTO dataset (id, origin, dataset_type, instrument, visit, exposure, "group",
                             butler_data_id, embargo_status, prompt_prep_status,
                             repo_main_status, google_int_status, google_prod_status,
                             unembargo_time)
            SELECT id, coalesce(origin, 1), dataset_type, instrument, visit, exposure, "group",
                   (data_id - 'instrument' - 'visit')::json, 1, 0, 0, 0, 0, NULL
            FROM old_dataset;
        INSERT INTO dataset_release (id, run, detector, day_obs, data_id, ingest_date,
                                     observation_end, observation_end_source, release_at,
                                     embargo_hours, publish_to_public, retention_days,
                                     release_basis, batch_id, recorded_at)
            SELECT id, run, detector, day_obs, data_id, ingest_date, observation_end,
                   observation_end_source, release_at, embargo_hours, publish_to_public,
                   retention_days, release_basis, batch_id, recorded_at
            FROM old_dataset;
        INSERT INTO unknown_dataset (id, origin, error)
            SELECT DISTINCT ON (dataset_id) dataset_id, 1,
                   format('Dataset not found in Butler, from batch ''%s''', batch_id)
            FROM old_unknown ORDER BY dataset_id, recorded_at;
        INSERT INTO unknown_dataset_batch
            SELECT dataset_id, batch_id, batch_file, topic, kafka_partition, kafka_offset,
                   recorded_at
            FROM old_unknown;
    END IF;
END $$;
