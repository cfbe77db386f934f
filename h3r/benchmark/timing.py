"""Timing one call: :class:`Timer` (CUDA events behind a GPU spin, or ``time.perf_counter`` on
the CPU) and the device's copy bandwidth, the yardstick of the report's bandwidth columns;
:func:`time_per_call`, the wall and CPU time per call of back-to-back calls (host overhead,
training step)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

L2_FLUSH_BYTES = 256 << 20
MAX_STALL_MS = 2000.0  # the longest the GPU is held while the host queues the timed calls
SYNC_PROBE_MS = 20.0  # the shortest GPU spin behind which a call is checked for a host synchronisation


@dataclass
class Timing:
    """``median_ms``: time of one call on the device; CUDA only: ``host_ms``, the CPU time to issue it,
    ``host_sync``, whether the call blocks the host until the GPU is idle (a host synchronisation),
    and ``queued_ahead``, False when the GPU ran out of queued work before the host had issued
    every timed call (then some times include launch gaps).
    """

    median_ms: float
    host_ms: Optional[float] = None
    host_sync: Optional[bool] = None
    queued_ahead: Optional[bool] = None


class Timer:
    """Median times of ``fn()`` on ``device`` over ``repeats`` calls after ``warmup`` calls.

    CUDA: the GPU is first held by a spin kernel (``torch.cuda._sleep``) long enough for the
    host to queue every timed call behind it; each call is preceded by zeroing a 256 MiB
    buffer (flushes L2) and bracketed by a CUDA event pair. The event times are thus the
    device's time per call without launch gaps; ``host_ms`` is the median
    ``time.perf_counter`` span of issuing one call. One more call, issued while the GPU spins,
    tells whether the call synchronises with the host. CPU: ``time.perf_counter``.
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        self.cycles_per_ms = self._spin_cycles_per_ms() if self.cuda else None

    def _spin_cycles_per_ms(self) -> float:
        cycles = 10_000_000
        torch.cuda._sleep(cycles)  # clocks up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / start.elapsed_time(end)

    def _spin(self, ms: float) -> None:
        """Keep the GPU busy for about ``ms`` milliseconds (queued on the current stream)."""
        torch.cuda._sleep(int(min(ms, MAX_STALL_MS) * self.cycles_per_ms))

    def __call__(self, fn: Callable[[], object]) -> Timing:
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            return Timing(statistics.median(_host_ms(fn) for _ in range(self.repeats)))
        torch.cuda.synchronize(self.device)
        issue_ms = _host_ms(fn)  # with the GPU idle: what the host needs to issue one call
        torch.cuda.synchronize(self.device)
        spin_ms = max(SYNC_PROBE_MS, 4 * issue_ms)
        self._spin(spin_ms)
        host_sync = _host_ms(fn) > spin_ms / 2  # a call that waits for the GPU outlasts the spin
        torch.cuda.synchronize(self.device)

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.repeats)]
        self._spin(0.0 if host_sync else 3 * issue_ms * self.repeats + 5.0)
        spin_end = torch.cuda.Event()
        spin_end.record()
        host = []
        for start, end in events:
            self.flush.zero_()
            start.record()
            host.append(_host_ms(fn))
            end.record()
        queued_ahead = not spin_end.query()
        torch.cuda.synchronize(self.device)
        median = statistics.median([start.elapsed_time(end) for start, end in events])
        return Timing(median, statistics.median(host), host_sync, queued_ahead)


def _host_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth(timer: Timer, device: torch.device, nbytes: int) -> dict:
    """The device's copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` float32, read + write bytes counted."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src)).median_ms
    moved = 2 * src.numel() * 4
    return {"bytes": moved, "source_bytes": src.numel() * 4, "ms": ms, "gbps": moved / (ms * 1e6)}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], device: torch.device, calls: int, rounds: int,
                  warmup: int = 10) -> dict[str, float]:
    """Median over ``rounds`` of the CPU (``process_time``) and wall time per call, in ms."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    cpu, wall = [], []
    for _ in range(rounds):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        cpu.append((time.process_time() - start_cpu) * 1e3 / calls)
        wall.append((time.perf_counter() - start_wall) * 1e3 / calls)
    return {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall)}
