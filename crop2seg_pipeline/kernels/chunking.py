"""How to cut an area into model chunks so that every worker thread stays busy (pure Python/numpy).

A prediction runs one model task per chunk, each computing the windows it owns (see
:func:`~crop2seg_pipeline.kernels.windows.owned_windows`). On a large area any chunking keeps
the threads busy. On a small one the chunks are few and unequal, and the thread that draws the
largest ones finishes last while the others idle: a 512 px area in 2 x 2 chunks of 256 px owns
9, 6, 6 and 4 windows of 128 px at stride 96, and Dask's queue (each one-thread worker holds up
to two tasks) gave one worker 9 + 6 and the other 6 + 4: 15 window-times instead of 12.5.

:func:`balanced_chunksize` picks the chunk side among the requested one, its halves and the
multiples of the window stride below it (chunk edges on window origins), by the finish time of
:func:`queue_makespan` with the tasks handed out largest first (on a small area the graph gives
the model tasks that priority: :func:`~crop2seg_pipeline.graph.windows.window_graph`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from .windows import owned_windows, plan_axis

__all__ = [
    "TASK_COST",
    "axis_chunks",
    "balanced_chunksize",
    "chunk_costs",
    "min_chunks",
    "owned_per_chunk",
    "queue_makespan",
]

#: Fixed cost of one model task (reading its halo, its part and blend tasks, scheduling), in
#: units of one window's model time (~0.1 s on a CPU core for a 128 px ``utae-small`` window
#: at T=12; a task costs a few ms to ~20 ms more).
TASK_COST = 0.25


def min_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``minimum`` into a neighbour (so the halo fits in one neighbour)."""
    out: list[int] = []
    for c in chunks:
        if out and (c < minimum or out[-1] < minimum):
            out[-1] += c
        else:
            out.append(c)
    return tuple(out)


def axis_chunks(n: int, size: int, minimum: int) -> tuple[int, ...]:
    """Chunks of ``size`` along an axis of ``n`` px (padded up to ``minimum``), none below ``minimum``."""
    n = max(int(n), int(minimum))
    size = max(int(size), 1)
    chunks = [size] * (n // size) + ([n % size] if n % size else [])
    return min_chunks(chunks, minimum)


def owned_per_chunk(origins: np.ndarray, size: int, edges: Sequence[int]) -> list[int]:
    """Windows owned by each chunk between ``edges`` along one axis (see
    :func:`~crop2seg_pipeline.kernels.windows.owned_windows`)."""
    return [len(owned_windows(origins, size, edges, k)) for k in range(len(edges) - 1)]


def chunk_costs(height: int, width: int, size: int, patch_size: int, stride: int,
                task_cost: float = TASK_COST) -> list[float]:
    """Cost of each model task of ``size`` px chunks: the windows it owns plus ``task_cost``."""
    per_axis = []
    for n in (height, width):
        edges = np.concatenate([[0], np.cumsum(axis_chunks(n, size, patch_size))]).tolist()
        per_axis.append(owned_per_chunk(plan_axis(edges[-1], patch_size, stride), patch_size, edges))
    return [a * b + task_cost for a in per_axis[0] for b in per_axis[1]]


def queue_makespan(costs: Sequence[float], workers: int, slots: int = 2) -> float:
    """When the last of these tasks ends on ``workers`` one-thread workers under Dask's queuing.

    The tasks are handed out largest first; each worker holds up to ``slots`` tasks (running and
    waiting: ``ceil(1.1 x threads)`` with distributed's default ``worker-saturation``), so the
    first ``workers x slots`` are dealt round-robin and each later one goes to the first worker
    that finishes a task.
    """
    todo = sorted((float(c) for c in costs), reverse=True)
    workers = max(int(workers), 1)
    held: list[deque] = [deque() for _ in range(workers)]
    nxt = 0
    for _ in range(max(int(slots), 1)):
        for w in range(workers):
            if nxt < len(todo):
                held[w].append(todo[nxt])
                nxt += 1
    events = [(held[w][0], w) for w in range(workers) if held[w]]
    heapq.heapify(events)
    end = 0.0
    while events:
        t, w = heapq.heappop(events)
        held[w].popleft()
        end = max(end, t)
        if nxt < len(todo):
            held[w].append(todo[nxt])
            nxt += 1
        if held[w]:
            heapq.heappush(events, (t + held[w][0], w))
    return end


def balanced_chunksize(height: int, width: int, chunksize: int, patch_size: int, stride: int, threads: int, *,
                       task_cost: float = TASK_COST, slots: int = 2, gain: float = 0.03) -> int:
    """The chunk side to use for an area: ``chunksize``, or a side below it (a multiple of
    ``stride`` or ``chunksize`` halved, at least one window) when that finishes more than
    ``gain`` sooner by :func:`queue_makespan` on ``threads`` one-thread workers: then the
    largest side within ``gain`` of the best, so that an area needs no more tasks (and halos)
    than it gains from.
    """
    size = max(int(chunksize), int(patch_size))
    threads = max(int(threads), 1)
    candidates = {size: queue_makespan(chunk_costs(height, width, size, patch_size, stride, task_cost), threads, slots)}
    if threads > 1:
        sides = {k * stride for k in range(math.ceil(patch_size / stride), size // stride + 1)}
        sides |= {size >> k for k in range(1, size.bit_length()) if size >> k >= patch_size}  # halves
        for s in sorted(v for v in sides if patch_size <= v < size):
            candidates[s] = queue_makespan(chunk_costs(height, width, s, patch_size, stride, task_cost), threads, slots)
    best = min(candidates.values())
    if candidates[size] <= best * (1 + gain):
        return size
    return max(s for s, t in candidates.items() if t <= best * (1 + gain))
