#!/usr/bin/env python3
"""Against the compose stack's Prometheus: wait (at most SECS) until it scrapes TARGETS
targets and every one is up, then evaluate every query of the Grafana dashboard and fail on
any Prometheus refuses (bad PromQL), printing how many returned data.

  check_prometheus.py PROMETHEUS_URL DASHBOARD_JSON TARGETS SECS
"""
import json
import sys
import time
import urllib.parse
import urllib.request


def api(base, path, **params):
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 carries Prometheus' JSON error
        return json.load(e)


def exprs(dashboard):
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def main():
    base, dash_path, want, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + secs
    while True:
        try:
            active = api(base, "targets")["data"]["activeTargets"]
        except Exception:  # noqa: BLE001 - not up yet
            active = []
        up = [t for t in active if t["health"] == "up"]
        if len(active) == want and len(up) == want:
            break
        if time.monotonic() > deadline:
            for t in active:
                print(f"target {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}", file=sys.stderr)
            print(f"{len(up)} of {len(active)} targets up, expected {want}", file=sys.stderr)
            return 1
        time.sleep(1)
    jobs = sorted({t["labels"]["job"] for t in up})
    print(f"prometheus: {want} targets up ({', '.join(jobs)})")
    bad, with_data = [], 0
    queries = exprs(json.load(open(dash_path)))
    for title, expr in queries:
        r = api(base, "query", query=expr)
        if r.get("status") != "success":
            bad.append(f"{title}: {expr}: {r.get('error')}")
        elif r["data"]["result"]:
            with_data += 1
    for b in bad:
        print(f"refused: {b}", file=sys.stderr)
    print(f"dashboard: {len(queries)} queries evaluated, {len(bad)} refused, {with_data} with data")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
