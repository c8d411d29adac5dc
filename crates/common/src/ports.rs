//! Ports chosen before they are bound, for harnesses that start a server on a port and
//! later restart it on the same one (a test cluster's member, a child process that binds
//! itself).
//!
//! A port taken from the kernel (bind to port 0, then release) lies in Linux's ephemeral
//! range (32768 and up by default), which is also where the kernel picks the local port of
//! every outgoing connection: between the choice and the bind another connection may take
//! it, and the bind fails with `AddrInUse`. Ports below that range are only ever handed out
//! here, once per process, and checked free by a bind.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// A port on `ip`, below the ephemeral range, free when this returns and not returned
/// before by this process.
pub fn unassigned_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    // Start where the process id says, so test binaries running at once mostly differ;
    // the bind below is what makes sure.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() % 500) * 20, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..COUNT {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port in {FIRST}..{} on {ip}", FIRST + COUNT),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_distinct() {
        let ports: Vec<u16> = (0..50).map(|_| unassigned_port(Ipv4Addr::LOCALHOST).unwrap()).collect();
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)), "{ports:?}");
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len());
    }
}
