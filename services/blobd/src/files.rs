//! Blob files on disk: `<data_dir>/blobs/<2 hex>/<blob-id>`, written through
//! `<data_dir>/staging/` (write → fsync → rename → fsync dir). Files are named by random
//! blob ids, never by key.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use md5::{Digest, Md5};
use tracing::Instrument;

use crate::error::{BlobdError, Result};

#[derive(Debug, Clone)]
pub struct BlobDir {
    blobs: PathBuf,
    staging: PathBuf,
}

impl BlobDir {
    /// Create the directories (all 256 shard dirs, fsynced) and sweep staging leftovers.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let blobs = data_dir.join("blobs");
        let staging = data_dir.join("staging");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&staging)?;
        let mut created = false;
        for i in 0..=255u8 {
            let shard = blobs.join(format!("{i:02x}"));
            if !shard.is_dir() {
                std::fs::create_dir(&shard)?;
                created = true;
            }
        }
        if created {
            fsync_dir(&blobs)?;
            fsync_dir(data_dir)?;
        }
        let mut swept = 0usize;
        for entry in std::fs::read_dir(&staging)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            swept += 1;
        }
        if swept > 0 {
            tracing::info!(swept, "removed staging leftovers");
            fsync_dir(&staging)?;
        }
        Ok(Self { blobs, staging })
    }

    pub fn blob_path(&self, id: &str) -> PathBuf {
        let shard = id.get(..2).unwrap_or("00");
        self.blobs.join(shard).join(id)
    }

    /// Start a staged write of a new blob.
    pub fn stage(&self) -> Result<StagedBlob> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let path = self.staging.join(&id);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(StagedBlob {
            id,
            file: Some(file),
            hasher: Some((Md5::new(), crate::blocks::BlockSums::default())),
            size: 0,
            guard: RemoveOnDrop::new(path),
            dir: self.clone(),
        })
    }

    /// Remove files older than `min_age` that nothing references: blob files the index
    /// does not know (a crash between a blob's rename and its index commit, or between a
    /// commit that dropped it and its unlink) and staging leftovers. `referenced` must be
    /// read before this is called; a file younger than `min_age` may be a write in flight.
    /// Returns (blob files, staging files) removed.
    pub fn sweep(
        &self,
        referenced: &std::collections::HashSet<String>,
        min_age: std::time::Duration,
    ) -> Result<(usize, usize)> {
        let now = std::time::SystemTime::now();
        let old = |meta: &std::fs::Metadata| {
            meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= min_age)
        };
        let mut blobs = 0;
        for shard in std::fs::read_dir(&self.blobs)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().into_owned();
                if referenced.contains(&name) || !old(&f.metadata()?) {
                    continue;
                }
                match std::fs::remove_file(f.path()) {
                    Ok(()) => blobs += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut staging = 0;
        for f in std::fs::read_dir(&self.staging)? {
            let f = f?;
            if f.file_type()?.is_file() && old(&f.metadata()?) {
                match std::fs::remove_file(f.path()) {
                    Ok(()) => staging += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok((blobs, staging))
    }

    /// Unlink blobs no longer referenced (best effort: a leftover only wastes space).
    pub async fn unlink(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = ids.iter().map(|id| self.blob_path(id)).collect();
        let res = tokio::task::spawn_blocking(move || {
            for p in paths {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "cannot unlink blob");
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "unlink task failed");
        }
    }
}

/// Removes a file when dropped unless disarmed: cleans up after a client that went away
/// mid-upload, or after a failed commit.
#[derive(Debug)]
pub struct RemoveOnDrop {
    path: Option<PathBuf>,
}

impl RemoveOnDrop {
    pub fn new(path: PathBuf) -> Self {
        Self { path: Some(path) }
    }
    pub fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove abandoned file");
        }
    }
}

/// A blob being written into staging. Dropping it before `finish` removes the file.
#[derive(Debug)]
pub struct StagedBlob {
    id: String,
    file: Option<std::fs::File>,
    hasher: Option<(Md5, crate::blocks::BlockSums)>,
    size: u64,
    guard: RemoveOnDrop,
    dir: BlobDir,
}

/// A blob renamed into place and durable, but not yet referenced by the index. Dropping
/// it without `keep` removes the file.
#[derive(Debug)]
pub struct PlacedBlob {
    pub id: String,
    pub size: u64,
    pub md5_hex: String,
    guard: RemoveOnDrop,
}

impl PlacedBlob {
    /// The index now references the blob: keep the file.
    pub fn keep(mut self) -> String {
        self.guard.disarm();
        std::mem::take(&mut self.id)
    }
}

impl StagedBlob {
    /// Append a chunk (written and hashed on the blocking pool; the chunk is not copied).
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let (mut file, mut hasher) = match (self.file.take(), self.hasher.take()) {
            (Some(f), Some(h)) => (f, h),
            _ => return Err(BlobdError::Io(std::io::Error::other("staged blob used after a failed write"))),
        };
        let len = chunk.len() as u64;
        let (file, hasher, res) = tokio::task::spawn_blocking(move || {
            hasher.0.update(&chunk);
            hasher.1.update(&chunk);
            let res = file.write_all(&chunk);
            (file, hasher, res)
        })
        .await?;
        res?;
        self.file = Some(file);
        self.hasher = Some(hasher);
        self.size += len;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Check size and MD5 against the client's, then fsync, rename into blobs/ and fsync
    /// the directory. On any error the staging file is removed.
    pub async fn finish(mut self, expect_size: u64, expect_md5_hex: &str) -> Result<PlacedBlob> {
        let (file, hasher) = match (self.file.take(), self.hasher.take()) {
            (Some(f), Some(h)) => (f, h),
            _ => return Err(BlobdError::Io(std::io::Error::other("staged blob used after a failed write"))),
        };
        let (md5, sums) = hasher;
        let md5_hex = hex::encode(md5.finalize());
        if self.size != expect_size {
            return Err(BlobdError::SizeMismatch(format!("received {} bytes, commit says {expect_size}", self.size)));
        }
        if !md5_hex.eq_ignore_ascii_case(expect_md5_hex.trim()) {
            return Err(BlobdError::BadDigest(format!("received md5 {md5_hex}, commit says {expect_md5_hex}")));
        }
        let src = self.guard.path.clone().ok_or_else(|| BlobdError::Io(std::io::Error::other("no staging path")))?;
        let dst = self.dir.blob_path(&self.id);
        let span = tracing::info_span!("blob.fsync", size = self.size);
        let dst2 = dst.clone();
        let mut file = file;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // The block checksums after the body (see `blocks`).
            file.write_all(&sums.trailer())?;
            // fdatasync: the contents and the new size; the rename is made durable by
            // the directory fsync below.
            file.sync_data()?;
            drop(file);
            std::fs::rename(&src, &dst2)?;
            if let Some(parent) = dst2.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        })
        .instrument(span)
        .await??;
        // The staging path is gone; from here the placed file is what to clean up.
        self.guard.disarm();
        Ok(PlacedBlob { id: std::mem::take(&mut self.id), size: self.size, md5_hex, guard: RemoveOnDrop::new(dst) })
    }
}

pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
