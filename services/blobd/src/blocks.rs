//! Block checksums of blob files (bitrot detection).
//!
//! A blob file holds the body, then a trailer: the CRC32C of every `BLOCK` bytes of the
//! body (the last block may be shorter), little-endian, then the block count (u32 LE) and
//! the magic `AETHSUM1`. The index keeps the body size, so the trailer is found at
//! `size..`. Files written before the trailer existed are exactly `size` long and are read
//! unverified. Every read verifies whole blocks before it hands out any of their bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub const BLOCK: u64 = 1 << 20;
const MAGIC: &[u8; 8] = b"AETHSUM1";

fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Block sums of a body being written, fed in arbitrary pieces.
#[derive(Debug)]
pub struct BlockSums {
    digest: crc_fast::Digest,
    fill: u64,
    sums: Vec<u32>,
}

impl Default for BlockSums {
    fn default() -> Self {
        Self { digest: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi), fill: 0, sums: Vec::new() }
    }
}

impl BlockSums {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((BLOCK - self.fill) as usize).min(data.len());
            self.digest.update(&data[..take]);
            self.fill += take as u64;
            data = &data[take..];
            if self.fill == BLOCK {
                self.sums.push(self.digest.finalize() as u32);
                self.digest.reset();
                self.fill = 0;
            }
        }
    }

    /// The trailer to append after the body.
    pub fn trailer(mut self) -> Vec<u8> {
        if self.fill > 0 {
            self.sums.push(self.digest.finalize() as u32);
        }
        let mut out = Vec::with_capacity(self.sums.len() * 4 + 12);
        for s in &self.sums {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(self.sums.len() as u32).to_le_bytes());
        out.extend_from_slice(MAGIC);
        out
    }
}

fn blocks_of(size: u64) -> u64 {
    size.div_ceil(BLOCK)
}

/// A blob file opened for verified reads.
#[derive(Debug)]
pub struct BlobFile {
    file: File,
    size: u64,
    /// None: a file from before block sums (read unverified).
    sums: Option<Vec<u32>>,
}

impl BlobFile {
    /// Open `file`, whose body is `size` bytes, and load its block sums.
    pub fn new(file: File, size: u64) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let n = blocks_of(size);
        let with_trailer = size + n * 4 + 12;
        let sums = if len == size {
            None
        } else if len == with_trailer {
            let mut raw = vec![0u8; (n * 4 + 12) as usize];
            file.read_exact_at(&mut raw, size)?;
            let (sums, tail) = raw.split_at((n * 4) as usize);
            if &tail[4..] != MAGIC || u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64 != n {
                return Err(bitrot("blob trailer is damaged"));
            }
            Some(sums.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        } else {
            return Err(bitrot(&format!("blob file is {len} bytes, the index says {size} (+ trailer {with_trailer})")));
        };
        Ok(Self { file, size, sums })
    }

    #[cfg(test)]
    pub fn verified(&self) -> bool {
        self.sums.is_some()
    }

    /// Bytes `[pos, pos + want)` of the body (at most to the end of `pos`'s block, so a
    /// caller reading sequentially gets block-aligned reads after the first), each block
    /// checked against its sum first.
    pub fn read(&self, pos: u64, want: u64) -> std::io::Result<Vec<u8>> {
        if pos >= self.size {
            return Ok(Vec::new());
        }
        let block = pos / BLOCK;
        let start = block * BLOCK;
        let block_len = BLOCK.min(self.size - start);
        let Some(sums) = &self.sums else {
            let n = want.min(self.size - pos) as usize;
            let mut buf = vec![0u8; n];
            self.file.read_exact_at(&mut buf, pos)?;
            return Ok(buf);
        };
        let mut buf = vec![0u8; block_len as usize];
        self.file.read_exact_at(&mut buf, start)?;
        if crc32c(&buf) != sums[block as usize] {
            return Err(bitrot(&format!("block {block} fails its checksum")));
        }
        let from = (pos - start) as usize;
        let to = ((pos + want).min(start + block_len) - start) as usize;
        if from == 0 && to == buf.len() {
            return Ok(buf);
        }
        Ok(buf[from..to].to_vec())
    }

    /// Read and check every block (scrub); `Ok(bytes checked)`.
    pub fn check_all(&self) -> std::io::Result<u64> {
        let mut pos = 0;
        while pos < self.size {
            pos += self.read(pos, BLOCK)?.len() as u64;
        }
        Ok(pos)
    }
}

/// The error a read returns for a block (or trailer) that fails its checksum.
pub fn bitrot(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bitrot: {msg}"))
}

pub fn is_bitrot(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData && e.to_string().starts_with("bitrot:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(body: &[u8], pieces: usize) -> (tempfile::NamedTempFile, u64) {
        let mut sums = BlockSums::default();
        for c in body.chunks(body.len().div_ceil(pieces).max(1)) {
            sums.update(c);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(body).unwrap();
        f.write_all(&sums.trailer()).unwrap();
        (f, body.len() as u64)
    }

    #[test]
    fn reads_back_verified_and_catches_a_flipped_byte() {
        let body: Vec<u8> = (0..(2 * BLOCK + 123)).map(|i| (i * 7 % 251) as u8).collect();
        let (f, size) = write(&body, 7);
        let b = BlobFile::new(f.reopen().unwrap(), size).unwrap();
        assert!(b.verified());
        assert_eq!(b.check_all().unwrap(), size);
        assert_eq!(b.read(5, 10).unwrap(), body[5..15].to_vec());
        assert_eq!(b.read(BLOCK - 2, 10).unwrap(), body[(BLOCK - 2) as usize..BLOCK as usize].to_vec());
        assert_eq!(b.read(2 * BLOCK, BLOCK).unwrap(), body[(2 * BLOCK) as usize..].to_vec());
        // Flip one byte in the second block.
        f.as_file().write_all_at(&[body[(BLOCK + 9) as usize] ^ 1], BLOCK + 9).unwrap();
        let b = BlobFile::new(f.reopen().unwrap(), size).unwrap();
        assert!(b.read(3, 4).is_ok(), "the first block is intact");
        let e = b.read(BLOCK + 1, 4).unwrap_err();
        assert!(is_bitrot(&e), "{e}");
        assert!(b.check_all().is_err());
    }

    #[test]
    fn empty_and_legacy_files() {
        let (f, size) = write(b"", 1);
        assert_eq!(BlobFile::new(f.reopen().unwrap(), size).unwrap().check_all().unwrap(), 0);
        let mut legacy = tempfile::NamedTempFile::new().unwrap();
        legacy.write_all(b"hello").unwrap();
        let b = BlobFile::new(legacy.reopen().unwrap(), 5).unwrap();
        assert!(!b.verified());
        assert_eq!(b.read(1, 3).unwrap(), b"ell".to_vec());
        // A truncated file is not mistaken for a legacy one.
        let (f, size) = write(b"0123456789", 1);
        f.as_file().set_len(size + 3).unwrap();
        assert!(is_bitrot(&BlobFile::new(f.reopen().unwrap(), size).unwrap_err()));
    }
}
