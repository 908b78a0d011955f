-- When each object last finished a full listing (a backfill or a periodic
-- full re-sync). Incremental runs miss deletes at providers without
-- tombstones and records a provider re-dates into the past, so a full
-- listing with mark-and-sweep runs again once this is older than the
-- configured interval.
ALTER TABLE sync_states ADD COLUMN full_at BIGINT;
UPDATE sync_states SET full_at = last_synced_at WHERE phase = 'incremental';
