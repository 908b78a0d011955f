-- The filter index. Each live record lists here the values of the keys
-- people filter by (email, phone, name, website, owner, association ids,
-- created and modified time), normalised (lower-cased, cut to 128
-- characters; times as fixed-width digits) so one entry serves exact and
-- case-insensitive conditions and a prefix or a time range is a range.
-- `scope` is a 64-bit hash of (connection, object, key): small entries,
-- so fewer pages for a sync to dirty. A collision only adds candidates,
-- and the evaluator checks every candidate, so the index only has to hold
-- a superset of the matches. Written in the transaction that writes the
-- record.
CREATE TABLE record_keys (
    scope BIGINT NOT NULL,
    value TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (scope, value, seq)
) WITHOUT ROWID;
CREATE INDEX record_keys_seq ON record_keys (seq);
-- Records stored before the index existed have no entries: the index
-- serves an object only once its version is current (new objects start
-- current; a worker backfills the rest).
ALTER TABLE sync_states ADD COLUMN keys_version INTEGER NOT NULL DEFAULT 1;
UPDATE sync_states SET keys_version = 0 WHERE EXISTS (
    SELECT 1 FROM records r WHERE r.connection_id = sync_states.connection_id
    AND r.object = sync_states.object);
