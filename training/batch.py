"""Batch work split into Ray tasks when a Ray runtime is up (locally, or a cluster via RAY_ADDRESS), sequential
otherwise: the same command scales out without code changes.

``map_chunks(fn, chunks)`` runs ``fn(chunk)`` for each chunk and returns the results in order, reporting progress
as chunks finish. ``fn`` must be a module-level function (Ray pickles it by reference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from recstack import ray_runtime

T = TypeVar("T")
R = TypeVar("R")


def ensure_ray() -> bool:
    """Start (or join, with RAY_ADDRESS) a Ray runtime for batch work; False when Ray cannot start here."""
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        try:
            ray_runtime.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception:
            return False
    return True


def ray_is_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def map_chunks(
    fn: Callable[[T], R],
    chunks: Sequence[T],
    progress: Callable[[int, int], None] | None = None,
    num_cpus: float = 1,
) -> list[R]:
    import ray

    if len(chunks) <= 1 or not ray.is_initialized():
        out = []
        for n, chunk in enumerate(chunks):
            out.append(fn(chunk))
            if progress:
                progress(n + 1, len(chunks))
        return out
    task: Any = ray.remote(num_cpus=num_cpus)(fn)
    refs = [task.remote(chunk) for chunk in chunks]
    position = {ref: n for n, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    done = 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            results[position[ref]] = ray.get(ref)
            done += 1
            if progress:
                progress(done, len(refs))
    return results
