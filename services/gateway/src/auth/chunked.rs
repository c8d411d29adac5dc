//! The `aws-chunked` body encodings, decoded as a stream:
//!
//! ```text
//! hex-size[;chunk-signature=sig]\r\n <data> \r\n ... 0[;chunk-signature=sig]\r\n
//! [name:value\r\n ... [x-amz-trailer-signature:sig\r\n]] \r\n
//! ```
//!
//! Signed modes check every chunk signature:
//! `HMAC(key, "AWS4-HMAC-SHA256-PAYLOAD\n" + datetime + "\n" + scope + "\n" + previous +
//! "\n" + sha256("") + "\n" + sha256(chunk))`, the first `previous` being the request's
//! (seed) signature; the trailer signature is
//! `HMAC(key, "AWS4-HMAC-SHA256-TRAILER\n" + datetime + "\n" + scope + "\n" + previous +
//! "\n" + sha256(trailer lines, each "name:value\n"))`, `previous` being the final
//! (zero-length) chunk's signature.
//!
//! Memory is bounded: data is passed through as it arrives (zero-copy slices of the input
//! frames), only header/trailer lines are buffered (at most [`MAX_LINE`] bytes each), and
//! chunk sizes above [`MAX_CHUNK_SIZE`] are refused.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::Stream;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::checksum::{ChecksumAlgorithm, Hasher};
use super::sigv4::{EMPTY_SHA256, hmac_sha256, signature_matches};
use crate::error::S3Error;

/// Largest chunk size accepted (16 MiB).
pub const MAX_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
/// Longest chunk-header or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted in total.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What signed modes need to verify chunk signatures.
#[derive(Clone)]
pub(crate) struct ChunkSigning {
    pub(crate) key: [u8; 32],
    pub(crate) datetime: String,
    pub(crate) scope: String,
    pub(crate) seed: [u8; 32],
}

/// How an `aws-chunked` body must be decoded and checked; made by
/// [`super::authenticate`] / [`super::sigv4::payload_check_without_auth`].
#[derive(Clone)]
pub struct ChunkedMode {
    signing: Option<ChunkSigning>,
    trailer: bool,
    expected_trailer: Option<ChecksumAlgorithm>,
    decoded_length: Option<u64>,
}

impl fmt::Debug for ChunkedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkedMode")
            .field("signed", &self.signing.is_some())
            .field("trailer", &self.trailer)
            .field("expected_trailer", &self.expected_trailer)
            .field("decoded_length", &self.decoded_length)
            .finish()
    }
}

impl ChunkedMode {
    pub(crate) fn new(
        signing: Option<ChunkSigning>,
        trailer: bool,
        expected_trailer: Option<ChecksumAlgorithm>,
        decoded_length: Option<u64>,
    ) -> Self {
        Self { signing, trailer, expected_trailer: expected_trailer.filter(|_| trailer), decoded_length }
    }

    /// `x-amz-decoded-content-length`: the payload size after decoding.
    pub fn decoded_length(&self) -> Option<u64> {
        self.decoded_length
    }

    /// Whether chunk (and trailer) signatures are verified.
    pub fn is_signed(&self) -> bool {
        self.signing.is_some()
    }

    /// Whether the body may carry trailing headers.
    pub fn has_trailer(&self) -> bool {
        self.trailer
    }

    /// The checksum the trailer must carry (from `x-amz-trailer`), verified by the decoder.
    pub fn trailer_checksum(&self) -> Option<ChecksumAlgorithm> {
        self.expected_trailer
    }
}

fn framing(msg: &str) -> S3Error {
    S3Error::InvalidRequest(format!("Malformed aws-chunked body: {msg}"))
}

fn malformed_trailer() -> S3Error {
    S3Error::InvalidRequest(
        "The request contained trailing data that was not well-formed or did not conform to our published schema."
            .into(),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting `hex-size[;ext]\r\n`.
    Header,
    /// Inside a chunk's data.
    Data { remaining: u64 },
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// After the final chunk: trailer lines until an empty line.
    Trailer,
    /// Finished (successfully or not).
    Done,
}

enum Step {
    Yield(Bytes),
    NeedInput,
    Finished(Result<(), S3Error>),
}

struct Decoder<S> {
    inner: S,
    mode: ChunkedMode,
    pending: Bytes,
    line: Vec<u8>,
    state: State,
    eof: bool,
    /// Signature of the previous chunk (signed modes).
    previous: [u8; 32],
    /// Signature declared for the current chunk (signed modes).
    chunk_signature: Option<String>,
    chunk_hash: Sha256,
    checksum: Option<Hasher>,
    decoded: u64,
    trailer_lines: Vec<u8>,
    trailer_value: Option<String>,
    trailer_signature_seen: bool,
}

/// Decodes an `aws-chunked` body, verifying chunk signatures (signed modes), the trailing
/// checksum (trailer modes) and the decoded length. Yields payload bytes as they arrive;
/// any failure is the stream's last item, so a consumer must not commit a write whose
/// stream ended in an error.
pub fn decode_chunked<S>(body: S, mode: ChunkedMode) -> impl Stream<Item = Result<Bytes, S3Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, S3Error>> + Send + Unpin + 'static,
{
    let previous = mode.signing.as_ref().map_or([0; 32], |s| s.seed);
    let checksum = mode.expected_trailer.map(Hasher::new);
    Decoder {
        inner: body,
        mode,
        pending: Bytes::new(),
        line: Vec::new(),
        state: State::Header,
        eof: false,
        previous,
        chunk_signature: None,
        chunk_hash: Sha256::new(),
        checksum,
        decoded: 0,
        trailer_lines: Vec::new(),
        trailer_value: None,
        trailer_signature_seen: false,
    }
}

impl<S> Decoder<S> {
    /// Moves bytes up to and including the next `\n` into `self.line`; returns the line
    /// without its `\r\n` once complete.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, S3Error> {
        match self.pending.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&self.pending[..i]);
                self.pending.advance(i + 1);
                if self.line.len() > MAX_LINE {
                    return Err(framing("line too long"));
                }
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.line.extend_from_slice(&self.pending);
                self.pending.clear();
                if self.line.len() > MAX_LINE {
                    return Err(framing("line too long"));
                }
                Ok(None)
            }
        }
    }

    fn verify_chunk(&mut self) -> Result<(), S3Error> {
        let Some(signing) = &self.mode.signing else {
            return Ok(());
        };
        let hash: [u8; 32] = std::mem::take(&mut self.chunk_hash).finalize().into();
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            signing.datetime,
            signing.scope,
            hex::encode(self.previous),
            hex::encode(hash)
        );
        let computed = hmac_sha256(&signing.key, string_to_sign.as_bytes());
        let declared = self.chunk_signature.take().unwrap_or_default();
        if !signature_matches(&computed, &declared) {
            tracing::debug!("aws-chunked chunk signature mismatch");
            return Err(S3Error::SignatureDoesNotMatch);
        }
        self.previous = computed;
        Ok(())
    }

    fn on_header(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let text = std::str::from_utf8(line).map_err(|_| framing("chunk header is not text"))?;
        let (size, extensions) = text.split_once(';').unwrap_or((text, ""));
        let size = size.trim();
        if size.is_empty() || size.len() > 16 {
            return Err(framing("invalid chunk size"));
        }
        let size = u64::from_str_radix(size, 16).map_err(|_| framing("invalid chunk size"))?;
        if size > MAX_CHUNK_SIZE {
            return Err(S3Error::InvalidRequest(format!("Chunk size {size} exceeds the maximum of {MAX_CHUNK_SIZE}")));
        }
        if let Some(limit) = self.mode.decoded_length
            && self.decoded.saturating_add(size) > limit
        {
            return Err(S3Error::IncompleteBody);
        }
        if self.mode.signing.is_some() {
            let signature = extensions
                .split(';')
                .filter_map(|e| e.split_once('='))
                .find(|(k, _)| k.trim() == "chunk-signature")
                .map(|(_, v)| v.trim().to_owned())
                .ok_or(S3Error::SignatureDoesNotMatch)?;
            self.chunk_signature = Some(signature);
            self.chunk_hash = Sha256::new();
        }
        if size == 0 {
            self.verify_chunk()?;
            self.state = State::Trailer;
        } else {
            self.state = State::Data { remaining: size };
        }
        Ok(())
    }

    fn on_trailer(&mut self, line: &[u8]) -> Result<(), S3Error> {
        if line.is_empty() {
            self.state = State::Done;
            return Ok(());
        }
        if self.trailer_signature_seen {
            return Err(malformed_trailer());
        }
        let text = std::str::from_utf8(line).map_err(|_| malformed_trailer())?;
        let (name, value) = text.split_once(':').ok_or_else(malformed_trailer)?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if !self.mode.trailer {
            return Err(malformed_trailer());
        }
        if name == "x-amz-trailer-signature" {
            if let Some(signing) = &self.mode.signing {
                let string_to_sign = format!(
                    "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
                    signing.datetime,
                    signing.scope,
                    hex::encode(self.previous),
                    hex::encode(Sha256::digest(&self.trailer_lines))
                );
                let computed = hmac_sha256(&signing.key, string_to_sign.as_bytes());
                if !signature_matches(&computed, value) {
                    tracing::debug!("aws-chunked trailer signature mismatch");
                    return Err(S3Error::SignatureDoesNotMatch);
                }
            }
            self.trailer_signature_seen = true;
            return Ok(());
        }
        if self.trailer_lines.len() + line.len() + 1 > MAX_TRAILER_BYTES {
            return Err(malformed_trailer());
        }
        self.trailer_lines.extend_from_slice(name.as_bytes());
        self.trailer_lines.push(b':');
        self.trailer_lines.extend_from_slice(value.as_bytes());
        self.trailer_lines.push(b'\n');
        if let Some(algorithm) = ChecksumAlgorithm::from_header_name(&name) {
            if self.mode.expected_trailer != Some(algorithm) || self.trailer_value.is_some() {
                return Err(malformed_trailer());
            }
            self.trailer_value = Some(value.to_owned());
        }
        Ok(())
    }

    /// Final checks once the body is complete (`eof`: the input ended without the final
    /// empty line).
    fn finish(&mut self, eof: bool) -> Result<(), S3Error> {
        self.state = State::Done;
        if let Some(limit) = self.mode.decoded_length
            && self.decoded != limit
        {
            return Err(S3Error::IncompleteBody);
        }
        if self.mode.trailer && self.mode.signing.is_some() && !self.trailer_signature_seen {
            return Err(if eof { S3Error::IncompleteBody } else { S3Error::SignatureDoesNotMatch });
        }
        if let Some(algorithm) = self.mode.expected_trailer {
            let declared = self.trailer_value.take().ok_or_else(malformed_trailer)?;
            let computed = self.checksum.take().map(Hasher::finalize_base64).unwrap_or_default();
            if !bool::from(computed.as_bytes().ct_eq(declared.as_bytes())) {
                tracing::debug!(algorithm = algorithm.name(), "aws-chunked trailing checksum mismatch");
                return Err(S3Error::BadChecksum(algorithm.name()));
            }
        }
        Ok(())
    }

    /// Makes as much progress as the buffered input allows.
    fn step(&mut self) -> Step {
        loop {
            match self.state {
                State::Done => return Step::Finished(Ok(())),
                State::Data { remaining } => {
                    if self.pending.is_empty() {
                        return Step::NeedInput;
                    }
                    let n = remaining.min(self.pending.len() as u64) as usize;
                    let out = self.pending.split_to(n);
                    if self.mode.signing.is_some() {
                        self.chunk_hash.update(&out);
                    }
                    if let Some(h) = &mut self.checksum {
                        h.update(&out);
                    }
                    self.decoded += n as u64;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 { State::DataEnd } else { State::Data { remaining } };
                    return Step::Yield(out);
                }
                State::Header | State::DataEnd | State::Trailer => {
                    let line = match self.take_line() {
                        Ok(Some(line)) => line,
                        Ok(None) => return Step::NeedInput,
                        Err(e) => return Step::Finished(Err(e)),
                    };
                    let result = match self.state {
                        State::Header => self.on_header(&line),
                        State::DataEnd if line.is_empty() => {
                            self.state = State::Header;
                            self.verify_chunk()
                        }
                        State::DataEnd => Err(framing("chunk data longer than its declared size")),
                        _ => self.on_trailer(&line),
                    };
                    if let Err(e) = result {
                        return Step::Finished(Err(e));
                    }
                    if self.state == State::Done {
                        return Step::Finished(self.finish(false));
                    }
                }
            }
        }
    }

    fn at_eof(&mut self) -> Result<(), S3Error> {
        if self.state == State::Trailer && self.line.is_empty() {
            // The final empty line is optional once the last chunk and trailers are in.
            self.finish(true)
        } else {
            self.state = State::Done;
            Err(S3Error::IncompleteBody)
        }
    }
}

impl<S> Stream for Decoder<S>
where
    S: Stream<Item = Result<Bytes, S3Error>> + Unpin,
{
    type Item = Result<Bytes, S3Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.state == State::Done && this.pending.is_empty() && this.eof {
                return Poll::Ready(None);
            }
            match this.step() {
                Step::Yield(bytes) => return Poll::Ready(Some(Ok(bytes))),
                Step::Finished(result) => {
                    this.state = State::Done;
                    this.eof = true;
                    this.pending.clear();
                    return Poll::Ready(result.err().map(Err));
                }
                Step::NeedInput => {}
            }
            if this.eof {
                let result = this.at_eof();
                this.state = State::Done;
                return Poll::Ready(result.err().map(Err));
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => this.pending = frame,
                Poll::Ready(Some(Err(e))) => {
                    this.state = State::Done;
                    this.eof = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.eof = true,
            }
        }
    }
}

/// Test helper: encodes `data` as an `aws-chunked` body in `chunk_size` chunks (`> 0`).
/// With `signing` = `(key, datetime, scope, seed signature)` the chunks (and the trailer, if
/// any) are signed; with `trailer` the body ends with that checksum of `data` as a trailer.
#[doc(hidden)]
pub fn encode_aws_chunked(
    data: &[u8],
    chunk_size: usize,
    signing: Option<(&[u8; 32], &str, &str, [u8; 32])>,
    trailer: Option<ChecksumAlgorithm>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / chunk_size.max(1) * 100 + 200);
    let mut previous = signing.map(|s| s.3);
    let sign = |previous: &mut Option<[u8; 32]>, chunk: &[u8]| -> String {
        match (signing, previous.as_mut()) {
            (Some((key, datetime, scope, _)), Some(prev)) => {
                let sts = format!(
                    "AWS4-HMAC-SHA256-PAYLOAD\n{datetime}\n{scope}\n{}\n{EMPTY_SHA256}\n{}",
                    hex::encode(*prev),
                    hex::encode(Sha256::digest(chunk))
                );
                *prev = hmac_sha256(key, sts.as_bytes());
                format!(";chunk-signature={}", hex::encode(*prev))
            }
            _ => String::new(),
        }
    };
    for chunk in data.chunks(chunk_size.max(1)).chain(std::iter::once(&[][..])) {
        let ext = sign(&mut previous, chunk);
        out.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
        if !chunk.is_empty() {
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(algorithm) = trailer {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        let line = format!("{}:{}", algorithm.header_name(), h.finalize_base64());
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let (Some((key, datetime, scope, _)), Some(prev)) = (signing, previous) {
            let sts = format!(
                "AWS4-HMAC-SHA256-TRAILER\n{datetime}\n{scope}\n{}\n{}",
                hex::encode(prev),
                hex::encode(Sha256::digest(format!("{line}\n").as_bytes()))
            );
            let sig = hmac_sha256(key, sts.as_bytes());
            out.extend_from_slice(format!("x-amz-trailer-signature:{}\r\n", hex::encode(sig)).as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sigv4::{SecretKey, signing_key};
    use futures::StreamExt;

    const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";
    const DATETIME: &str = "20130524T000000Z";

    fn key() -> [u8; 32] {
        signing_key(&SecretKey::new(SK), "20130524", "us-east-1")
    }

    fn seed(hex_sig: &str) -> [u8; 32] {
        let mut s = [0u8; 32];
        hex::decode_to_slice(hex_sig, &mut s).unwrap();
        s
    }

    fn signed_mode(seed_hex: &str, trailer: Option<ChecksumAlgorithm>, len: u64) -> ChunkedMode {
        let signing = ChunkSigning { key: key(), datetime: DATETIME.into(), scope: SCOPE.into(), seed: seed(seed_hex) };
        ChunkedMode::new(Some(signing), trailer.is_some(), trailer, Some(len))
    }

    /// Runs the decoder over `frames`; returns the decoded bytes and the final error, if any.
    fn run(frames: Vec<Bytes>, mode: ChunkedMode) -> (Vec<u8>, Option<S3Error>) {
        let input = futures::stream::iter(frames.into_iter().map(Ok));
        let mut stream = Box::pin(decode_chunked(input, mode));
        futures::executor::block_on(async {
            let mut out = Vec::new();
            let mut err = None;
            while let Some(item) = stream.next().await {
                assert!(err.is_none(), "an item after an error");
                match item {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(e) => err = Some(e),
                }
            }
            (out, err)
        })
    }

    fn whole(body: &[u8]) -> Vec<Bytes> {
        vec![Bytes::copy_from_slice(body)]
    }

    fn split_at(body: &[u8], at: &[usize]) -> Vec<Bytes> {
        let mut frames = Vec::new();
        let mut start = 0;
        for &i in at {
            frames.push(Bytes::copy_from_slice(&body[start..i]));
            start = i;
        }
        frames.push(Bytes::copy_from_slice(&body[start..]));
        frames
    }

    const SEED1: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    const SEED2: &str = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";

    /// AWS's published chunked-upload example (sigv4-streaming): 65536 + 1024 bytes of 'a'.
    fn aws_example_body() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n",
        );
        body.extend_from_slice(&[b'a'; 65536]);
        body.extend_from_slice(
            b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n",
        );
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(
            b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n",
        );
        body
    }

    /// AWS's published example with a trailing CRC32C (sigv4-streaming-trailers).
    fn aws_trailer_body() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n",
        );
        body.extend_from_slice(&[b'a'; 65536]);
        body.extend_from_slice(
            b"\r\n400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n",
        );
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(
            b"\r\n0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n",
        );
        body.extend_from_slice(b"x-amz-checksum-crc32c:sOO8/Q==\r\n");
        body.extend_from_slice(
            b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n",
        );
        body
    }

    #[test]
    fn aws_example_decodes() {
        let body = aws_example_body();
        assert_eq!(body.len(), 66824); // the example's Content-Length
        let (out, err) = run(whole(&body), signed_mode(SEED1, None, 66560));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, vec![b'a'; 66560]);
        // Our encoder reproduces AWS's bytes exactly.
        assert_eq!(encode_aws_chunked(&[b'a'; 66560], 65536, Some((&key(), DATETIME, SCOPE, seed(SEED1))), None), body);
    }

    #[test]
    fn aws_trailer_example_decodes() {
        let body = aws_trailer_body();
        assert_eq!(body.len(), 66946);
        let (out, err) = run(whole(&body), signed_mode(SEED2, Some(ChecksumAlgorithm::Crc32c), 66560));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out.len(), 66560);
        let encoded = encode_aws_chunked(
            &[b'a'; 66560],
            65536,
            Some((&key(), DATETIME, SCOPE, seed(SEED2))),
            Some(ChecksumAlgorithm::Crc32c),
        );
        assert_eq!(encoded, body);
        // Without the final empty line it is still complete.
        let (_, err) = run(whole(&body[..body.len() - 2]), signed_mode(SEED2, Some(ChecksumAlgorithm::Crc32c), 66560));
        assert!(err.is_none(), "{err:?}");
    }

    #[test]
    fn aws_examples_split_at_boundaries() {
        // Every split point around the framing, and one byte at a time.
        let body = aws_example_body();
        let mut points: Vec<usize> = (1..200).collect();
        points.extend(65536 + 50..65536 + 250);
        points.extend(body.len() - 200..body.len());
        for p in points {
            let (out, err) = run(split_at(&body, &[p]), signed_mode(SEED1, None, 66560));
            assert!(err.is_none(), "split at {p}: {err:?}");
            assert_eq!(out.len(), 66560);
        }
        let bytes: Vec<Bytes> = aws_trailer_body().iter().map(|&b| Bytes::copy_from_slice(&[b])).collect();
        let (out, err) = run(bytes, signed_mode(SEED2, Some(ChecksumAlgorithm::Crc32c), 66560));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out.len(), 66560);
    }

    #[test]
    fn small_bodies_split_at_every_byte() {
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let signing = Some((&key(), DATETIME, SCOPE, seed(SEED1)));
        let cases = [
            (encode_aws_chunked(&data, 100, signing, None), None, true),
            (
                encode_aws_chunked(&data, 128, signing, Some(ChecksumAlgorithm::Crc64Nvme)),
                Some(ChecksumAlgorithm::Crc64Nvme),
                true,
            ),
            (
                encode_aws_chunked(&data, 7, None, Some(ChecksumAlgorithm::Sha256)),
                Some(ChecksumAlgorithm::Sha256),
                false,
            ),
        ];
        for (body, trailer, signed) in cases {
            let mode = || {
                if signed { signed_mode(SEED1, trailer, 300) } else { ChunkedMode::new(None, true, trailer, Some(300)) }
            };
            for p in 0..=body.len() {
                let (out, err) = run(split_at(&body, &[p]), mode());
                assert!(err.is_none(), "split at {p}: {err:?}");
                assert_eq!(out, data);
            }
            for q in (0..body.len()).step_by(13) {
                let (out, err) = run(split_at(&body, &[q / 2, q]), mode());
                assert!(err.is_none(), "split at {q}: {err:?}");
                assert_eq!(out, data);
            }
        }
    }

    #[test]
    fn tampering_is_detected_after_the_data() {
        let mut body = aws_example_body();
        body[1000] = b'b';
        let (out, err) = run(whole(&body), signed_mode(SEED1, None, 66560));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)), "{err:?}");
        assert_eq!(out.len(), 65536); // the first chunk was yielded before the check failed
        // A wrong seed fails the first chunk.
        let (_, err) = run(whole(&aws_example_body()), signed_mode(SEED2, None, 66560));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)));
        // A bad final-chunk signature.
        let body = aws_example_body();
        let text = String::from_utf8_lossy(&body).replace("0;chunk-signature=b6c6", "0;chunk-signature=b6c7");
        let (_, err) = run(whole(text.as_bytes()), signed_mode(SEED1, None, 66560));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)));
        // Missing chunk signature in a signed mode.
        let body = encode_aws_chunked(b"hello", 5, None, None);
        let (_, err) = run(whole(&body), signed_mode(SEED1, None, 5));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)));
        // A changed trailer value breaks the trailer signature.
        let body = String::from_utf8_lossy(&aws_trailer_body()).replace("sOO8/Q==", "sOO8/Q=a").into_bytes();
        let (_, err) = run(whole(&body), signed_mode(SEED2, Some(ChecksumAlgorithm::Crc32c), 66560));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)), "{err:?}");
        // Missing trailer signature.
        let body = String::from_utf8_lossy(&aws_trailer_body())
            .replace("x-amz-trailer-signature:", "x-amz-meta-x:")
            .into_bytes();
        let (_, err) = run(whole(&body), signed_mode(SEED2, Some(ChecksumAlgorithm::Crc32c), 66560));
        assert!(matches!(err, Some(S3Error::SignatureDoesNotMatch)), "{err:?}");
    }

    #[test]
    fn truncation_and_length_errors() {
        let body = aws_example_body();
        for cut in [0, 10, 90, 5000, 65626, 66000, body.len() - 3] {
            let (_, err) = run(whole(&body[..cut]), signed_mode(SEED1, None, 66560));
            assert!(matches!(err, Some(S3Error::IncompleteBody)), "cut {cut}: {err:?}");
        }
        // Declared length differs from the data.
        let (_, err) = run(whole(&body), signed_mode(SEED1, None, 66561));
        assert!(matches!(err, Some(S3Error::IncompleteBody)), "{err:?}");
        let (_, err) = run(whole(&body), signed_mode(SEED1, None, 66559));
        assert!(matches!(err, Some(S3Error::IncompleteBody)), "{err:?}");
        // Chunk data longer than its size line says.
        let (_, err) = run(whole(b"3\r\nabcd\r\n0\r\n\r\n"), ChunkedMode::new(None, false, None, Some(3)));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        // Oversized chunk and garbage size.
        let (_, err) = run(whole(b"1000001\r\n"), ChunkedMode::new(None, false, None, None));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        let (_, err) = run(whole(b"xyz\r\n"), ChunkedMode::new(None, false, None, None));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        // An endless header line is refused without buffering it all.
        let (_, err) = run(vec![Bytes::from(vec![b'1'; MAX_LINE + 10])], ChunkedMode::new(None, false, None, None));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        // Errors of the input stream pass through as the last item.
        let input = futures::stream::iter(vec![Ok(Bytes::from_static(b"5\r\nhel")), Err(S3Error::IncompleteBody)]);
        let items: Vec<_> = futures::executor::block_on(
            decode_chunked(input, ChunkedMode::new(None, false, None, Some(5))).collect::<Vec<_>>(),
        );
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Err(S3Error::IncompleteBody)));
    }

    #[test]
    fn trailing_checksums() {
        let data = b"hello world".to_vec();
        for algorithm in ChecksumAlgorithm::ALL {
            let body = encode_aws_chunked(&data, 4, None, Some(algorithm));
            let (out, err) = run(whole(&body), ChunkedMode::new(None, true, Some(algorithm), Some(11)));
            assert!(err.is_none(), "{algorithm:?}: {err:?}");
            assert_eq!(out, data);
            // Same framing, different data: the checksum no longer matches.
            let bad = String::from_utf8_lossy(&body).replacen("hell", "jell", 1).into_bytes();
            let (_, err) = run(whole(&bad), ChunkedMode::new(None, true, Some(algorithm), Some(11)));
            assert!(matches!(err, Some(S3Error::BadChecksum(name)) if name == algorithm.name()), "{err:?}");
        }
        // A checksum other than the declared one, or none at all.
        let body = encode_aws_chunked(&data, 4, None, Some(ChecksumAlgorithm::Crc32));
        let (_, err) = run(whole(&body), ChunkedMode::new(None, true, Some(ChecksumAlgorithm::Crc32c), Some(11)));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        let body = encode_aws_chunked(&data, 4, None, None);
        let (_, err) = run(whole(&body), ChunkedMode::new(None, true, Some(ChecksumAlgorithm::Crc32), Some(11)));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        // Unsigned trailer, no checksum declared: plain decoding.
        let (out, err) = run(whole(&body), ChunkedMode::new(None, true, None, Some(11)));
        assert!(err.is_none());
        assert_eq!(out, data);
        // Trailer lines where none are allowed.
        let body = encode_aws_chunked(&data, 4, None, Some(ChecksumAlgorithm::Crc32));
        let (_, err) = run(whole(&body), ChunkedMode::new(None, false, None, Some(11)));
        assert!(matches!(err, Some(S3Error::InvalidRequest(_))), "{err:?}");
        // The literal CRC32 example: BadChecksum("CRC32") on mismatch.
        let (_, err) = run(
            whole(b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"),
            ChunkedMode::new(None, true, Some(ChecksumAlgorithm::Crc32), Some(5)),
        );
        assert!(matches!(err, Some(S3Error::BadChecksum("CRC32"))), "{err:?}");
    }

    #[test]
    fn debug_hides_key() {
        let mode = signed_mode(SEED1, None, 1);
        let text = format!("{mode:?}");
        assert!(text.contains("signed: true"));
        assert!(!text.contains(&hex::encode(key())));
    }
}
