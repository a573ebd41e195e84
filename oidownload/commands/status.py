"""`oidownload status`: counts per status, bytes, rate and ETA across every journal."""

from __future__ import annotations

from pathlib import Path

import click

from oidownload.commands.group import boundary, main
from oidownload.commands.options import opt, state_dir_option
from oidownload.core.exits import ExitCode


@main.command()
@click.argument("out")
@opt("--json", "as_json", scope="status", is_flag=True, default=False, help="One JSON object instead of tables.")
@state_dir_option
@boundary
def status(out: str, as_json: bool, state_dir: Path | None) -> int:
    """Counts per status, bytes, rate and ETA across every journal in OUT.

    Works while runs are in progress (each cluster task is shown) and after they end.
    """
    import json

    from oidownload.core.records import STATUS_MEANING, checked_words
    from oidownload.engine.progress import human_bytes, human_seconds
    from oidownload.provenance.lock import lock_status
    from oidownload.state.reader import StateDir
    from oidownload.state.report import out_status

    st = out_status(out, state_dir)
    lock = lock_status(out, state_dir)
    masks = StateDir.open(out, state_dir).mask_counts()  # masks (issue 22): by status, {} without --masks
    if as_json:
        click.echo(json.dumps({**st.as_json(), "lock": lock, **({"masks": masks} if masks else {})}))
        return ExitCode.OK
    click.echo(f"{out}: {st.total} images journaled, {human_bytes(sum(c.bytes for c in st.counts.values()))} fetched")
    click.echo(f"{'status':<15}{'count':>10}{'bytes':>12}  meaning")
    for name, c in st.counts.items():
        meaning = {s.value: m for s, m in STATUS_MEANING.items()}.get(name, "")
        click.echo(f"{name:<15}{c.n:>10}{human_bytes(c.bytes):>12}  {meaning}")
    if st.sources:
        click.echo("written: " + "; ".join(checked_words(st.sources, st.unchecked)))
    if masks:
        click.echo("masks: " + ", ".join(f"{n} {k}" for k, n in sorted(masks.items())))
    click.echo(f"{'shard':<12}{'state':<10}{'done':>10}{'planned':>10}{'rate/s':>9}{'ETA':>9}  host")
    for s in st.shards:
        planned = "?" if s.planned is None else str(s.planned)
        rate = "" if s.rate is None or s.state != "running" else f"{s.rate:.1f}"
        click.echo(f"{s.tag:<12}{s.state:<10}{s.done:>10}{planned:>10}{rate:>9}{human_seconds(s.eta) if s.eta is not None else '':>9}  {s.host} {s.pid or ''}")
        if s.hosts:
            click.echo(f"{'':<12}{s.hosts}")
    if any(s.state == "running" for s in st.shards):
        click.echo(f"total rate {st.rate:.1f} images/s, ETA {human_seconds(st.eta)}")
    if lock is not None:
        click.echo(f"lock: {lock}")
    return ExitCode.OK
