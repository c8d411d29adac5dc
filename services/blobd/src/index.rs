//! The object index in SQLite (`<data_dir>/index.db`, WAL, `synchronous=FULL`).
//!
//! Writes go through a one-connection pool, so write transactions are serialized in
//! the process and never hit SQLite's lock-upgrade deadlock; reads use their own pool.

use std::path::Path;
use std::time::Duration;

use aether_proto::blob::v1::{CompletedPart, CompletedUpload, FenceOp, ObjectMeta, SyncUpload, UploadPart};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tracing::Instrument;

use crate::convert::{Ver, decode_meta, encode_meta, join_blobs, split_blobs};
use crate::error::{BlobdError, Result};

#[derive(Debug, Clone)]
pub struct Index {
    write: SqlitePool,
    read: SqlitePool,
}

/// One row of `objects`.
#[derive(Debug, Clone)]
pub struct ObjRow {
    pub ver: Ver,
    pub tombstone: bool,
    pub size: u64,
    pub blobs: Vec<String>,
    pub meta: ObjectMeta,
}

impl ObjRow {
    /// The body bytes in each of `blobs`: a completed upload keeps one blob per part; a
    /// single blob holds the whole body (a plain PUT, or a verbatim replica copy of a
    /// multipart object, whose part sizes stay in its meta).
    pub fn blob_sizes(&self) -> Vec<u64> {
        if self.meta.part_sizes.is_empty() || self.blobs.len() == 1 {
            vec![self.size]
        } else {
            self.meta.part_sizes.clone()
        }
    }
}

/// One key as anti-entropy compares it (no blob ids, no body).
#[derive(Debug, Clone)]
pub struct SyncRow {
    pub key: String,
    pub ver: Ver,
    pub tombstone: bool,
    pub tags_hlc: u64,
    pub last_modified_ms: i64,
}

/// Rows read per query by [`Rows`].
const ROWS_BATCH: i64 = 1000;

/// A walk over a bucket's rows in key order (see [`Index::rows`]).
pub struct Rows<'a> {
    index: &'a Index,
    bucket: String,
    after: Option<String>,
    buf: std::collections::VecDeque<SyncRow>,
    done: bool,
}

impl Rows<'_> {
    pub async fn next(&mut self) -> Result<Option<SyncRow>> {
        if self.buf.is_empty() && !self.done {
            let rows = self.index.sync_rows(&self.bucket, self.after.as_deref(), ROWS_BATCH).await?;
            self.done = rows.len() < ROWS_BATCH as usize;
            self.after = rows.last().map(|r| r.key.clone());
            self.buf.extend(rows);
        }
        Ok(self.buf.pop_front())
    }
}

/// What a write wants to store.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub ver: Ver,
    /// Replace a stored copy of the same version too (healing a copy whose blobs failed
    /// their checksums); otherwise an equal version is not applied.
    pub heal: bool,
    pub tombstone: bool,
    pub size: u64,
    pub blobs: Vec<String>,
    pub meta: ObjectMeta,
}

/// The outcome of an LWW write.
#[derive(Debug)]
pub struct Applied {
    pub applied: bool,
    pub current: Ver,
    /// Blob files no longer referenced once the transaction committed.
    pub unlink: Vec<String>,
    /// Change in the number of live (non-tombstone) objects.
    pub live_delta: i64,
    /// Change in the bytes of live objects.
    pub bytes_delta: i64,
}

/// An upload as the index keeps it.
#[derive(Debug, Clone)]
pub struct UploadRow {
    pub meta: ObjectMeta,
}

/// What CompleteUpload asks for.
#[derive(Debug, Clone)]
pub struct Completion {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub parts: Vec<CompletedPart>,
    pub ver: Ver,
    pub last_modified_ms: i64,
    pub etag: String,
    /// The object's checksums, computed by the gateway from the parts'.
    pub checksums: std::collections::HashMap<String, String>,
}

const SELECT_OBJECT: &str =
    "SELECT hlc, writer, tombstone, size, blobs, meta FROM objects WHERE bucket = ?1 AND key = ?2";
const UPSERT_OBJECT: &str = "INSERT INTO objects (bucket, key, hlc, writer, tombstone, size, blobs, meta) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (bucket, key) DO UPDATE SET hlc = excluded.hlc, writer = excluded.writer, \
     tombstone = excluded.tombstone, size = excluded.size, blobs = excluded.blobs, meta = excluded.meta";

fn row_to_obj(row: &sqlx::sqlite::SqliteRow) -> Result<ObjRow> {
    let hlc: i64 = row.try_get("hlc")?;
    let writer: String = row.try_get("writer")?;
    let tombstone: i64 = row.try_get("tombstone")?;
    let size: i64 = row.try_get("size")?;
    let blobs: String = row.try_get("blobs")?;
    let meta: Vec<u8> = row.try_get("meta")?;
    Ok(ObjRow {
        ver: Ver::from_db(hlc, writer),
        tombstone: tombstone != 0,
        size: size as u64,
        blobs: split_blobs(&blobs),
        meta: decode_meta(&meta)?,
    })
}

fn strip_etag(e: &str) -> &str {
    e.trim().trim_matches('"')
}

impl Index {
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(data_dir.join("index.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        let write = SqlitePoolOptions::new().max_connections(1).min_connections(1).connect_with(opts.clone()).await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        Ok(Self { write, read })
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// Live (non-tombstone) objects and their bytes: one scan, at start-up.
    pub async fn count_live(&self) -> Result<(i64, i64)> {
        let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS b FROM objects WHERE tombstone = 0")
            .fetch_one(&self.read)
            .await?;
        Ok((row.try_get("n")?, row.try_get("b")?))
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjRow>> {
        let row = sqlx::query(SELECT_OBJECT).bind(bucket).bind(key.as_bytes()).fetch_optional(&self.read).await?;
        row.as_ref().map(row_to_obj).transpose()
    }

    /// Store `new` if its version is newer than the stored one (one transaction).
    pub async fn apply_object(&self, bucket: &str, key: &str, new: NewObject) -> Result<Applied> {
        let span = tracing::info_span!("index.commit", op = "apply_object");
        async {
            let mut tx = self.write.begin().await?;
            let applied = apply_in_tx(&mut tx, bucket, key, new).await?;
            tx.commit().await?;
            Ok(applied)
        }
        .instrument(span)
        .await
    }

    /// Replace the tags of the stored version `ver` of a key (one transaction). `Ok(true)`:
    /// the key holds a newer version, nothing changed; `NotFound`: this index holds neither
    /// that version nor a newer one (or it is a tombstone). A change older (`tags_hlc`)
    /// than the stored tags' is a no-op, so retries and races settle on the newest.
    pub async fn set_tags(
        &self,
        bucket: &str,
        key: &str,
        ver: &Ver,
        tags: std::collections::HashMap<String, String>,
        tags_hlc: u64,
    ) -> Result<bool> {
        let span = tracing::info_span!("index.commit", op = "set_tags");
        async {
            let mut tx = self.write.begin().await?;
            let row = sqlx::query(SELECT_OBJECT).bind(bucket).bind(key.as_bytes()).fetch_optional(&mut *tx).await?;
            let Some(row) = row.as_ref().map(row_to_obj).transpose()? else {
                return Err(BlobdError::NotFound);
            };
            if row.ver > *ver {
                return Ok(true);
            }
            if row.ver < *ver || row.tombstone {
                return Err(BlobdError::NotFound);
            }
            if row.meta.tags_hlc < tags_hlc {
                let mut meta = row.meta;
                meta.tags = tags;
                meta.tags_hlc = tags_hlc;
                sqlx::query("UPDATE objects SET meta = ?3 WHERE bucket = ?1 AND key = ?2")
                    .bind(bucket)
                    .bind(key.as_bytes())
                    .bind(encode_meta(&meta))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(false)
        }
        .instrument(span)
        .await
    }

    /// Up to `limit` rows of `bucket` with `lower <= key < upper`, in key order:
    /// (key, tombstone, meta).
    pub async fn scan(
        &self,
        bucket: &str,
        lower: &[u8],
        upper: &[u8],
        limit: i64,
    ) -> Result<Vec<(Vec<u8>, ObjectMeta)>> {
        let rows = sqlx::query(
            "SELECT key, meta FROM objects WHERE bucket = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4",
        )
        .bind(bucket)
        .bind(lower)
        .bind(upper)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let key: Vec<u8> = r.try_get("key")?;
                let meta: Vec<u8> = r.try_get("meta")?;
                Ok((key, decode_meta(&meta)?))
            })
            .collect()
    }

    /// Every blob id the index references (objects and multipart parts), read in one
    /// transaction so a part that a CompleteUpload moves to its object is seen once.
    pub async fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>> {
        let mut tx = self.read.begin().await?;
        let mut out = std::collections::HashSet::new();
        for r in sqlx::query("SELECT blob_id FROM parts").fetch_all(&mut *tx).await? {
            out.insert(r.try_get::<String, _>("blob_id")?);
        }
        for r in sqlx::query("SELECT blobs FROM objects WHERE blobs != ''").fetch_all(&mut *tx).await? {
            out.extend(split_blobs(&r.try_get::<String, _>("blobs")?));
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Every bucket this index holds a key or an upload of (anti-entropy walks them).
    pub async fn buckets(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT bucket FROM objects UNION SELECT bucket FROM uploads ORDER BY bucket")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("bucket")?)).collect()
    }

    /// Every row of `bucket` after `after` (from the start when `None`), in key order, read
    /// `ROWS_BATCH` at a time (anti-entropy, handoff, the scrub).
    pub fn rows(&self, bucket: &str, after: Option<String>) -> Rows<'_> {
        Rows { index: self, bucket: bucket.to_string(), after, buf: Default::default(), done: false }
    }

    /// Up to `limit` keys of `bucket` after `after` (all from the start when `None`), in
    /// key order, as anti-entropy compares them.
    async fn sync_rows(&self, bucket: &str, after: Option<&str>, limit: i64) -> Result<Vec<SyncRow>> {
        let rows = match after {
            Some(a) => {
                sqlx::query(
                    "SELECT key, hlc, writer, tombstone, meta FROM objects \
                 WHERE bucket = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
                )
                .bind(bucket)
                .bind(a.as_bytes())
                .bind(limit)
                .fetch_all(&self.read)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT key, hlc, writer, tombstone, meta FROM objects WHERE bucket = ?1 ORDER BY key LIMIT ?2",
                )
                .bind(bucket)
                .bind(limit)
                .fetch_all(&self.read)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                let key: Vec<u8> = r.try_get("key")?;
                let key = String::from_utf8(key).map_err(|_| BlobdError::Corrupt("key is not UTF-8".into()))?;
                let meta = decode_meta(&r.try_get::<Vec<u8>, _>("meta")?)?;
                Ok(SyncRow {
                    key,
                    ver: Ver::from_db(r.try_get("hlc")?, r.try_get("writer")?),
                    tombstone: r.try_get::<i64, _>("tombstone")? != 0,
                    tags_hlc: meta.tags_hlc,
                    last_modified_ms: meta.last_modified_ms,
                })
            })
            .collect()
    }

    /// Drop this index's copy of `bucket/key` if it is still at version `ver` (a copy handed
    /// off to the key's owners, or a tombstone past its grace). Not a delete: nothing
    /// newer is written, the row and its blobs go. `None`: the key changed meanwhile.
    pub async fn purge(&self, bucket: &str, key: &str, ver: &Ver) -> Result<Option<Applied>> {
        let span = tracing::info_span!("index.commit", op = "purge");
        async {
            let mut tx = self.write.begin().await?;
            let row = sqlx::query(SELECT_OBJECT).bind(bucket).bind(key.as_bytes()).fetch_optional(&mut *tx).await?;
            let Some(row) = row.as_ref().map(row_to_obj).transpose()? else { return Ok(None) };
            if row.ver != *ver {
                return Ok(None);
            }
            sqlx::query("DELETE FROM objects WHERE bucket = ?1 AND key = ?2")
                .bind(bucket)
                .bind(key.as_bytes())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let live = !row.tombstone;
            Ok(Some(Applied {
                applied: true,
                current: row.ver,
                unlink: row.blobs,
                live_delta: -i64::from(live),
                bytes_delta: if live { -(row.size as i64) } else { 0 },
            }))
        }
        .instrument(span)
        .await
    }

    /// Whether any live (non-tombstone) key of `bucket` lies in `[lower, upper)`.
    pub async fn has_live(&self, bucket: &str, lower: &[u8], upper: &[u8]) -> Result<bool> {
        let row =
            sqlx::query("SELECT 1 FROM objects WHERE bucket = ?1 AND key >= ?2 AND key < ?3 AND tombstone = 0 LIMIT 1")
                .bind(bucket)
                .bind(lower)
                .bind(upper)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.is_some())
    }

    /// `stats` after applying a fence op for incarnation `rev`, in one write transaction:
    /// every write committed before it is counted, every later one sees the fence. Sealing
    /// also ends the multipart uploads of that incarnation or older (S3 deletes a bucket
    /// with uploads in progress); the blobs of their parts are returned for unlinking.
    pub async fn fenced_stats(&self, bucket: &str, rev: i64, op: FenceOp) -> Result<((u64, u64), Vec<String>)> {
        const TEMPORARY_MS: i64 = 10 * 60 * 1000;
        let span = tracing::info_span!("index.commit", op = "fence");
        async {
            let mut tx = self.write.begin().await?;
            let upsert = "INSERT INTO fences (bucket, bucket_rev, until_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (bucket) DO UPDATE SET bucket_rev = max(bucket_rev, excluded.bucket_rev), \
                 until_ms = max(until_ms, excluded.until_ms)";
            match op {
                FenceOp::FenceNone => {}
                FenceOp::FenceTemporary | FenceOp::FenceSeal => {
                    let until = if op == FenceOp::FenceSeal { i64::MAX } else { now_ms() + TEMPORARY_MS };
                    sqlx::query(upsert).bind(bucket).bind(rev).bind(until).execute(&mut *tx).await?;
                }
                FenceOp::FenceLift => {
                    sqlx::query("DELETE FROM fences WHERE bucket = ?1 AND bucket_rev = ?2")
                        .bind(bucket)
                        .bind(rev)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let mut unlink = Vec::new();
            if op == FenceOp::FenceSeal {
                let uploads = sqlx::query("SELECT upload_id, meta FROM uploads WHERE bucket = ?1")
                    .bind(bucket)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in uploads {
                    let (id, meta): (String, Vec<u8>) = (row.try_get("upload_id")?, row.try_get("meta")?);
                    if decode_meta(&meta)?.bucket_rev <= rev {
                        unlink.extend(part_blobs(&mut *tx, &id).await?.into_iter().map(|p| p.blob));
                        delete_upload(&mut tx, &id).await?;
                    }
                }
            }
            let counts = bucket_counts(&mut *tx, bucket).await?;
            tx.commit().await?;
            Ok((counts, unlink))
        }
        .instrument(span)
        .await
    }

    pub async fn stats(&self, bucket: &str) -> Result<(u64, u64)> {
        bucket_counts(&self.read, bucket).await
    }

    // ---- multipart ----

    /// Record an upload (idempotent for the same id).
    pub async fn create_upload(&self, upload_id: &str, meta: &ObjectMeta) -> Result<()> {
        let span = tracing::info_span!("index.commit", op = "create_upload");
        async {
            let mut tx = self.write.begin().await?;
            check_fence(&mut tx, &meta.bucket, meta.bucket_rev).await?;
            // Completed or aborted here: a late copy from a peer must not bring it back.
            if sqlx::query("SELECT 1 FROM ended_uploads WHERE upload_id = ?1")
                .bind(upload_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some()
            {
                return Err(BlobdError::NoSuchUpload);
            }
            sqlx::query(
                "INSERT INTO uploads (upload_id, bucket, key, meta) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (upload_id) DO NOTHING",
            )
            .bind(upload_id)
            .bind(&meta.bucket)
            .bind(meta.key.as_bytes())
            .bind(encode_meta(meta))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    pub async fn get_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(UploadRow, Vec<UploadPart>)> {
        let up = load_upload(&self.read, bucket, key, upload_id).await?;
        Ok((up, parts_of(&self.read, upload_id).await?))
    }

    /// What completing `upload_id` (of `bucket/key`) here made of it, while its
    /// `ended_uploads` row is kept (the tombstone grace); `None` if it was not completed here
    /// (unknown, in progress, aborted, or ended by anti-entropy).
    pub async fn completed_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Option<CompletedUpload>> {
        let row = sqlx::query(
            "SELECT etag, checksums FROM ended_uploads \
             WHERE upload_id = ?1 AND bucket = ?2 AND key = ?3 AND etag IS NOT NULL",
        )
        .bind(upload_id)
        .bind(bucket)
        .bind(key.as_bytes())
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let checksums: Option<String> = r.try_get("checksums")?;
        let checksums = match checksums {
            Some(j) => {
                serde_json::from_str(&j).map_err(|e| BlobdError::Corrupt(format!("ended_uploads.checksums: {e}")))?
            }
            None => Default::default(),
        };
        Ok(Some(CompletedUpload { etag: r.try_get("etag")?, checksums }))
    }

    /// A bucket's uploads in progress with their parts, in upload id order after `after`,
    /// at most `limit`. The second value is the last upload id read (`None`: the end was
    /// reached).
    pub async fn sync_uploads(
        &self,
        bucket: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<SyncUpload>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT upload_id, key, 0 AS ended FROM uploads WHERE bucket = ?1 AND upload_id > ?2 \
             ORDER BY upload_id LIMIT ?3",
        )
        .bind(bucket)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let more = rows.len() as u64 == u64::from(limit);
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.sync_upload(r).await?);
        }
        let covered = if more { out.last().map(|u| u.upload_id.clone()) } else { None };
        Ok((out, covered))
    }

    /// The given uploads of a bucket as this index knows them (unknown ids left out).
    pub async fn uploads_by_id(&self, bucket: &str, ids: &[String]) -> Result<Vec<SyncUpload>> {
        let mut out = Vec::new();
        for id in ids {
            let row = sqlx::query(
                "SELECT upload_id, key, 1 AS ended FROM ended_uploads WHERE bucket = ?1 AND upload_id = ?2 \
                 UNION ALL SELECT upload_id, key, 0 AS ended FROM uploads WHERE bucket = ?1 AND upload_id = ?2 \
                 ORDER BY ended DESC LIMIT 1",
            )
            .bind(bucket)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
            if let Some(r) = row {
                out.push(self.sync_upload(&r).await?);
            }
        }
        Ok(out)
    }

    async fn sync_upload(&self, r: &sqlx::sqlite::SqliteRow) -> Result<SyncUpload> {
        let key: Vec<u8> = r.try_get("key")?;
        let upload_id: String = r.try_get("upload_id")?;
        let ended: i64 = r.try_get("ended")?;
        let parts = if ended == 0 { parts_of(&self.read, &upload_id).await? } else { Vec::new() };
        Ok(SyncUpload { key: String::from_utf8_lossy(&key).into_owned(), upload_id, ended: ended != 0, parts })
    }

    /// One stored part: its blob id and size (the rest is in the upload's `parts`).
    pub async fn part_blob(&self, upload_id: &str, part_number: u32) -> Result<Option<(String, u64)>> {
        let row = sqlx::query("SELECT blob_id, size FROM parts WHERE upload_id = ?1 AND part_number = ?2")
            .bind(upload_id)
            .bind(i64::from(part_number))
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get("blob_id")?, r.try_get::<i64, _>("size")? as u64))).transpose()
    }

    /// Remove an upload this daemon no longer owns once its owners hold it (handoff): no
    /// `ended_uploads` row, the upload goes on elsewhere. Only if its parts are still
    /// `expect` (part number, ETag: a part committed since has not been handed off): the
    /// parts' blobs, or `None` when they changed.
    pub async fn drop_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        expect: &[(u32, &str)],
    ) -> Result<Option<Vec<String>>> {
        let span = tracing::info_span!("index.commit", op = "drop_upload");
        async {
            let mut tx = self.write.begin().await?;
            load_upload(&mut *tx, bucket, key, upload_id).await?;
            let blobs = part_blobs(&mut *tx, upload_id).await?;
            let now: Vec<(u32, &str)> = blobs.iter().map(|p| (p.part.part_number, p.part.etag.as_str())).collect();
            if now != expect {
                return Ok(None);
            }
            delete_upload(&mut tx, upload_id).await?;
            tx.commit().await?;
            Ok(Some(blobs.into_iter().map(|p| p.blob).collect()))
        }
        .instrument(span)
        .await
    }

    /// A value the sync loop keeps across restarts (`sync_state`).
    pub async fn state(&self, name: &str) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT value FROM sync_state WHERE name = ?1").bind(name).fetch_optional(&self.read).await?;
        row.map(|r| Ok(r.try_get::<i64, _>("value")?)).transpose()
    }

    pub async fn set_state(&self, name: &str, value: i64) -> Result<()> {
        sqlx::query("INSERT INTO sync_state (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Forget uploads ended before `cutoff_ms` (past the tombstone grace); how many.
    pub async fn collect_ended_uploads(&self, cutoff_ms: i64) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM ended_uploads WHERE ended_ms < ?1").bind(cutoff_ms).execute(&self.write).await?;
        Ok(done.rows_affected())
    }

    /// Uploads in progress (see `ListUploadsRequest`), in (key, upload_id) order.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        key_marker: &str,
        upload_id_marker: &str,
        limit: u32,
    ) -> Result<Vec<aether_proto::blob::v1::UploadInfo>> {
        let rows = sqlx::query(
            "SELECT upload_id, key, meta FROM uploads WHERE bucket = ?1 \
             AND substr(key, 1, ?3) = ?2 \
             AND (key > ?4 OR (key = ?4 AND ?5 <> '' AND upload_id > ?5)) \
             ORDER BY key, upload_id LIMIT ?6",
        )
        .bind(bucket)
        .bind(prefix.as_bytes())
        .bind(prefix.len() as i64)
        .bind(key_marker.as_bytes())
        .bind(upload_id_marker)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let key: Vec<u8> = r.try_get("key")?;
                let meta: Vec<u8> = r.try_get("meta")?;
                Ok(aether_proto::blob::v1::UploadInfo {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    upload_id: r.try_get("upload_id")?,
                    initiated_ms: decode_meta(&meta)?.last_modified_ms,
                })
            })
            .collect()
    }

    /// Uploads idle since before `cutoff_ms` (initiated then, and no part uploaded since),
    /// after `after` in upload id order, at most `limit`: (bucket, key, upload id).
    pub async fn stale_uploads(
        &self,
        cutoff_ms: i64,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<(String, String, String)>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT u.upload_id, u.bucket, u.key, u.meta,              (SELECT MAX(p.last_modified_ms) FROM parts p WHERE p.upload_id = u.upload_id) AS last_part_ms              FROM uploads u WHERE u.upload_id > ?1 ORDER BY u.upload_id LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let next = if rows.len() as u64 == u64::from(limit) {
            rows.last().map(|r| r.try_get::<String, _>("upload_id")).transpose()?
        } else {
            None
        };
        let mut stale = Vec::new();
        for r in &rows {
            let meta: Vec<u8> = r.try_get("meta")?;
            let last_part: Option<i64> = r.try_get("last_part_ms")?;
            let active = decode_meta(&meta)?.last_modified_ms.max(last_part.unwrap_or(0));
            if active < cutoff_ms {
                let key: Vec<u8> = r.try_get("key")?;
                stale.push((r.try_get("bucket")?, String::from_utf8_lossy(&key).into_owned(), r.try_get("upload_id")?));
            }
        }
        Ok((stale, next))
    }

    /// Check the upload exists (for a part header, before streaming the body).
    pub async fn check_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        load_upload(&self.read, bucket, key, upload_id).await.map(|_| ())
    }

    /// Record a part; returns the blob to unlink: the part it replaced, if any, or its own
    /// when a copied part (`recorded_ms`) lost to one recorded here later.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        blob_id: &str,
        size: u64,
        etag: &str,
        checksum: &str,
        recorded_ms: Option<i64>,
    ) -> Result<Option<String>> {
        let span = tracing::info_span!("index.commit", op = "put_part");
        async {
            let mut tx = self.write.begin().await?;
            load_upload(&mut *tx, bucket, key, upload_id).await?;
            let stored =
                sqlx::query("SELECT blob_id, last_modified_ms FROM parts WHERE upload_id = ?1 AND part_number = ?2")
                    .bind(upload_id)
                    .bind(i64::from(part_number))
                    .fetch_optional(&mut *tx)
                    .await?;
            let old = match stored {
                Some(r) => {
                    // A copy from a peer (anti-entropy) never replaces a part recorded here
                    // later (the client uploaded that part number again meanwhile).
                    let at: i64 = r.try_get("last_modified_ms")?;
                    if recorded_ms.is_some_and(|copied| copied <= at) {
                        return Ok(Some(blob_id.to_string()));
                    }
                    Some(r.try_get::<String, _>("blob_id")?)
                }
                None => None,
            };
            sqlx::query(
                "INSERT INTO parts (upload_id, part_number, blob_id, size, etag, last_modified_ms, checksum) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (upload_id, part_number) DO UPDATE SET blob_id = excluded.blob_id, \
                 size = excluded.size, etag = excluded.etag, last_modified_ms = excluded.last_modified_ms, \
                 checksum = excluded.checksum",
            )
            .bind(upload_id)
            .bind(i64::from(part_number))
            .bind(blob_id)
            .bind(size as i64)
            .bind(etag)
            .bind(recorded_ms.unwrap_or_else(now_ms))
            .bind(checksum)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(old)
        }
        .instrument(span)
        .await
    }

    /// Delete an upload and its parts and remember it ended (`ended_uploads`); returns the
    /// parts' blobs.
    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<Vec<String>> {
        let span = tracing::info_span!("index.commit", op = "abort_upload");
        async {
            let mut tx = self.write.begin().await?;
            load_upload(&mut *tx, bucket, key, upload_id).await?;
            let blobs = part_blobs(&mut *tx, upload_id).await?;
            delete_upload(&mut tx, upload_id).await?;
            record_ended(&mut tx, bucket, key, upload_id, None).await?;
            tx.commit().await?;
            Ok(blobs.into_iter().map(|p| p.blob).collect())
        }
        .instrument(span)
        .await
    }

    /// Turn an upload into the object (LWW against the stored version), in one
    /// transaction; the object's body is the listed parts' blob files, in order.
    pub async fn complete_upload(&self, c: Completion) -> Result<Applied> {
        let span = tracing::info_span!("index.commit", op = "complete_upload");
        async {
            let mut tx = self.write.begin().await?;
            let up = load_upload(&mut *tx, &c.bucket, &c.key, &c.upload_id).await?;
            let stored = part_blobs(&mut *tx, &c.upload_id).await?;
            let mut blobs = Vec::with_capacity(c.parts.len());
            let mut part_sizes = Vec::with_capacity(c.parts.len());
            let mut part_checksums = Vec::with_capacity(c.parts.len());
            let by_number: std::collections::HashMap<u32, usize> =
                stored.iter().enumerate().map(|(i, s)| (s.part.part_number, i)).collect();
            let mut prev = 0u32;
            for p in &c.parts {
                if p.part_number <= prev {
                    return Err(BlobdError::InvalidPart(format!("part {} is out of order or repeated", p.part_number)));
                }
                prev = p.part_number;
                let Some(part) = by_number.get(&p.part_number).map(|&i| &stored[i]) else {
                    return Err(BlobdError::InvalidPart(format!("part {} was not uploaded", p.part_number)));
                };
                if !strip_etag(&part.part.etag).eq_ignore_ascii_case(strip_etag(&p.etag)) {
                    return Err(BlobdError::InvalidPart(format!(
                        "part {} has etag {}, not {}",
                        p.part_number, part.part.etag, p.etag
                    )));
                }
                blobs.push(part.blob.clone());
                part_sizes.push(part.part.size);
                part_checksums.push(part.part.checksum.clone());
            }
            if blobs.is_empty() {
                return Err(BlobdError::InvalidPart("no parts listed".into()));
            }
            let size: u64 = part_sizes.iter().sum();
            let mut meta = up.meta;
            meta.bucket = c.bucket.clone();
            meta.key = c.key.clone();
            meta.version = Some(c.ver.to_wire());
            meta.size = size;
            meta.etag = c.etag.clone();
            meta.tombstone = false;
            meta.last_modified_ms = c.last_modified_ms;
            meta.part_sizes = part_sizes;
            meta.part_checksums = if part_checksums.iter().all(String::is_empty) { Vec::new() } else { part_checksums };
            meta.checksums = c.checksums.clone();
            let new = NewObject { ver: c.ver.clone(), heal: false, tombstone: false, size, blobs: blobs.clone(), meta };
            let mut applied = apply_in_tx(&mut tx, &c.bucket, &c.key, new).await?;
            delete_upload(&mut tx, &c.upload_id).await?;
            let completed = CompletedUpload { etag: c.etag.clone(), checksums: c.checksums.clone() };
            record_ended(&mut tx, &c.bucket, &c.key, &c.upload_id, Some(&completed)).await?;
            tx.commit().await?;
            // Parts uploaded but not listed are garbage either way (apply_in_tx already
            // lists the listed blobs when the write lost).
            let listed: std::collections::HashSet<&String> = blobs.iter().collect();
            let unlisted: Vec<String> =
                stored.iter().map(|p| &p.blob).filter(|b| !listed.contains(b)).cloned().collect();
            applied.unlink.extend(unlisted);
            Ok(applied)
        }
        .instrument(span)
        .await
    }
}

/// A bucket's live objects and uploads in progress, in one statement.
async fn bucket_counts<'e, E>(exec: E, bucket: &str) -> Result<(u64, u64)>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM objects WHERE bucket = ?1 AND tombstone = 0) AS o, \
         (SELECT COUNT(*) FROM uploads WHERE bucket = ?1) AS u",
    )
    .bind(bucket)
    .fetch_one(exec)
    .await?;
    let (o, u): (i64, i64) = (row.try_get("o")?, row.try_get("u")?);
    Ok((o as u64, u as u64))
}

/// Refuse a new object or upload of bucket incarnation `bucket_rev` when a fence covers
/// it. Inside the write transaction, so a write and a fenced count are ordered.
async fn check_fence(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, bucket: &str, bucket_rev: i64) -> Result<()> {
    let fenced = sqlx::query("SELECT 1 FROM fences WHERE bucket = ?1 AND bucket_rev >= ?2 AND until_ms > ?3")
        .bind(bucket)
        .bind(bucket_rev)
        .bind(now_ms())
        .fetch_optional(&mut **tx)
        .await?;
    if fenced.is_some() { Err(BlobdError::BucketDeleted) } else { Ok(()) }
}

async fn apply_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    bucket: &str,
    key: &str,
    new: NewObject,
) -> Result<Applied> {
    if !new.tombstone {
        check_fence(tx, bucket, new.meta.bucket_rev).await?;
    }
    let old = sqlx::query(SELECT_OBJECT).bind(bucket).bind(key.as_bytes()).fetch_optional(&mut **tx).await?;
    let old = old.as_ref().map(row_to_obj).transpose()?;
    if let Some(old) = &old
        && (new.ver < old.ver || (new.ver == old.ver && (!new.heal || old.tombstone)))
    {
        // Lost to a newer (or equal) version: the incoming blobs are not referenced.
        return Ok(Applied {
            applied: false,
            current: old.ver.clone(),
            unlink: new.blobs,
            live_delta: 0,
            bytes_delta: 0,
        });
    }
    sqlx::query(UPSERT_OBJECT)
        .bind(bucket)
        .bind(key.as_bytes())
        .bind(new.ver.hlc_db())
        .bind(&new.ver.writer)
        .bind(i64::from(new.tombstone))
        .bind(new.size as i64)
        .bind(join_blobs(&new.blobs))
        .bind(encode_meta(&new.meta))
        .execute(&mut **tx)
        .await?;
    let was_live = old.as_ref().is_some_and(|o| !o.tombstone);
    let live_delta = i64::from(!new.tombstone) - i64::from(was_live);
    let live_bytes = |tombstone: bool, size: u64| if tombstone { 0 } else { size as i64 };
    let bytes_delta = live_bytes(new.tombstone, new.size) - old.as_ref().map_or(0, |o| live_bytes(o.tombstone, o.size));
    Ok(Applied {
        applied: true,
        current: new.ver,
        unlink: old.map(|o| o.blobs).unwrap_or_default(),
        live_delta,
        bytes_delta,
    })
}

async fn load_upload<'e, E>(exec: E, bucket: &str, key: &str, upload_id: &str) -> Result<UploadRow>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query("SELECT bucket, key, meta FROM uploads WHERE upload_id = ?1")
        .bind(upload_id)
        .fetch_optional(exec)
        .await?
        .ok_or(BlobdError::NoSuchUpload)?;
    let b: String = row.try_get("bucket")?;
    let k: Vec<u8> = row.try_get("key")?;
    if b != bucket || k != key.as_bytes() {
        return Err(BlobdError::NoSuchUpload);
    }
    let meta: Vec<u8> = row.try_get("meta")?;
    Ok(UploadRow { meta: decode_meta(&meta)? })
}

/// One stored part of an upload: its blob and what ListParts shows of it.
struct StoredPart {
    blob: String,
    part: UploadPart,
}

/// An upload's parts with their blobs, in part order.
async fn part_blobs<'e, E>(exec: E, upload_id: &str) -> Result<Vec<StoredPart>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let rows = sqlx::query(
        "SELECT part_number, blob_id, size, etag, last_modified_ms, checksum FROM parts WHERE upload_id = ?1 \
         ORDER BY part_number",
    )
    .bind(upload_id)
    .fetch_all(exec)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("part_number")?;
            let size: i64 = r.try_get("size")?;
            let part = UploadPart {
                part_number: n as u32,
                etag: r.try_get("etag")?,
                size: size as u64,
                last_modified_ms: r.try_get("last_modified_ms")?,
                checksum: r.try_get("checksum")?,
            };
            Ok(StoredPart { blob: r.try_get("blob_id")?, part })
        })
        .collect()
}

/// Remember that an upload was completed (with the completion's ETag and checksums) or
/// aborted (`None`) here (see `ended_uploads`).
async fn record_ended(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    completed: Option<&CompletedUpload>,
) -> Result<()> {
    let checksums = match completed {
        Some(c) => Some(serde_json::to_string(&c.checksums).map_err(|e| BlobdError::Corrupt(e.to_string()))?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO ended_uploads (upload_id, bucket, key, ended_ms, etag, checksums) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (upload_id) DO NOTHING",
    )
    .bind(upload_id)
    .bind(bucket)
    .bind(key.as_bytes())
    .bind(now_ms())
    .bind(completed.map(|c| c.etag.as_str()))
    .bind(checksums)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An upload's parts, in part order.
async fn parts_of<'e, E>(exec: E, upload_id: &str) -> Result<Vec<UploadPart>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    Ok(part_blobs(exec, upload_id).await?.into_iter().map(|p| p.part).collect())
}

async fn delete_upload(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, upload_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM parts WHERE upload_id = ?1").bind(upload_id).execute(&mut **tx).await?;
    sqlx::query("DELETE FROM uploads WHERE upload_id = ?1").bind(upload_id).execute(&mut **tx).await?;
    Ok(())
}

/// The wall clock in Unix milliseconds (a part's LastModified).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
