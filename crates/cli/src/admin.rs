//! Admin commands that talk to a running service's admin port over plain HTTP:
//! `aether probe URL` (a container healthcheck: the image has no curl) and
//! `aether cluster status` (the gateway's `GET /cluster`, as a table or JSON).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use aether_gateway::cluster::ClusterView;
use anyhow::{Context, bail};

const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read (a `/cluster` of thousands of nodes fits).
const MAX_BODY: u64 = 16 << 20;

/// GET `url` (`http://host:port/path`); the status code and body.
pub fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http(url, "GET", "")
}

/// One HTTP/1.1 request with a text body; the status code and body.
fn http(url: &str, method: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    conn.take(MAX_BODY).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed HTTP status line")?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok((status, dechunk(body)));
    }
    Ok((status, body.to_string()))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `aether probe URL`: exit 0 on a 2xx answer, else print why and fail.
pub fn probe(url: &str, print: bool) -> anyhow::Result<()> {
    let (status, body) = http_get(url)?;
    if !(200..300).contains(&status) {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    if print {
        print!("{body}");
    }
    Ok(())
}

/// `aether log-level [FILTER]`: print the service's log filter, or change it.
pub fn log_level(admin_url: &str, filter: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/log_level", admin_url.trim_end_matches('/'));
    let (status, body) = match filter {
        Some(f) => http(&url, "PUT", f)?,
        None => http_get(&url)?,
    };
    if status != 200 {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}

/// `aether cluster status`: the gateway's view of the whole cluster.
pub fn cluster_status(admin_url: &str, json: bool) -> anyhow::Result<()> {
    let url = format!("{}/cluster", admin_url.trim_end_matches('/'));
    let (status, body) = http_get(&url)?;
    if status != 200 {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: ClusterView = serde_json::from_str(&body).with_context(|| format!("{url}: not a cluster view"))?;
    print!("{}", render(&v));
    Ok(())
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn render(v: &ClusterView) -> String {
    let mut out = String::new();
    let ready = if v.ready { "ready".to_string() } else { format!("NOT READY ({})", v.not_ready.join("; ")) };
    out.push_str(&format!(
        "gateway {}: {ready}; catalog revision {}, {} bucket(s), replication factor {}, {} replica write(s) missed since start\n\n",
        v.gateway_id, v.catalog_revision, v.buckets, v.replication_factor, v.missed_replica_writes
    ));
    out.push_str(&format!(
        "{:<24} {:<18} {:<8} {:>6} {:>10} {:>10} {:>10}  {}\n",
        "METAD", "MEMBER", "LEADER", "TERM", "RAFT IDX", "APPLIED", "REVISION", "ERROR"
    ));
    for m in &v.metad {
        out.push_str(&format!(
            "{:<24} {:<18} {:<8} {:>6} {:>10} {:>10} {:>10}  {}\n",
            m.endpoint,
            opt(&m.member_id),
            if m.is_leader {
                "yes"
            } else if m.error.is_some() {
                "?"
            } else {
                "no"
            },
            opt(&m.raft_term),
            opt(&m.raft_index),
            opt(&m.raft_applied_index),
            opt(&m.revision),
            m.error.as_deref().unwrap_or(""),
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<36} {:<22} {:<6} {:>6} {:<9} {:<5} {:>10} {:>14}  {}\n",
        "NODE", "ADDRESS", "ZONE", "WEIGHT", "STATE", "ALIVE", "OBJECTS", "BYTES", "ERROR"
    ));
    for n in &v.nodes {
        out.push_str(&format!(
            "{:<36} {:<22} {:<6} {:>6} {:<9} {:<5} {:>10} {:>14}  {}\n",
            n.id,
            n.addr,
            n.zone,
            n.weight,
            format!("{:?}", n.state).to_lowercase(),
            if n.alive { "yes" } else { "no" },
            opt(&n.objects),
            opt(&n.bytes),
            n.error.as_deref().unwrap_or(""),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(http_get("https://example.invalid/").is_err());
    }
}
