-- The release policy (issue 18): the embargo is per (origin, dataset type), counted from the end
-- of the dataset's visit, and some datasets are never released (types the policy does not list,
-- embargoed ones without a visit end). Rows recorded before this migration keep the release time
-- they had (80 h after the observation) and have no policy columns.
ALTER TABLE dataset ALTER COLUMN release_at DROP NOT NULL;
-- The Prompt Publication Service's origin codes: 1 prompt_processing, 2 daytime_ap_catchup.
ALTER TABLE dataset ADD COLUMN origin smallint;
-- The policy's rule for the dataset's (origin, dataset type) when it was recorded; NULL when the
-- type is not listed.
ALTER TABLE dataset ADD COLUMN embargo_hours integer;
ALTER TABLE dataset ADD COLUMN publish_to_public boolean;
-- NULL with a rule: kept for ever.
ALTER TABLE dataset ADD COLUMN retention_days integer;
-- How release_at was decided: visit_end, exposure_end, at_once, not_listed or no_end.
ALTER TABLE dataset ADD COLUMN release_basis text;
