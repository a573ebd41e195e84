"""A rerun with --masks (issue 22): the masks still owed for images already written
(fetched by an earlier run, with or without --masks; or whose mask failed for a reason
of the moment), fetched and framed by the image's journaled frame (its written size,
turn and crop), then written beside it. Images are not fetched again.

Runs after the rows, on the task's journal (its writer is idle by then). Each image's
masks are journaled as soon as they are written, so a kill loses at most the image in
hand. Only a local files output can take a mask after its image: a webdataset sample is
closed once written, and a store's objects are published by the run's sink; there the
owed masks are said, not fetched.
"""

from __future__ import annotations

import asyncio
import dataclasses

from oidownload.core.config import Config, OutputKind
from oidownload.core.errors import OidownloadError
from oidownload.core.records import MaskRef, Outcome, Status
from oidownload.engine.fetch import default_agent, make_session
from oidownload.engine.limits import ByteBudget, HostLimiter
from oidownload.engine.maskframe import frame_masks
from oidownload.engine.masks import MaskFetcher
from oidownload.engine.progress import Progress
from oidownload.sinks import Target, is_remote
from oidownload.state.journal import Journal, WrittenFrame

_CONCURRENCY = 16  # images whose masks are in hand at once


def owed(cfg: Config, journal: Journal) -> list[tuple[WrittenFrame, tuple[MaskRef, ...]]]:
    """Written images with wanted masks that are neither ok nor final (with
    --retry-failed: not ok) in the journal."""
    wanted = cfg.masks.wanted
    out = []
    for frame in journal.written_frames(wanted):
        refs = tuple(r for r in wanted.get(frame.image_id.lower(), ())
                     if (had := frame.masks.get(r.box_id)) is None
                     or (had[0] != Status.OK.value and (cfg.select.retry_failed or not had[1])))
        if refs:
            out.append((frame, refs))
    return out


def can_repair(cfg: Config) -> bool:
    return cfg.output.kind is OutputKind.FILES and not is_remote(cfg.output.out)


async def repair(cfg: Config, journal: Journal, target: Target, todo: list[tuple[WrittenFrame, tuple[MaskRef, ...]]],
                 progress: Progress, agent: str) -> int:
    """Fetches, frames and writes the owed masks; returns how many were written. A
    fatal error (a server that ignores Range) is raised once the images in hand end."""
    fatal: list[OidownloadError] = []
    budget = ByteBudget(cfg.run.max_bytes_in_flight)
    limiter = HostLimiter(cfg.net.host_ceiling, auto=cfg.net.per_host is None)
    fetcher = MaskFetcher(cfg, limiter, budget, fatal.append)
    gate = asyncio.Semaphore(_CONCURRENCY)
    written = 0

    async def one(session: object, frame: WrittenFrame, refs: tuple[MaskRef, ...]) -> None:
        nonlocal written
        async with gate:
            if fatal:
                return
            got = await fetcher.fetch(session, frame.subset, frame.image_id, refs)  # type: ignore[arg-type]
            if fatal:
                return
            members, outcomes = await asyncio.to_thread(
                frame_masks, got.got, (frame.width, frame.height), frame.orientation, frame.crop,
                cfg.image.keep_original)
            if members:
                try:
                    await asyncio.to_thread(target.place, frame.subset, frame.image_id, members)
                except OSError as exc:
                    outcomes = [dataclasses.replace(m, status=Status.WRITE_ERROR, detail=f"cannot write: {exc}"[:300])
                                if m.status is Status.OK else m for m in outcomes]
            image = Outcome(frame.image_id, Status.OK, subset=frame.subset, location=frame.location)
            journal.record_masks([(image, [*outcomes, *got.failed])])
            written += sum(m.status is Status.OK for m in outcomes)

    session = make_session(dataclasses.replace(cfg.net, user_agent=cfg.net.user_agent or agent))
    try:
        await asyncio.gather(*(one(session, f, r) for f, r in todo))
    finally:
        await session.close()
    if fatal:
        raise fatal[0]
    progress.log("masks", f"{written} mask(s) of {len(todo)} image(s) written earlier were fetched and written",
                 masks=written, images=len(todo))
    return written


def run_repair(cfg: Config, journal: Journal, target: Target, progress: Progress, shard_tag: str) -> None:
    """The repair phase of one run (a no-op without --masks or with nothing owed)."""
    if not cfg.masks.enabled:
        return
    todo = owed(cfg, journal)
    if not todo:
        return
    if not can_repair(cfg):
        n = sum(len(r) for _, r in todo)
        progress.log("masks", f"{n} mask(s) of {len(todo)} image(s) already written are not fetched: a "
                     f"{cfg.output.kind.value} output{' in a store' if is_remote(cfg.output.out) else ''} takes masks "
                     "only with their image (download into a new output, or a files output)", level="warning",
                     masks=n, images=len(todo))
        return
    asyncio.run(repair(cfg, journal, target, todo, progress, default_agent(shard_tag)))
