-- Object index: the newest version of each key (last writer wins), tombstones included.
-- Keys are BLOBs so that ORDER BY is bytewise (S3 lists in UTF-8 binary order).
CREATE TABLE objects (
    bucket    TEXT    NOT NULL,
    key       BLOB    NOT NULL,
    hlc       INTEGER NOT NULL, -- u64 bit-cast to i64; compared in Rust
    writer    TEXT    NOT NULL,
    tombstone INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    blobs     TEXT    NOT NULL, -- blob ids in body order, comma-separated ('' for none)
    meta      BLOB    NOT NULL, -- protobuf-encoded blob.v1.ObjectMeta
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;

-- Multipart uploads in progress.
CREATE TABLE uploads (
    upload_id TEXT NOT NULL PRIMARY KEY,
    bucket    TEXT NOT NULL,
    key       BLOB NOT NULL,
    meta      BLOB NOT NULL
);
CREATE INDEX uploads_by_bucket ON uploads (bucket);

CREATE TABLE parts (
    upload_id   TEXT    NOT NULL,
    part_number INTEGER NOT NULL,
    blob_id     TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    etag        TEXT    NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
