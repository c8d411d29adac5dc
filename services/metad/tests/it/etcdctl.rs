use std::process::Command;

use crate::harness::Server;

fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "10s"])
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn have_etcdctl() -> bool {
    Command::new("etcdctl").arg("version").output().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_put_get_del_txn() {
    if !have_etcdctl() {
        println!("SKIPPED etcdctl_put_get_del_txn: etcdctl is not installed (apt-get install etcd-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let plain = server.addr.to_string();
    let url = server.endpoint();
    let (ok_put, put, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["put", "greeting", "hello"]));
    assert!(ok_put, "etcdctl put failed: {err}");
    assert_eq!(put.trim(), "OK");
    let (ok, get, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["get", "greeting"]));
    assert!(ok, "{err}");
    assert_eq!(get.lines().collect::<Vec<_>>(), vec!["greeting", "hello"]);
    let (ok, _, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["endpoint", "health"]));
    assert!(ok, "endpoint health: {err}");
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["endpoint", "status", "-w", "json"]));
    assert!(ok && out.contains("3.5.17"), "endpoint status: {out} {err}");
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["member", "list"]));
    assert!(ok && out.contains("default"), "member list: {out} {err}");

    // txn reads its requests from stdin: compares, blank line, success ops, blank line, failure ops.
    let txn = "value(\"greeting\") = \"hello\"\n\nput greeting bye\n\nput greeting nope\n\n";
    let out = tokio::task::block_in_place(|| {
        use std::io::Write as _;
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &plain, "txn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(txn.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SUCCESS"), "{}", String::from_utf8_lossy(&out.stdout));
    let (_, get, _) = tokio::task::block_in_place(|| etcdctl(&plain, &["get", "greeting", "--print-value-only"]));
    assert_eq!(get.trim(), "bye");

    // Leases and compaction.
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["lease", "grant", "30"]));
    assert!(ok, "lease grant: {err}");
    let id = out.split_whitespace().nth(1).unwrap().to_string(); // "lease <hex id> granted with TTL(30s)"
    let (ok, _, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["put", "leased", "x", "--lease", &id]));
    assert!(ok, "put --lease: {err}");
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["lease", "timetolive", &id, "--keys"]));
    assert!(ok && out.contains("granted with TTL(30s)") && out.contains("leased"), "timetolive: {out} {err}");
    let (ok, _, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["lease", "revoke", &id]));
    assert!(ok, "lease revoke: {err}");
    let (ok, out, _) = tokio::task::block_in_place(|| etcdctl(&plain, &["get", "leased"]));
    assert!(ok && out.is_empty(), "the leased key is gone: {out}");
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["compaction", "2"]));
    assert!(ok && out.contains("compacted revision 2"), "compaction: {out} {err}");
    let (ok, _, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["get", "greeting", "--rev", "1"]));
    assert!(!ok && err.contains("required revision has been compacted"), "{err}");

    let (ok, del, err) = tokio::task::block_in_place(|| etcdctl(&plain, &["del", "greeting"]));
    assert!(ok, "{err}");
    assert_eq!(del.trim(), "1");

    // The http:// form etcdctl 3.4 sends as `:authority: http://host:port`.
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&url, &["put", "via-url", "1"]));
    println!("etcdctl with {url}: ok={ok} out={out:?} err={err:?}");
    assert!(ok, "etcdctl --endpoints {url} failed: {err}");
    let both = format!("{url},{plain}");
    let (ok, out, err) = tokio::task::block_in_place(|| etcdctl(&both, &["get", "via-url", "--print-value-only"]));
    assert!(ok && out.trim() == "1", "etcdctl --endpoints {both}: {out} {err}");
    server.stop().await;
}
