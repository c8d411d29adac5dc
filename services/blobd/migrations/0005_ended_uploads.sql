-- Uploads completed or aborted here, kept for the tombstone grace: anti-entropy ends a
-- copy another daemon still holds instead of pushing it back.
CREATE TABLE ended_uploads (
    upload_id TEXT    NOT NULL PRIMARY KEY,
    bucket    TEXT    NOT NULL,
    key       BLOB    NOT NULL,
    ended_ms  INTEGER NOT NULL
);
CREATE INDEX ended_uploads_by_time ON ended_uploads (ended_ms);
