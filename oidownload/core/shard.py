"""Which share of the rows a cluster task owns: a stable hash of the ImageID, so the
shares do not change when the CSV is reordered or another input file is added.

The index and count come from flags, or from the scheduler's environment (Slurm
job arrays, Kubernetes Indexed Jobs).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from oidownload.core.errors import ConfigError
from oidownload.core.ids import is_image_id

_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finaliser: every input bit moves every output bit, so ids that share
    a prefix (as sorted Open Images ids do) still spread evenly over the shards."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def shard_of(raw_id: str, count: int) -> int:
    """The shard that owns a row, from its raw ImageID. Malformed ids get a shard too
    (by CRC), so exactly one task reports each bad row."""
    if count == 1:
        return 0
    if is_image_id(raw_id):
        return mix64(int(raw_id, 16)) % count
    return zlib.crc32(raw_id.encode("utf-8", "surrogatepass")) % count


@dataclass(frozen=True, slots=True)
class Shard:
    index: int = 0
    count: int = 1
    origin: str = "default"  # where the numbers came from, for the start-up line

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"the shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard index {self.index} is outside 0..{self.count - 1}")

    @property
    def tag(self) -> str:
        return f"{self.index}-of-{self.count}"

    def owns(self, raw_id: str) -> bool:
        return self.count == 1 or shard_of(raw_id, self.count) == self.index

    def describe(self) -> str:
        return f"shard {self.index} of {self.count} ({self.origin})"


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def resolve_shard(index: int | None, count: int | None, env: Mapping[str, str]) -> Shard:
    """Flags win; then Slurm's array variables; then Kubernetes' completion index; then
    the whole input as one shard.

    Slurm numbers array tasks from SLURM_ARRAY_TASK_MIN (an array may be 5-8), so
    the index is the offset from the minimum. Kubernetes gives no count, so it comes
    from --num-shards / OIDOWNLOAD_NUM_SHARDS.
    """
    if index is not None or count is not None:
        if index is None or count is None:
            raise ConfigError("--shard-index and --num-shards go together")
        return Shard(index, count, "flags")
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        n = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        hi = _env_int(env, "SLURM_ARRAY_TASK_MAX")
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        if n is None:
            if hi is None:
                raise ConfigError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
            n = (hi - lo) // step + 1
        if (task - lo) % step:
            raise ConfigError(f"SLURM_ARRAY_TASK_ID={task} is not on the array's step of {step}")
        return Shard((task - lo) // step, n, "Slurm array")
    job_index = _env_int(env, "JOB_COMPLETION_INDEX")
    if job_index is not None:
        raise ConfigError(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the shard count is "
            "not: set --num-shards or OIDOWNLOAD_NUM_SHARDS to the Job's completions"
        )
    return Shard(0, 1, "single task")


def resolve_with_count(index: int | None, count: int | None, env: Mapping[str, str]) -> Shard:
    """As resolve_shard, but a lone count (from --num-shards) pairs with Kubernetes'
    JOB_COMPLETION_INDEX or a Slurm array index."""
    if count is not None and index is None:
        job_index = _env_int(env, "JOB_COMPLETION_INDEX")
        if job_index is not None:
            return Shard(job_index, count, "Kubernetes Indexed Job")
        slurm = resolve_shard(None, None, env)
        if slurm.origin == "Slurm array":
            if slurm.count != count:
                raise ConfigError(f"--num-shards {count} disagrees with the Slurm array's {slurm.count} tasks")
            return slurm
        raise ConfigError("--num-shards without --shard-index needs a scheduler index (Slurm array or JOB_COMPLETION_INDEX)")
    return resolve_shard(index, count, env)
