//! ListObjectsV2 (and v1): scatter-gather `List` over the live nodes, merge their sorted
//! pages keeping the newest version per key, hide tombstones, dedup rolled-up common
//! prefixes, page with opaque continuation tokens. The merge is a pure state machine
//! ([`Merger`]) driven by the async handler.

use std::collections::VecDeque;

use aether_proto::blob::v1 as pb;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{AppState, Ctx, existing_bucket, iso8601_ms, xml_response};
use crate::error::S3Error;
use crate::replicas::version_key;
use crate::xml;

/// The largest code point: appended to a common prefix, it makes a start-after that
/// skips every key under that prefix.
const PAST_PREFIX: char = '\u{10FFFF}';
pub const MAX_KEYS: usize = 1000;

/// One merged list item.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    Object(Box<pb::ObjectMeta>),
    Prefix(String),
    /// The newest version is a tombstone: hidden, but it still advances the listing.
    Hidden(String),
}

impl Merged {
    pub fn key(&self) -> &str {
        match self {
            Merged::Object(m) => &m.key,
            Merged::Prefix(p) | Merged::Hidden(p) => p,
        }
    }

    /// The start-after that continues right behind this item.
    pub fn resume_after(&self) -> String {
        match self {
            Merged::Prefix(p) => format!("{p}{PAST_PREFIX}"),
            other => other.key().to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Cursor {
    buf: VecDeque<pb::ListEntry>,
    /// The node has entries after `next_start`.
    more: bool,
    next_start: String,
}

/// Merges the sorted pages of several nodes.
#[derive(Debug)]
pub struct Merger {
    cursors: Vec<Cursor>,
    /// Items at or before this key are skipped (a continuation point).
    skip_through: String,
}

impl Merger {
    pub fn new(nodes: usize, start_after: &str) -> Self {
        Self {
            cursors: (0..nodes)
                .map(|_| Cursor { buf: VecDeque::new(), more: true, next_start: start_after.to_string() })
                .collect(),
            skip_through: start_after.to_string(),
        }
    }

    /// Nodes whose buffer ran out while they have more: (node index, start_after).
    pub fn wants(&self) -> Vec<(usize, String)> {
        self.cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.buf.is_empty() && c.more)
            .map(|(i, c)| (i, c.next_start.clone()))
            .collect()
    }

    /// Feed one node's page (the answer to `wants`).
    pub fn feed(&mut self, node: usize, page: pb::ListResponse) {
        let Some(c) = self.cursors.get_mut(node) else { return };
        let before = c.next_start.clone();
        if let Some(last) = page.entries.last() {
            let key = last.meta.as_ref().map(|m| m.key.as_str()).unwrap_or("");
            c.next_start = if last.is_prefix { format!("{key}{PAST_PREFIX}") } else { key.to_string() };
        }
        // A page that does not advance would loop forever: treat the node as done.
        c.more = page.truncated && !page.entries.is_empty() && c.next_start > before;
        c.buf.extend(page.entries);
    }

    /// The next item in key order; `None` when every node is exhausted. Call only when
    /// `wants()` is empty.
    pub fn pop(&mut self) -> Option<Merged> {
        loop {
            let min = self
                .cursors
                .iter()
                .filter_map(|c| c.buf.front())
                .map(|e| e.meta.as_ref().map(|m| m.key.as_str()).unwrap_or(""))
                .min()?
                .to_string();
            let mut is_prefix = false;
            let mut newest: Option<pb::ObjectMeta> = None;
            for c in self.cursors.iter_mut() {
                let front_is_min =
                    c.buf.front().is_some_and(|e| e.meta.as_ref().map(|m| m.key.as_str()).unwrap_or("") == min);
                if !front_is_min {
                    continue;
                }
                let Some(e) = c.buf.pop_front() else { continue };
                is_prefix |= e.is_prefix;
                if let Some(m) = e.meta {
                    let newer = newest
                        .as_ref()
                        .is_none_or(|n| version_key(m.version.as_ref()) > version_key(n.version.as_ref()));
                    if newer {
                        newest = Some(m);
                    }
                }
            }
            let item = if is_prefix {
                Merged::Prefix(min)
            } else {
                match newest {
                    Some(m) if !m.tombstone => Merged::Object(Box::new(m)),
                    _ => Merged::Hidden(min),
                }
            };
            if item.key() <= self.skip_through.as_str() {
                continue;
            }
            return Some(item);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: String,
    pub max_keys: usize,
    /// Node-level start-after (continuation token or start-after / marker).
    pub start: String,
    pub url_encode: bool,
}

pub fn encode_token(resume_after: &str) -> String {
    B64.encode(resume_after.as_bytes())
}

pub fn decode_token(token: &str) -> Result<String, S3Error> {
    let bad = || S3Error::InvalidArgument("The continuation token provided is incorrect".into());
    let raw = B64.decode(token.as_bytes()).map_err(|_| bad())?;
    String::from_utf8(raw).map_err(|_| bad())
}

pub fn parse_params(ctx: &Ctx, v2: bool) -> Result<ListParams, S3Error> {
    let q = &ctx.query;
    let max_keys = match q.get("max-keys") {
        None => MAX_KEYS,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| (n as usize).min(MAX_KEYS)).ok_or_else(|| {
            S3Error::InvalidArgument("Provided max-keys not an integer or within integer range".into())
        })?,
    };
    let url_encode = match q.get("encoding-type") {
        None => false,
        Some(e) if e.eq_ignore_ascii_case("url") => true,
        Some(_) => return Err(S3Error::InvalidArgument("Invalid Encoding Method specified in Request".into())),
    };
    let delimiter = q.get("delimiter").unwrap_or("").to_string();
    let start = if v2 {
        match q.get("continuation-token") {
            Some(t) => decode_token(t)?,
            None => q.get("start-after").unwrap_or("").to_string(),
        }
    } else {
        let marker = q.get("marker").unwrap_or("").to_string();
        if !delimiter.is_empty() && marker.ends_with(&delimiter) { format!("{marker}{PAST_PREFIX}") } else { marker }
    };
    Ok(ListParams { prefix: q.get("prefix").unwrap_or("").to_string(), delimiter, max_keys, start, url_encode })
}

/// The result of one page: items in order and whether more follow.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub objects: Vec<pb::ObjectMeta>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// Where the next page resumes (node-level start-after).
    pub resume_after: Option<String>,
}

/// Drive a merger to one page, fetching from nodes with `fetch`.
pub async fn collect_page<F, Fut>(nodes: usize, params: &ListParams, mut fetch: F) -> Result<Page, S3Error>
where
    F: FnMut(usize, String) -> Fut,
    Fut: std::future::Future<Output = Result<pb::ListResponse, S3Error>>,
{
    let mut page = Page::default();
    if params.max_keys == 0 {
        return Ok(page);
    }
    let mut merger = Merger::new(nodes, &params.start);
    let mut count = 0usize;
    loop {
        let wants = merger.wants();
        if !wants.is_empty() {
            let fetches = wants.into_iter().map(|(i, start)| {
                let fut = fetch(i, start);
                async move { (i, fut.await) }
            });
            for (i, res) in futures::future::join_all(fetches).await {
                merger.feed(i, res?);
            }
            continue;
        }
        let Some(item) = merger.pop() else { break };
        if count >= params.max_keys {
            if matches!(item, Merged::Hidden(_)) {
                continue;
            }
            page.truncated = true;
            break;
        }
        match &item {
            Merged::Hidden(_) => continue,
            Merged::Object(m) => page.objects.push((**m).clone()),
            Merged::Prefix(p) => page.prefixes.push(p.clone()),
        }
        count += 1;
        page.resume_after = Some(item.resume_after());
    }
    if !page.truncated {
        page.resume_after = None;
    }
    Ok(page)
}

/// URL-encoding of names in list results (`encoding-type=url`): like S3, keep `/` and
/// the unreserved characters.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

pub fn enc(s: &str, url: bool) -> String {
    if url { utf8_percent_encode(s, URL_ENCODE).to_string() } else { s.to_string() }
}

pub async fn handle_list_objects(state: &AppState, ctx: &Ctx, bucket: &str, v2: bool) -> Result<Response, S3Error> {
    let owner = existing_bucket(state, bucket)?.entry.owner;
    // Objects belong to the bucket's owner (S3's "bucket owner enforced").
    let show_owner = !v2 || ctx.query.get("fetch-owner") == Some("true");
    let params = parse_params(ctx, v2)?;
    let snap = state.store.catalog.snapshot();
    let nodes: Vec<_> = state.store.data_nodes(&snap).into_iter().filter(|n| n.alive).collect();
    if nodes.is_empty() {
        tracing::warn!("no live storage node to list");
        return Err(S3Error::ServiceUnavailable);
    }
    let limit = (params.max_keys.max(1) + 1).min(MAX_KEYS + 1) as u32;
    let page = collect_page(nodes.len(), &params, |i, start| {
        let node = nodes[i].clone();
        let req = pb::ListRequest {
            bucket: bucket.to_string(),
            prefix: params.prefix.clone(),
            start_after: start,
            limit,
            delimiter: params.delimiter.clone(),
        };
        let client = state.store.client(&node.id, &node.addr);
        let timeout = state.store.timeout;
        async move {
            let mut client = client?;
            match tokio::time::timeout(timeout, client.list(req)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => {
                    tracing::warn!(node = %node.id, code = ?s.code(), message = s.message(), "list failed");
                    Err(S3Error::ServiceUnavailable)
                }
                Err(_) => {
                    tracing::warn!(node = %node.id, "list timed out");
                    Err(S3Error::ServiceUnavailable)
                }
            }
        }
    })
    .await?;

    let url = params.url_encode;
    let key_count = page.objects.len() + page.prefixes.len();
    let mut doc = xml::ListBucketResult {
        xmlns: xml::S3_NS,
        name: bucket.to_string(),
        prefix: enc(&params.prefix, url),
        delimiter: (!params.delimiter.is_empty()).then(|| enc(&params.delimiter, url)),
        max_keys: params.max_keys,
        is_truncated: page.truncated,
        encoding_type: url.then_some("url"),
        contents: page
            .objects
            .iter()
            .map(|m| xml::ContentsXml {
                key: enc(&m.key, url),
                last_modified: iso8601_ms(m.last_modified_ms),
                etag: format!("\"{}\"", m.etag),
                size: m.size,
                owner: show_owner.then(|| xml::Owner::of(&owner)),
                storage_class: "STANDARD",
            })
            .collect(),
        common_prefixes: page.prefixes.iter().map(|p| xml::CommonPrefixXml { prefix: enc(p, url) }).collect(),
        ..Default::default()
    };
    if v2 {
        doc.key_count = Some(key_count);
        doc.continuation_token = ctx.query.get("continuation-token").map(str::to_string);
        doc.start_after = ctx.query.get("start-after").map(|s| enc(s, url));
        doc.next_continuation_token = page.resume_after.as_deref().map(encode_token);
    } else {
        doc.marker = Some(enc(ctx.query.get("marker").unwrap_or(""), url));
        if page.truncated {
            // NextMarker: the last key or common prefix returned.
            let last = page.prefixes.last().into_iter().chain(page.objects.last().map(|m| &m.key)).max();
            doc.next_marker = last.map(|k| enc(k, url));
        }
    }
    xml_response(xml::to_xml("ListBucketResult", &doc)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Node = BTreeMap<String, (u64, bool)>;

    /// An in-memory node: key -> (hlc, tombstone), listed like blobd (sorted, rolled up
    /// per node when a delimiter is given, `limit` entries per page).
    fn list_node(node: &Node, prefix: &str, delimiter: &str, start: &str, limit: usize) -> pb::ListResponse {
        let mut entries: Vec<pb::ListEntry> = Vec::new();
        let mut truncated = false;
        for (k, (hlc, tomb)) in node.range::<str, _>((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                continue;
            }
            let (key, is_prefix) = match (!delimiter.is_empty()).then(|| k[prefix.len()..].find(delimiter)).flatten() {
                Some(i) => (k[..prefix.len() + i + delimiter.len()].to_string(), true),
                None => (k.clone(), false),
            };
            if entries.last().is_some_and(|e| e.is_prefix && e.meta.as_ref().unwrap().key == key) {
                continue;
            }
            if key.as_str() <= start {
                continue;
            }
            if entries.len() == limit {
                truncated = true;
                break;
            }
            entries.push(pb::ListEntry {
                meta: Some(pb::ObjectMeta {
                    key,
                    version: Some(pb::Version { hlc: *hlc, writer: "g".into() }),
                    tombstone: *tomb && !is_prefix,
                    size: *hlc,
                    ..Default::default()
                }),
                is_prefix,
            });
        }
        pb::ListResponse { entries, truncated }
    }

    fn params(prefix: &str, delimiter: &str, max_keys: usize, start: &str) -> ListParams {
        ListParams {
            prefix: prefix.into(),
            delimiter: delimiter.into(),
            max_keys,
            start: start.into(),
            url_encode: false,
        }
    }

    async fn list_all(
        nodes: &[Node],
        prefix: &str,
        delimiter: &str,
        max_keys: usize,
    ) -> (Vec<String>, Vec<String>, usize) {
        let mut start = String::new();
        let (mut keys, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
        for _ in 0..10_000 {
            let p = params(prefix, delimiter, max_keys, &start);
            let page = collect_page(nodes.len(), &p, |i, s| {
                let r = list_node(&nodes[i], prefix, delimiter, &s, 7);
                async move { Ok(r) }
            })
            .await
            .unwrap();
            pages += 1;
            assert!(page.objects.len() + page.prefixes.len() <= max_keys);
            keys.extend(page.objects.iter().map(|m| m.key.clone()));
            prefixes.extend(page.prefixes);
            match page.resume_after {
                Some(r) => start = decode_token(&encode_token(&r)).unwrap(),
                None => break,
            }
        }
        (keys, prefixes, pages)
    }

    /// Three nodes, each holding a replica subset (rf=2), with some overwritten and some
    /// deleted keys, 2,500 keys in total.
    fn cluster() -> (Vec<Node>, Vec<String>) {
        let mut nodes = vec![BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
        let mut live = Vec::new();
        for i in 0..2500u64 {
            let key = format!("dir{}/sub{}/obj{:05}", i % 5, i % 3, i);
            let a = (i % 3) as usize;
            let b = ((i + 1) % 3) as usize;
            if i % 10 == 0 {
                // Deleted: the newer tombstone on one replica hides the older value.
                nodes[a].insert(key.clone(), (1, false));
                nodes[b].insert(key.clone(), (2, true));
            } else if i % 7 == 0 {
                // Stale replica: the newest version wins.
                nodes[a].insert(key.clone(), (5, false));
                nodes[b].insert(key.clone(), (9, false));
                live.push(key);
            } else {
                nodes[a].insert(key.clone(), (3, false));
                nodes[b].insert(key.clone(), (3, false));
                live.push(key);
            }
        }
        live.sort();
        (nodes, live)
    }

    #[tokio::test]
    async fn merge_over_pages_without_delimiter() {
        let (nodes, live) = cluster();
        let (keys, prefixes, pages) = list_all(&nodes, "", "", 1000).await;
        assert!(prefixes.is_empty());
        assert_eq!(keys, live);
        assert_eq!(pages, live.len().div_ceil(1000));
        let (keys, _, _) = list_all(&nodes, "", "", 33).await;
        assert_eq!(keys, live);
    }

    #[tokio::test]
    async fn merge_with_delimiter_and_prefix() {
        let (nodes, live) = cluster();
        let (keys, prefixes, _) = list_all(&nodes, "", "/", 2).await;
        assert!(keys.is_empty());
        assert_eq!(prefixes, vec!["dir0/", "dir1/", "dir2/", "dir3/", "dir4/"]);
        let (keys, prefixes, _) = list_all(&nodes, "dir2/", "/", 1).await;
        assert!(keys.is_empty());
        assert_eq!(prefixes, vec!["dir2/sub0/", "dir2/sub1/", "dir2/sub2/"]);
        let (keys, prefixes, _) = list_all(&nodes, "dir2/sub1/", "/", 17).await;
        assert!(prefixes.is_empty());
        let want: Vec<_> = live.iter().filter(|k| k.starts_with("dir2/sub1/")).cloned().collect();
        assert_eq!(keys, want);
    }

    #[tokio::test]
    async fn newest_version_wins_and_tombstones_hide() {
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        a.insert("k1".to_string(), (1, false));
        b.insert("k1".to_string(), (2, false));
        a.insert("k2".to_string(), (3, false));
        b.insert("k2".to_string(), (4, true));
        b.insert("k3".to_string(), (1, false));
        let nodes = [a, b];
        let p = params("", "", 1000, "");
        let page = collect_page(2, &p, |i, s| {
            let r = list_node(&nodes[i], "", "", &s, 1);
            async move { Ok(r) }
        })
        .await
        .unwrap();
        let got: Vec<_> = page.objects.iter().map(|m| (m.key.as_str(), m.size)).collect();
        assert_eq!(got, vec![("k1", 2), ("k3", 1)]);
        assert!(!page.truncated);
        assert_eq!(page.resume_after, None);
    }

    #[tokio::test]
    async fn max_keys_zero_and_errors() {
        let (nodes, _) = cluster();
        let p = params("", "", 0, "");
        let page = collect_page(3, &p, |i, s| {
            let r = list_node(&nodes[i], "", "", &s, 5);
            async move { Ok(r) }
        })
        .await
        .unwrap();
        assert!(page.objects.is_empty());
        assert!(!page.truncated);
        let p = params("", "", 1, "");
        let err = collect_page(3, &p, |_, _| async { Err(S3Error::ServiceUnavailable) }).await;
        assert!(matches!(err, Err(S3Error::ServiceUnavailable)));
        assert!(decode_token("!!!").is_err());
    }
}
