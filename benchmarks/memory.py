"""Memory of the main process over many rows that all fail fast: N rows of 404s from a
minimal local server (raw asyncio on loopback, keep-alive, an empty 404 for every
path). The main process must stay flat in the number of rows; this prints its peak RSS
(sampled from outside every 50 ms) for each N asked, as JSON lines.

With --hosts H the rows spread over H hosts, the loopback addresses 127.0.0.1,
127.0.0.2, ... (the server listens on each: H sockets, so H is bounded by the open
file limit); with --refused nothing listens and every row fails with a refused
connection, as fast, so H may be as large as N. Per-host state must stay flat too.

    python benchmarks/memory.py --rows 200000 --rows 2000000
    python benchmarks/memory.py --rows 200000 --hosts 5000
    python benchmarks/memory.py --rows 200000 --hosts 200000 --refused

Everything is generated into a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from oidownload.bench import measure
from oidownload.inputs.rows import V3_COLUMNS

_ANSWER = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nContent-Type: text/plain\r\n\r\n"
_FIRST = int(ipaddress.IPv4Address("127.0.0.1"))


def host(k: int) -> str:
    """The k-th loopback address, from 127.0.0.1."""
    return str(ipaddress.IPv4Address(_FIRST + k))


class NotFoundServer:
    """Answers every request with an empty 404 and keeps the connection open."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.requests = 0

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")
                self.requests += 1
                w.write(_ANSWER)
                await w.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            w.close()

    def start(self, hosts: int) -> NotFoundServer:
        async def up() -> None:
            first = await asyncio.start_server(self._serve, host(0), 0, backlog=1024)
            self.port = first.sockets[0].getsockname()[1]
            for k in range(1, hosts):
                await asyncio.start_server(self._serve, host(k), self.port, backlog=64)

        threading.Thread(target=self.loop.run_forever, daemon=True, name="404").start()
        asyncio.run_coroutine_threadsafe(up(), self.loop).result(120)
        return self


def write_rows(path: Path, n: int, port: int, hosts: int = 1, seed: int = 7) -> None:
    """n valid V3 rows whose URLs point at `hosts` loopback addresses, in turn."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(V3_COLUMNS) + "\n")
        for k in range(n):
            i = f"{rng.getrandbits(64):016x}"
            base = f"http://{host(k % hosts)}:{port}/o/"
            f.write(f"{i},train,{base}{i}_o.jpg,https://www.flickr.com/photos/x/{i[:8]},"
                    "https://creativecommons.org/licenses/by/2.0/,https://www.flickr.com/people/x/,"
                    f"Some Author,A title of typical length,123456,AAAAAAAAAAAAAAAAAAAAAA==,{base}{i}_z.jpg\n")


def run(rows: int, hosts: int, port: int, server: NotFoundServer | None, tmp: Path,
        extra: list[str]) -> dict[str, object]:
    csv_path = tmp / f"images-{rows}.csv"
    write_rows(csv_path, rows, port, hosts)
    out = tmp / f"out-{rows}-{hosts}"
    before = server.requests if server else 0
    cmd = [sys.executable, "-m", "oidownload", "download", str(csv_path), "-o", str(out),
           "--progress", "none", "--log-format", "json", "--format", "keep", "--retries", "0", *extra]
    m = measure(cmd)
    if m.exit_code != 0:
        raise SystemExit(f"download failed ({m.exit_code}): {m.stderr[-2000:]}")
    csv_path.unlink()
    return {
        "rows": rows, "hosts": hosts, "requests": (server.requests - before) if server else None,
        "wall_s": round(m.wall_s, 1), "cpu_s": round(m.cpu_s, 1), "rows_per_s": round(rows / m.wall_s),
        "peak_rss_mb": round(m.peak_rss_mb, 1), "peak_tree_rss_mb": round(m.peak_tree_rss_mb, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="rows of 404s (repeatable) [default: 200000]")
    ap.add_argument("--hosts", type=int, default=1, help="loopback addresses the rows spread over [default: 1]")
    ap.add_argument("--refused", action="store_true", help="no server: every row is a refused connection")
    ap.add_argument("--download-arg", action="append", default=[], help="passed on to download (repeatable)")
    args = ap.parse_args()
    server = None if args.refused else NotFoundServer().start(args.hosts)
    port = server.port if server else 9  # discard: nothing listens there on loopback
    with tempfile.TemporaryDirectory(prefix="oidl-memory-") as d:
        for n in args.rows or [200_000]:
            result = {"date": time.strftime("%Y-%m-%d"), "refused": args.refused,
                      **run(n, args.hosts, port, server, Path(d), args.download_arg)}
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
