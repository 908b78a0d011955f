-- Reverse associations. Most providers record a link on one side only (a
-- Salesforce Note names its ParentId; the Contact knows nothing of it), but
-- the unified models show it on both (a contact's noteIds). Each record
-- written lists the links it implies on other records here; reads join
-- them in, skipping links whose source is deleted.
CREATE TABLE record_links (
    connection_id TEXT NOT NULL,
    object TEXT NOT NULL,
    native_id TEXT NOT NULL,
    key TEXT NOT NULL,
    from_object TEXT NOT NULL,
    from_native_id TEXT NOT NULL,
    PRIMARY KEY (connection_id, object, native_id, key, from_native_id)
);
CREATE INDEX record_links_from ON record_links (connection_id, from_object, from_native_id);
