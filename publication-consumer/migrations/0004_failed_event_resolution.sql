-- A failed event an operator dealt with (`publication-consumer register-batch` recorded its
-- batch): kept for the record, no longer listed as needing a hand.
ALTER TABLE failed_event ADD COLUMN resolved_at timestamptz;
ALTER TABLE failed_event ADD COLUMN resolution text;
