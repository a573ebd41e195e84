"""--per-host auto against fixed limits, on one host and on many (issue 24's targets).

Each case runs `oidownload download` (through `oidownload.bench.run_scenario`: the
origin in this process, the download measured as a child) with several flag sets,
alternating them run by run, and prints one JSON line per run and a markdown table
of medians:

    sweep-20/100/300  one host, 20/100/300 ms latency (jitter 0.1), thumbnails (~100 KB)
                      kept as they are: fixed --per-host 16..512 (--concurrency
                      max(64, N)) against the defaults (auto); auto's share of the best
    cap40             one host, 100 ms, a 40 MB/s link shared by all connections
    slowdown24        one host, 100 ms, 503 SlowDown above 24 being served: mean and
                      peak in flight at the server, share of requests refused, all ok?
    hosts8            the Flickr-like mix of `oidownload bench` (light originals resized
                      to 640) spread over 8 hosts, 50 ms (jitter 0.5): the old defaults
                      (--per-host 16 --concurrency 64) against the new; peak per host

    python benchmarks/perhost.py --n 3000 --runs 3
    python benchmarks/perhost.py --n 300 --runs 1 --cases sweep-100,slowdown24   # a smoke run

With --before DIR (the package of an older commit: `git archive <commit> oidownload | tar -x -C DIR`) each
case also runs that code with its defaults, first in each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from oidownload.bench import Load, Scenario, run_scenario

FIXED = (16, 32, 64, 128, 256, 512)
OLD_DEFAULTS = ("--per-host", "16", "--concurrency", "64")


def fixed(n: int) -> tuple[str, ...]:
    return ("--per-host", str(n), "--concurrency", str(max(64, n)))


def cases(n: int, limits: tuple[int, ...] = FIXED) -> dict[str, list[tuple[str, Scenario]]]:
    thumbs = Scenario("thumbs", mix="light", source="thumbnail", resize=None, fmt="keep", n=n, jitter=0.1)
    out: dict[str, list[tuple[str, Scenario]]] = {}
    for ms in (20, 100, 300):
        base = Scenario(**{**thumbs.__dict__, "name": f"sweep-{ms}", "latency_ms": float(ms)})
        out[f"sweep-{ms}"] = [(f"fixed {k}", _with(base, fixed(k))) for k in limits] + [("auto", base)]
    at100 = Scenario(**{**thumbs.__dict__, "latency_ms": 100.0})
    out["cap40"] = [("auto", _with(at100, (), name="cap40", load=Load(bandwidth_mbps=40.0)))]
    out["slowdown24"] = [("auto", _with(at100, (), name="slowdown24", load=Load(max_in_flight=24)))]
    flickr = Scenario("hosts8", mix="light", source="original", resize=640, fmt="jpeg", n=n, latency_ms=50.0,
                      jitter=0.5, load=Load(hosts=8))
    out["hosts8"] = [("old defaults", _with(flickr, OLD_DEFAULTS)), ("auto", flickr)]
    return out


def _with(scn: Scenario, args: tuple[str, ...], **kw: Any) -> Scenario:
    return Scenario(**{**scn.__dict__, "extra_args": args, **kw})


FIGURES = ("images_per_s", "mb_per_s", "cpu_ms_per_image", "main_cpu_ms_per_image", "peak_tree_rss_mb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="images per run [default: 3000]")
    ap.add_argument("--runs", type=int, default=3, help="runs of each flag set, alternated [default: 3]")
    ap.add_argument("--cases", default="sweep-20,sweep-100,sweep-300,cap40,slowdown24,hosts8",
                    help="comma-separated, from: sweep-20 sweep-100 sweep-300 cap40 slowdown24 hosts8")
    ap.add_argument("--fixed", default=",".join(map(str, FIXED)),
                    help=f"the fixed --per-host values of the sweeps [default: {','.join(map(str, FIXED))}]")
    ap.add_argument("--before", metavar="DIR",
                    help="a folder holding the package before (git archive <commit> oidownload | tar -x -C DIR): "
                         "its defaults are run as one more flag set of every case")
    args = ap.parse_args()
    table = cases(args.n, tuple(int(k) for k in args.fixed.split(",") if k.strip()))
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in table]
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(unknown)}")
    lines = ["| case | flags | images/s | MB/s | CPU ms/image (main process) | tree RSS MB "
             "| server: peak / mean in flight per host | refused | ok |", "|---|---|---|---|---|---|---|---|---|"]
    for case in chosen:
        flag_sets = [(label, scn, None) for label, scn in table[case]]
        if args.before:
            auto = next(scn for label, scn in table[case] if label == "auto")
            flag_sets.insert(0, ("before: defaults", auto, args.before))
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in flag_sets}
        for run in range(args.runs):
            for label, scn, code in flag_sets:
                r = run_scenario(scn, log=lambda m: print(m, file=sys.stderr), code=code)
                results[label].append(r)
                print(json.dumps({"case": case, "flags": label, "run": run, **{k: r[k] for k in FIGURES},
                                  "ok": r["ok"], "server": r["server"], "hosts": r["hosts"][:2]}), flush=True)
        best = max((statistics.median(x["images_per_s"] for x in rs) for label, rs in results.items()
                    if label.startswith("fixed") or label == "old defaults"), default=None)
        for label, rs in results.items():
            med = {k: statistics.median(x[k] for x in rs) for k in FIGURES}
            peak = max(x["server"]["peak_in_flight_per_host"] for x in rs)
            mean = statistics.median(x["server"]["mean_in_flight_per_host"] for x in rs)
            refused = statistics.median(x["server"]["refused"] / max(1, x["server"]["requests"]) for x in rs)
            ok = all(x["ok"] == args.n for x in rs)
            share = f" ({med['images_per_s'] / best:.0%} of the best other)" if best and label == "auto" else ""
            lines.append(f"| {case} | {label} | {med['images_per_s']:.0f}{share} | {med['mb_per_s']:.1f} | "
                         f"{med['cpu_ms_per_image']:.2f} ({med['main_cpu_ms_per_image']:.2f}) | {med['peak_tree_rss_mb']:.0f} | {peak} / {mean:.1f} | {refused:.2%} | {'all' if ok else 'NO'} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
