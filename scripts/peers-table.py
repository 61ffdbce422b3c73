#!/usr/bin/env python3
"""scripts/peers-table.py OUT: the table and charts of a scripts/bench-peers run.

Reads OUT/runs/<tier>-<round>-<peer>/loadgen/summary.json (and
exit-status.txt), writes OUT/summary.json (every run; medians per tier and
peer over the runs that held every session with no error and every
heartbeat answered), OUT/table.md and the charts OUT/*.svg. Standard
library only.
"""
import json
import pathlib
import statistics
import sys
from xml.sax.saxutils import escape

PROTOCOL = {"c10m-epoll": "resp", "c10m-uring": "resp", "tokio": "resp", "redis": "resp",
            "nginx": "http", "memcached": "memcache", "mosquitto": "mqtt 3.1.1"}
FIGURES = [  # key, column title, digits
    ("rss_bytes_per_session", "B/session marginal (RSS growth)", 1),
    ("pss_bytes_per_session_all_in", "B/session all-in (PSS)", 1),
    ("server_cpu_us_per_heartbeat", "server CPU µs/heartbeat", 2),
    ("connect_rate_per_s", "connect rate /s", 0),
    ("rtt_us_hold_p50", "RTT p50 µs (hold)", 0),
    ("rtt_us_hold_p99", "RTT p99 µs (hold)", 0),
]


def run_figures(d):
    s = json.loads((d / "loadgen" / "summary.json").read_text())
    srv = s.get("server", {})
    hb = s["heartbeats"]
    target = s["sessions"]["target"]
    r = {
        "sessions_target": target,
        "sessions_held": s["sessions"]["held_at_end"],
        "errors": s["errors"]["total"],
        "first_errors": s.get("first_errors", {}),
        "heartbeats_sent": hb["sent"],
        "heartbeats_answered": hb["answered"],
        "heartbeats_unanswered": hb.get("unanswered", hb["sent"] - hb["answered"]),
        "exit_status": int((d / "exit-status.txt").read_text().strip() or -1),
        "rss_bytes_per_session": srv.get("rss_bytes_per_session"),
        "pss_bytes_per_session_all_in": srv.get("pss_bytes_per_session_all_in"),
        "server_cpu_us_per_heartbeat": srv.get("cpu_us_per_heartbeat"),
        "server_processes": srv.get("processes"),
        "heartbeats_in_cpu_window": srv.get("heartbeats_in_window"),
        "connect_rate_per_s": s["connect"].get("ramp_rate_per_s"),
        "rtt_us_p50": s["rtt_us"]["p50"],
        "rtt_us_p99": s["rtt_us"]["p99"],
        "rtt_us_count": s["rtt_us"]["count"],
        # With every session open, in the hold: the ramp's connect burst
        # (both CPUs busy) left out.
        "rtt_us_hold_p50": s.get("rtt_us_full_hold", {}).get("p50"),
        "rtt_us_hold_p99": s.get("rtt_us_full_hold", {}).get("p99"),
    }
    r["clean"] = (r["sessions_held"] == target and r["errors"] == 0
                  and r["heartbeats_unanswered"] == 0 and r["exit_status"] == 0)
    return r


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}" if digits else f"{round(v):,}"


def bar_chart(path, title, unit, rows):
    """A horizontal bar chart: rows = [(label, value)], one SVG."""
    rows = [(label, v) for label, v in rows if v is not None]
    if not rows:
        return
    width, left, right, bar, gap, top = 760, 220, 90, 22, 8, 48
    height = top + len(rows) * (bar + gap) + 30
    vmax = max(v for _, v in rows) or 1
    scale = (width - left - right) / vmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="DejaVu Sans, sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="16">{escape(title)}</text>']
    for i, (label, v) in enumerate(rows):
        y = top + i * (bar + gap)
        color = "#1f77b4" if label.startswith("c10m") else "#999999"
        out.append(f'<text x="{left - 8}" y="{y + bar * 0.72}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{max(v * scale, 1):.1f}" height="{bar}" fill="{color}"/>')
        out.append(f'<text x="{left + v * scale + 6:.1f}" y="{y + bar * 0.72}">{v:,.1f} {escape(unit)}</text>')
    out.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{height - 26}" stroke="black"/>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    out = pathlib.Path(sys.argv[1])
    runs = []
    for d in sorted((out / "runs").iterdir()):
        if not (d / "loadgen" / "summary.json").exists():
            print(f"peers-table: {d.name} left no summary (see {d}/loadgen.log)", file=sys.stderr)
            continue
        tier, rnd, peer = d.name.split("-", 2)
        r = {"tier": tier, "round": int(rnd), "peer": peer, "protocol": PROTOCOL.get(peer, "?")}
        r.update(run_figures(d))
        runs.append(r)
    tiers = []
    for tier in ("small", "big"):
        peers = list(dict.fromkeys(r["peer"] for r in runs if r["tier"] == tier and r["round"] == 1))
        if not peers:
            continue
        rows = []
        for peer in peers:
            mine = [r for r in runs if r["tier"] == tier and r["peer"] == peer]
            clean = [r for r in mine if r["clean"]]
            med = {k: median(r[k] for r in clean) for k, _, _ in FIGURES}
            rows.append({"peer": peer, "protocol": PROTOCOL.get(peer, "?"),
                         "sessions": mine[0]["sessions_target"], "runs": len(mine), "clean_runs": len(clean),
                         "server_processes": median(r["server_processes"] for r in mine),
                         "median": med})
        tiers.append({"tier": tier, "rows": rows})
    command = (out / "command.txt").read_text() if (out / "command.txt").exists() else ""
    (out / "summary.json").write_text(json.dumps({"command": command, "runs": runs, "tiers": tiers},
                                                 indent=2) + "\n")

    lines = ["# Peers: c10m-server against the servers people run", "",
             "Generated by `scripts/peers-table.py` from the runs of `scripts/bench-peers`"
             " (command and host in `command.txt`, every run in `summary.json`).",
             "Medians over the clean runs (every session held, no error, every heartbeat answered);"
             " a peer with no clean run shows n/a.", ""]
    for t in tiers:
        n = t["rows"][0]["sessions"]
        lines += [f"## {t['tier']}: {n:,} sessions", "",
                  "| peer | protocol | clean runs | server processes | "
                  + " | ".join(title for _, title, _ in FIGURES) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---:" for _ in FIGURES) + " |"]
        for row in t["rows"]:
            lines.append(f"| {row['peer']} | {row['protocol']} | {row['clean_runs']} / {row['runs']} | "
                         f"{fmt(row['server_processes'], 0)} | "
                         + " | ".join(fmt(row["median"][k], dg) for k, _, dg in FIGURES) + " |")
        lines.append("")
    unclean = [r for r in runs if not r["clean"]]
    if unclean:
        lines += ["## Runs left out", ""]
        for r in unclean:
            lines.append(f"- {r['tier']} round {r['round']} {r['peer']}: exit {r['exit_status']}, held "
                         f"{r['sessions_held']:,} / {r['sessions_target']:,}, errors {r['errors']}, unanswered "
                         f"{r['heartbeats_unanswered']} {json.dumps(r['first_errors'])[:300]}")
        lines.append("")
    (out / "table.md").write_text("\n".join(lines))

    for key, title, unit, name in [
        ("pss_bytes_per_session_all_in", "All-in user memory per session (PSS)", "B", "bytes-per-session.svg"),
        ("rss_bytes_per_session", "Marginal user memory per session (RSS growth)", "B", "marginal-bytes.svg"),
        ("server_cpu_us_per_heartbeat", "Server CPU per heartbeat (one core)", "µs", "cpu-per-heartbeat.svg"),
        ("rtt_us_hold_p99", "RTT p99 with every session open, in the hold", "µs", "rtt-p99.svg"),
    ]:
        rows = [(f"{row['peer']} ({t['tier']})", row["median"][key]) for t in tiers for row in t["rows"]]
        bar_chart(out / name, title, unit, rows)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
