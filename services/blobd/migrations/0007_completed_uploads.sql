-- What a completion made of the upload, so a retried CompleteMultipartUpload (its answer was
-- lost, or it failed after completing here) gets the same answer as S3 gives: the ETag and
-- the object's checksums (JSON, algorithm name to value). NULL for an aborted upload.
ALTER TABLE ended_uploads ADD COLUMN etag TEXT;
ALTER TABLE ended_uploads ADD COLUMN checksums TEXT;
