//! A minimal HTTP/1.1 client over a raw TCP socket, for the requests an SDK refuses to
//! send (truncated bodies, tampered presigned URLs, wrong payload hashes).

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one request (`Connection: close`) and read the whole response.
pub async fn request(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Response> {
    let has_len = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    let mut req = format!("{method} {path_and_query} HTTP/1.1\r\nConnection: close\r\n");
    // A Host among `headers` replaces the socket address (virtual-hosted-style requests).
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (!body.is_empty() || method == "PUT" || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    s.write_all(req.as_bytes()).await?;
    s.write_all(&body).await?;
    read_response(s).await
}

/// Send a request whose body is shorter than its Content-Length, then half-close.
pub async fn truncated_put(addr: &str, path: &str, declared: usize, sent: &[u8]) -> anyhow::Result<Option<Response>> {
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    s.write_all(sent).await?;
    s.shutdown().await?;
    // The server may answer 400 or just close; both are fine as long as nothing is stored.
    Ok(read_response(s).await.ok())
}

pub async fn read_response(mut s: TcpStream) -> anyhow::Result<Response> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").context("no header end in response")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    if status == 0 {
        bail!("bad status line {status_line:?}");
    }
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = buf[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").context("bad chunk header")?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
