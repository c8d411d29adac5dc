#!/usr/bin/env python3
"""Check that every metric a Grafana dashboard queries is exported by some service.

Usage:
    python3 tests/e2e/check_metrics.py --dashboard DASHBOARD.json URL [URL...]
    python3 tests/e2e/check_metrics.py --dashboard DASHBOARD.json --list
    python3 tests/e2e/check_metrics.py --self-test

Each URL is a plain-HTTP Prometheus text endpoint (e.g. http://gateway:9001/metrics).
Every endpoint is fetched and parsed with prometheus_client's text parser (a fetch
or parse error fails the check, naming the URL). The names of all samples are
collected: sample names, not family names, since the parser strips `_total` from a
counter family's name while its samples keep the full `x_total`, and a histogram's
samples are `x_bucket` / `x_count` / `x_sum`.

The metric names are then extracted from the PromQL `expr` of every target of every
panel in the dashboard (rows' nested panels included). Extraction is lexical:
string literals, comments, Grafana variables, `{...}` label matchers, `[...]` ranges
and subqueries, `offset` durations, the label lists after by / without / on /
ignoring / group_left / group_right, and numbers are removed; what is left is
identifiers, of which those that are PromQL keywords, or are followed by `(`
(functions and aggregations), are not metric names.

Every referenced name must be among the collected sample names (on any endpoint).
Missing names are printed one per line and the exit status is 1; otherwise a
summary is printed and the exit status is 0.

`--self-test` runs the extractor on built-in expressions and checks the results.
Only the standard library and prometheus_client (for fetching mode) are needed.
"""

import argparse
import json
import re
import sys
import urllib.error
import urllib.request

# PromQL keywords and operators spelled as words (matched case-insensitively).
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}

# Aggregations and functions. Anything followed by `(` is skipped anyway; these are
# also never taken as metric names when written without a parenthesis.
FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "end", "exp", "first_over_time", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10",
    "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "tan", "tanh", "time", "timestamp", "vector", "year",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', re.S)
_COMMENT = re.compile(r"#[^\n]*")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"(?<![\w:])(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I
)
_OFFSET = re.compile(r"(?<![\w:])offset\s+-?[0-9a-zA-Z.]+", re.I)
_NUMBER = re.compile(
    r"(?<![\w:.])(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
)
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def extract_metric_names(expr):
    """The set of metric names a PromQL expression selects."""
    s = _STRING.sub('""', expr)  # first: strings may hold braces, '#', '$', ...
    s = _COMMENT.sub(" ", s)
    s = _GRAFANA_VAR.sub(" ", s)
    # Label matchers and ranges cannot nest in themselves once strings are gone, but
    # repeat to a fixed point to be safe about odd spacing and subqueries.
    for pattern in (_BRACES, _BRACKETS, _LABEL_LIST):
        prev = None
        while prev != s:
            prev, s = s, pattern.sub(" ", s)
    s = _OFFSET.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):  # a function or aggregation call
            continue
        if word.lower() in KEYWORDS or word in FUNCTIONS:
            continue
        names.add(word)
    return names


def iter_panels(panels):
    """Every panel, descending into rows (collapsed rows hold their panels)."""
    for panel in panels or []:
        yield panel
        yield from iter_panels(panel.get("panels"))


def dashboard_references(dashboard):
    """Map each referenced metric name to the titles of the panels using it."""
    refs = {}
    panels = list(iter_panels(dashboard.get("panels")))
    for legacy_row in dashboard.get("rows", []):  # pre-5.0 schema
        panels.extend(iter_panels(legacy_row.get("panels")))
    for panel in panels:
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not expr:
                continue
            for name in extract_metric_names(expr):
                refs.setdefault(name, []).append(panel.get("title", "?"))
    return refs


def fetch(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return resp.read().decode("utf-8")


def sample_names(text):
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
    return names


SELF_TESTS = [
    ("sum by (operation) (rate(gateway_requests_total[1m]))", {"gateway_requests_total"}),
    (
        'sum by (operation, status) (rate(gateway_requests_total{status=~"4..|5.."}[1m]))',
        {"gateway_requests_total"},
    ),
    (
        "histogram_quantile(0.99, sum by (le, operation) "
        "(rate(gateway_request_duration_seconds_bucket[5m])))",
        {"gateway_request_duration_seconds_bucket"},
    ),
    (
        "blobd_objects * on(instance) group_left(node_id, zone) blobd_node_info",
        {"blobd_objects", "blobd_node_info"},
    ),
    ("max(metad_raft_term)", {"metad_raft_term"}),
    ("metad_is_leader", {"metad_is_leader"}),
    # trailing `by`, offset, ignoring/group_right, recording-rule style name, bool, numbers
    (
        'sum(rate(a_total{x="{by} #not a comment", y!~\'b|c\'}[5m] offset 1h)) by (job) '
        "/ ignoring(kind) group_right b:rec:rate5m > bool 1e-3 or vector(0)",
        {"a_total", "b:rec:rate5m"},
    ),
    # Grafana variables, empty on(), keywords in upper case, comments
    (
        "rate(x_total[$__rate_interval]) AND ON() y_gauge # trailing comment mentions z\n",
        {"x_total", "y_gauge"},
    ),
    # subquery, without, topk with a parameter, escaped quote in a string
    (
        'topk(3, sum without (instance) (rate(http_requests_total{path!~"/a\\"b|c"}[10m:30s])))',
        {"http_requests_total"},
    ),
    # function arguments that are strings or numbers, @ modifier, Inf, hex
    (
        'label_replace(up, "dst", "$1", "instance", "(.*):.*") > -Inf '
        "unless clamp_min(foo @ start(), 0x1F) * 2.5",
        {"up", "foo"},
    ),
    # metric names that contain keyword/function words
    ("sum_total + rate_limited_total - on_disk_bytes", {"sum_total", "rate_limited_total", "on_disk_bytes"}),
    # group_left without a label list
    ("a * on(instance) group_left b", {"a", "b"}),
]


def self_test():
    failures = 0
    for expr, expected in SELF_TESTS:
        got = extract_metric_names(expr)
        if got != expected:
            failures += 1
            print(f"FAIL: {expr!r}\n  expected {sorted(expected)}\n  got      {sorted(got)}")
    if failures:
        print(f"self-test: {failures} of {len(SELF_TESTS)} cases failed")
        return 1
    print(f"self-test: {len(SELF_TESTS)} cases passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dashboard", help="Grafana dashboard JSON file")
    ap.add_argument("--self-test", action="store_true", help="check the PromQL name extractor and exit")
    ap.add_argument("--list", action="store_true", help="print the dashboard's metric names and exit")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-URL fetch timeout, seconds")
    ap.add_argument("urls", nargs="*", metavar="URL", help="/metrics endpoints (http://host:port/metrics)")
    args = ap.parse_args()

    if args.self_test:
        return self_test()
    if not args.dashboard:
        ap.error("--dashboard is required")

    with open(args.dashboard, encoding="utf-8") as f:
        refs = dashboard_references(json.load(f))
    if not refs:
        print(f"{args.dashboard}: no metric names found in any panel expr")
        return 1
    if args.list:
        for name in sorted(refs):
            print(name)
        return 0
    if not args.urls:
        ap.error("at least one URL is required")

    present = set()
    errors = 0
    for url in args.urls:
        if "://" not in url:
            url = "http://" + url
        try:
            text = fetch(url, args.timeout)
        except (urllib.error.URLError, OSError, RuntimeError, UnicodeDecodeError) as e:
            print(f"{url}: fetch failed: {e}")
            errors += 1
            continue
        try:
            present |= sample_names(text)
        except Exception as e:  # the parser raises ValueError and others on bad input
            print(f"{url}: parse failed: {type(e).__name__}: {e}")
            errors += 1
    if errors:
        print(f"{errors} of {len(args.urls)} endpoints could not be fetched or parsed")
        return 1

    missing = sorted(set(refs) - present)
    for name in missing:
        panels = ", ".join(sorted(set(refs[name])))
        print(f"missing: {name} (used by: {panels})")
    if missing:
        print(f"{len(missing)} of {len(refs)} metric names referenced are exported by no endpoint")
        return 1
    print(f"{len(refs)} metric names referenced, all present across {len(args.urls)} endpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
