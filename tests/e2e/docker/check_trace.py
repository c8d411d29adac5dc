#!/usr/bin/env python3
"""Read the OTLP sink's span lines (JSON, one per span) on stdin and check that one trace
rooted at the gateway's OPERATION span holds spans from every one of SERVICES, each span's
parent a span of the same trace (the root's parent empty). Prints that trace as a tree.

  docker logs SINK | check_trace.py OPERATION SERVICE...
Exit 0 if such a trace exists, 1 if not (printing what the closest trace lacked).
"""
import collections
import json
import sys


def main():
    operation, services = sys.argv[1], set(sys.argv[2:])
    traces = collections.defaultdict(dict)
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            s = json.loads(line)
        except ValueError:
            continue
        traces[s["trace_id"]][s["span_id"]] = s
    best = None
    for tid, spans in traces.items():
        roots = [s for s in spans.values() if s["name"] == operation and s["service"] == "aether-gateway"]
        if not roots:
            continue
        seen = {s["service"] for s in spans.values()}
        orphans = [s for s in spans.values() if s["parent_span_id"] and s["parent_span_id"] not in spans]
        bad_root = [r for r in roots if r["parent_span_id"]]
        problems = [f"no span from {m}" for m in sorted(services - seen)]
        problems += [f"span {o['name']} ({o['service']}) has a parent outside the trace" for o in orphans]
        problems += ["the gateway span has a parent (expected a root)" for _ in bad_root]
        if not problems:
            print(f"trace {tid}: {len(spans)} spans from {', '.join(sorted(seen))}")
            children = collections.defaultdict(list)
            for s in spans.values():
                children[s["parent_span_id"]].append(s)

            def show(span, depth):
                print(f"  {'  ' * depth}{span['service']}: {span['name']}")
                for c in sorted(children[span["span_id"]], key=lambda c: (c["service"], c["name"])):
                    show(c, depth + 1)

            for r in roots:
                show(r, 0)
            return 0
        if best is None or len(problems) < len(best[1]):
            best = (tid, problems)
    if best is None:
        print(f"no trace with a gateway {operation} span among {len(traces)} traces", file=sys.stderr)
    else:
        print(f"closest trace {best[0]}: " + "; ".join(best[1]), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
