-- Each part's checksum in its upload's declared algorithm (base64; '' for none).
ALTER TABLE parts ADD COLUMN checksum TEXT NOT NULL DEFAULT '';
