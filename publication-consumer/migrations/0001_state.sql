-- The consumer's state, in its own schema (the connection's search_path names it; nothing here
-- is schema-qualified, so PUBLICATION_SCHEMA can move it). The registry is never written.

-- One row per batch-ingested event processed, keyed by its batch id: a replayed or duplicated
-- event finds its batch here and changes nothing.
CREATE TABLE batch (
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

-- As the Python PPS records them: insert-if-not-exists.
CREATE TABLE "group" (
    instrument text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (instrument, name)
);

CREATE TABLE visit (
    instrument text NOT NULL,
    id bigint NOT NULL,
    day_obs bigint,
    observation_end timestamptz,
    PRIMARY KEY (instrument, id)
);

CREATE TABLE exposure (
    instrument text NOT NULL,
    id bigint NOT NULL,
    day_obs bigint,
    "group" text,
    observation_end timestamptz,
    PRIMARY KEY (instrument, id)
);

-- Every dataset of every batch the registry knows, with when its embargo ends.
CREATE TABLE dataset (
    id uuid PRIMARY KEY,
    dataset_type text NOT NULL,
    run text NOT NULL,
    instrument text,
    detector bigint,
    visit bigint,
    exposure bigint,
    "group" text,
    day_obs bigint,
    -- The required dimensions as the registry's tags table holds them.
    data_id jsonb NOT NULL,
    -- The registry's ingest_date (TAI there), as UTC.
    ingest_date timestamptz NOT NULL,
    observation_end timestamptz NOT NULL,
    -- Where observation_end came from: exposure, visit or ingest_date.
    observation_end_source text NOT NULL,
    release_at timestamptz NOT NULL,
    -- The Python PPS's embargo_status: PRESENT once recorded.
    embargo_status text NOT NULL DEFAULT 'PRESENT',
    batch_id uuid NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX dataset_release_at ON dataset (release_at, id);
CREATE INDEX dataset_visit ON dataset (visit, id);
CREATE INDEX dataset_type_release_at ON dataset (dataset_type, release_at, id);

-- Dataset ids a batch file listed that the registry does not know: recorded, never dropped.
CREATE TABLE unknown_dataset (
    dataset_id uuid NOT NULL,
    batch_id uuid NOT NULL,
    batch_file text NOT NULL,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (dataset_id, batch_id)
);

-- Events that could not be processed and were skipped, with the reason; keyed by their place in
-- the topic so that a replay adds nothing.
CREATE TABLE failed_event (
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
