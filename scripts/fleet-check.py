#!/usr/bin/env python3
"""Checks that OUT/merged is the whole of a sharded run's OUT/shard-0..K-1.

usage: scripts/fleet-check.py [--loadgen BIN] OUT K

Written apart from the Rust merge, so that it checks the merge rather than
repeating it:
- the shards: K summaries, config.shard.index 0..K-1 once each, all of one
  run (same count and total sessions), and the merge says it is complete;
- counts: every count of the merged summary equals the sum of the shards';
- histograms: the merged rtt and connect interval logs, dumped bucket by
  bucket (`c10m-loadgen hlog`), equal the bucket-wise sums of the shards'
  dumps, so every sample of every shard is in the merge exactly once;
- every session of the run was held at the end;
- the ramps: every shard started within 50 ms of --start-at and of each
  other, and the merged start.spread_ms says so.
Prints one line per check; exits 1 if any fails.
"""
import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

START_WINDOW_MS = 50.0

COUNTS = [
    "sessions/target",
    "sessions/held_at_end",
    "sessions/closed_planned",
    "connect/ok",
    "connect/started",
    "heartbeats/sent",
    "heartbeats/answered",
    "heartbeats/unanswered",
    "rtt_us/count",
]


def pointer(doc, path):
    for part in path.split("/"):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def buckets(loadgen, hlog):
    text = subprocess.run(
        [loadgen, "hlog", str(hlog)], check=True, capture_output=True, text=True
    ).stdout
    lines = text.strip().splitlines()
    if not lines or lines[0] != "value_us,count":
        raise ValueError(f"{hlog}: unexpected hlog dump header {lines[:1]}")
    out = Counter()
    for line in lines[1:]:
        value, count = line.split(",")
        out[int(value)] += int(count)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", default="c10m-loadgen")
    ap.add_argument("out", type=Path)
    ap.add_argument("k", type=int)
    a = ap.parse_args()
    results = []

    def check(name, ok, detail):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")

    shards = []
    for i in range(a.k):
        path = a.out / f"shard-{i}" / "summary.json"
        try:
            shards.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            check(f"shard {i} summary", False, f"{path}: {e}")
    merged_path = a.out / "merged" / "summary.json"
    try:
        merged = json.loads(merged_path.read_text())
    except (OSError, ValueError) as e:
        check("merged summary", False, f"{merged_path}: {e}")
        return 1
    if len(shards) != a.k:
        return 1

    indices = sorted(pointer(s, "config/shard/index") for s in shards)
    runs = {(pointer(s, "config/shard/count"), pointer(s, "config/shard/total_sessions")) for s in shards}
    check(
        "shards",
        indices == list(range(a.k)) and runs == {(a.k, pointer(merged, "sessions/target"))}
        and pointer(merged, "shards/complete") is True,
        f"indices {indices}, (count, total sessions) {sorted(runs)}, merge complete: "
        f"{pointer(merged, 'shards/complete')}",
    )

    for path in COUNTS:
        values = [pointer(s, path) for s in shards]
        got = pointer(merged, path)
        ok = None not in values and got == sum(values)
        check(f"sum {path}", ok, f"merged {got} = {' + '.join(map(str, values))}")
    kinds = set()
    for s in shards:
        kinds |= set((s.get("errors") or {}).keys())
    for kind in sorted(kinds):
        values = [(s.get("errors") or {}).get(kind, 0) for s in shards]
        got = (merged.get("errors") or {}).get(kind)
        check(f"sum errors/{kind}", got == sum(values), f"merged {got}, shards {values}")

    for name in ["rtt", "connect"]:
        try:
            want = Counter()
            for i in range(a.k):
                want.update(buckets(a.loadgen, a.out / f"shard-{i}" / f"{name}.hlog"))
            got = buckets(a.loadgen, a.out / "merged" / f"{name}.hlog")
        except (OSError, ValueError, subprocess.CalledProcessError) as e:
            check(f"histogram {name}", False, str(e))
            continue
        differ = sorted(v for v in set(want) | set(got) if want[v] != got[v])
        check(
            f"histogram {name}",
            not differ and sum(got.values()) > 0,
            f"{sum(got.values())} samples in {len(got)} buckets, the shards' sum "
            f"{sum(want.values())}; buckets that differ: {differ[:5]}",
        )

    target = pointer(merged, "sessions/target")
    held = pointer(merged, "sessions/held_at_end")
    check("every session held", held == target and target > 0, f"{held} of {target}")

    epochs = [pointer(s, "start/epoch_unix_ms") for s in shards]
    late = [pointer(s, "start/late_ms") for s in shards]
    if None in epochs or None in late:
        check("ramps aligned", False, f"a shard has no start time: epochs {epochs}, late {late}")
    else:
        spread = max(epochs) - min(epochs)
        check(
            "ramps aligned",
            spread < START_WINDOW_MS and all(abs(x) < START_WINDOW_MS for x in late),
            f"spread {spread:.3f} ms (merged says {pointer(merged, 'start/spread_ms')}), "
            f"late {', '.join(f'{x:.3f}' for x in late)} ms; window {START_WINDOW_MS:.0f} ms",
        )
        merged_spread = pointer(merged, "start/spread_ms")
        check(
            "merged start",
            merged_spread is not None and abs(merged_spread - spread) < 0.01,
            f"start.spread_ms {merged_spread}",
        )

    failed = results.count(False)
    print(f"fleet-check: {len(results) - failed} of {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
