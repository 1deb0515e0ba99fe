"""What every benchmark here measures the same way: timing (per-round medians and ratios), peak memory, the
environment line, and model-FLOP utilisation against a measured matmul peak.

Timing: a benchmark alternates the things it compares round by round in ONE process and reports the median of the
per-round ratios (`median_ratio`), which cancels slow drifts of the machine (thermal, other load) that hit both
sides of a round alike. Peak memory of a timed block (`timed`): CUDA `max_memory_allocated` above the allocated
bytes before it; CPU (when asked) the peak resident set size above the resident set before it, with the kernel's
peak mark reset through /proc/self/clear_refs and freed heap pages returned to the OS first (`rss_baseline`).
"""

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable

import torch

MIB = 2**20


# ---- timing ----------------------------------------------------------------------------------------------------


def median_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float:
    """Median of the per-round ratios numerator / denominator (rounds paired in order)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def timed(step: Callable[[], object], steps: int, device: torch.device, cpu_rss: bool = False):
    """Seconds for `steps` consecutive calls of `step` (CUDA synchronised before and after) and the peak bytes
    above the resting state during them: CUDA allocator bytes; on CPU the resident set when `cpu_rss`, else None."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif cpu_rss:
        base = rss_baseline()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if cuda:
        return seconds, torch.cuda.max_memory_allocated(device) - base
    return seconds, (status_kib("VmHWM") * 1024 - base) if cpu_rss else None


# ---- memory ----------------------------------------------------------------------------------------------------


def status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM); False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc), so that a baseline RSS does not count the allocator's cache."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_baseline() -> int:
    """Resident bytes at rest (after gc and malloc_trim), with the peak mark reset to it."""
    gc.collect()
    malloc_trim()
    base = status_kib("VmRSS") * 1024
    reset_peak_rss()
    return base


def format_mib(value) -> str:
    return "-" if value is None else f"{value / MIB:.0f}" if value >= 10 * MIB else f"{value / MIB:.2f}"


# ---- environment -----------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    """Versions, threads and the device name, for the first line of a report."""
    import transformers

    import mae_hf

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mae_hf": getattr(mae_hf, "__version__", "?"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = cpu_name()
    return env


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_average() -> str:
    """The 1-minute load average, as /proc/loadavg writes it: timings depend on what else runs."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# ---- FLOPs / MFU -----------------------------------------------------------------------------------------------


def matmul_peak_flops(device: torch.device, bf16: bool, seconds: float = 1.0) -> float:
    """Best measured FLOP/s of a square matmul (2048 on CPU, 8192 on CUDA) in the step's compute dtype over
    ~`seconds`: the peak that MFU is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    a @ b  # warm-up
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def mfu(images_per_s: float, flops_per_image: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the measured peak."""
    return images_per_s * flops_per_image / peak_flops
