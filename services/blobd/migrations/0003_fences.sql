-- Buckets being deleted or deleted: new objects and uploads of incarnations up to
-- bucket_rev (the bucket's catalog create revision) are refused while until_ms is in the
-- future (i64::MAX once the delete is done).
CREATE TABLE fences (
    bucket     TEXT    NOT NULL PRIMARY KEY,
    bucket_rev INTEGER NOT NULL,
    until_ms   INTEGER NOT NULL
);
