"""Shared helpers of the benchmark scripts: timing, peak memory, matmul peak, machine line, tables.

Peak memory method (CPU): a background thread samples the process's resident set size (``/proc/self/statm``)
every 5 ms while the measured code runs; the figure reported is the highest sample minus the RSS just before.
torch's CPU allocator takes large tensors from glibc malloc, which maps them with ``mmap`` and returns them to
the system on free once ``M_MMAP_THRESHOLD`` is fixed (``quiet_malloc`` fixes it at 64 KiB through ``mallopt``),
so RSS follows the live tensors and one measurement does not inherit another's freed pages. ``tracemalloc``
would see only Python objects, not tensors, hence RSS. On CUDA, ``torch.cuda.max_memory_allocated`` is used.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def quiet_malloc() -> bool:
    """Fix glibc's mmap threshold (64 KiB) so freed tensors leave the RSS at once; False where not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1
        libc.mallopt(m_trim_threshold, 128 * 1024)
        return ok
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    """Resident set size of this process now (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


@dataclass
class Peak:
    """Result of ``track_peak``: peak bytes above the starting level."""

    bytes: int = 0
    samples: int = 0


@contextmanager
def track_peak(device: str = "cpu", interval_s: float = 0.005):
    """Measure the peak memory the body adds: RSS sampling on CPU, the allocator's counter on CUDA."""
    peak = Peak()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield peak
        torch.cuda.synchronize()
        peak.bytes = torch.cuda.max_memory_allocated() - start
        return
    start = rss_bytes()
    top = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            top[0] = max(top[0], rss_bytes())
            peak.samples += 1
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        top[0] = max(top[0], rss_bytes())
        peak.bytes = top[0] - start


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[float, object]:
    """(seconds, result) of one call; synchronises CUDA around it."""
    wall, _, out = measure(fn, device)
    return wall, out


def measure(fn: Callable[[], object], device: str = "cpu") -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call.

    On a shared, oversubscribed machine the wall time mostly measures the other tenants; with one torch thread
    the process's CPU time is the work itself (what an idle core would take), so the benches report both.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu, out


@dataclass
class MatmulPeak:
    """Measured dense matmul throughput of this machine, GFLOP/s."""

    fp32: float
    bf16: float
    size: int
    extra: dict = field(default_factory=dict)


def matmul_peak(size: int = 2048, repeats: int = 3, device: str = "cpu", cpu_time: bool = False) -> MatmulPeak:
    """Best-of-``repeats`` GFLOP/s of a ``size``-square matmul in fp32 and bf16 (the machine's practical peak).

    ``cpu_time``: GFLOP per CPU-second of this process (per-core peak when torch runs one thread).
    """
    out = {}
    x = torch.randn(size, size, device=device)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        y = x.to(dtype)
        y @ y  # warm-up
        runs = [measure(lambda y=y: y @ y, device) for _ in range(repeats)]
        best = min(r[1] if cpu_time else r[0] for r in runs)
        out[name] = 2 * size**3 / max(best, 1e-9) / 1e9
    return MatmulPeak(out["fp32"], out["bf16"], size)


def machine_line(device: str = "cpu") -> str:
    """The machine in one line: CPU model, cores torch uses, load average (the noise on a shared box)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    line = f"CPU: {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load}"
    if device.startswith("cuda"):
        line += f"; GPU: {torch.cuda.get_device_name()}"
    return line + f"; torch {torch.__version__}"


def load_average() -> str:
    """The 1-minute load average now, for lines printed between measurements."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain-text table with right-aligned columns (left-aligned first column), markdown-compatible."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), rule, *[fmt(r) for r in cells[1:]]])
