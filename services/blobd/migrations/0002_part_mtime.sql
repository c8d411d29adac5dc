-- When each part was (last) uploaded, for ListParts' LastModified (Unix milliseconds; 0 for
-- parts recorded before this column existed).
ALTER TABLE parts ADD COLUMN last_modified_ms INTEGER NOT NULL DEFAULT 0;
