"""Throughput of the CUDA scoring kernels against the pure-torch backend on the same GPU.

For each kernel and shape: the median time of a call (CUDA events around each call, after warm-up), the bytes the
kernel must move at least (inputs read once, outputs written once), the achieved GB/s, and that as a percentage of
the device-to-device copy bandwidth measured here (``dst.copy_(src)`` of 1 GiB: read + write) and, where torch
reports the memory clock and bus width, of the theoretical HBM bandwidth.

Usable from a GPU check script (``benchmarks/`` is no package: an installed ``benchmarks`` would shadow it)::

    sys.path.insert(0, "benchmarks")
    from gpu_kernels import bench_cuda_kernels
    print(bench_cuda_kernels().to_string())

or ``python benchmarks/gpu_kernels.py [--out table.json]``. Without a CUDA device (or without the CUDA ops) it returns
an empty frame whose ``attrs["skipped"]`` says why.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

COLUMNS = ["kernel", "backend", "shape", "dtype", "ms", "bytes", "GB/s", "% of copy", "% of HBM peak"]


def _median_seconds(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 20) -> float:
    """Median seconds per call of ``fn`` on the current stream, timed by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s: ``nbytes`` read plus ``nbytes`` written per copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_seconds(lambda: dst.copy_(src), repeat=10)


def peak_bandwidth() -> float | None:
    """Theoretical memory bandwidth in bytes/s from the device properties (double data rate), None if unreported."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8


def _cases(seed: int = 0):
    """(kernel, shape, bytes moved at least, {backend: call}) for each benchmarked case, inputs on the GPU."""
    from proxies._backends import native, pure_torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    for n, c in ((1_000_000, 10), (1_000_000, 100)):
        z = torch.randn(n, c, device="cuda", generator=g) * 4
        y = torch.randint(0, c, (n,), device="cuda", generator=g)
        moved = z.numel() * 4 + y.numel() * 8 + n * 5 * 4
        yield "signals", f"N={n:_} C={c}", moved, {"cuda": lambda z=z, y=y: native.signals(z, y),
                                                     "torch": lambda z=z, y=y: pure_torch.signals(z, y)}
        q = torch.randn(n, c, device="cuda", generator=g) * 4
        moved = 2 * z.numel() * 4 + n * 4
        yield "symmetric_kl", f"N={n:_} C={c}", moved, {"cuda": lambda z=z, q=q: native.symmetric_kl(z, q),
                                                          "torch": lambda z=z, q=q: pure_torch.symmetric_kl(z, q)}
    for epochs, n in ((200, 50_000), (200, 1_000_000), (200, 1_000_003)):  # the last: rows not 16-byte aligned
        correct = torch.rand(epochs, n, device="cuda", generator=g) < 0.7
        moved = correct.numel() + 3 * n * 8
        yield "learning_events", f"E={epochs} N={n:_}", moved, {
            "cuda": lambda c=correct: native.learning_events(c),
            "torch": lambda c=correct: pure_torch.learning_events(c)}


def bench_cuda_kernels(*, warmup: int = 3, repeat: int = 20) -> pd.DataFrame:
    """Time the CUDA kernels and the pure-torch backend on the GPU; one row per kernel, shape and backend.

    Returns:
        Columns :data:`COLUMNS` (float32 inputs; ``bytes`` is the least traffic the kernel needs). Empty, with
        ``attrs["skipped"]`` saying why, when there is no CUDA device or the CUDA ops are not built.
    """
    if not torch.cuda.is_available():
        return _skipped("no CUDA device is visible")
    from proxies._backends import native

    if "cuda" not in native.DEVICES:
        return _skipped(f"the CUDA ops are not built ({native.LOAD_ERROR or 'the extension has CPU ops only'})")
    copy, peak = copy_bandwidth(), peak_bandwidth()
    torch.cuda.empty_cache()  # the copy's 2 GiB
    rows = []
    for kernel, shape, moved, calls in _cases():
        for backend, call in calls.items():
            seconds = _median_seconds(call, warmup=warmup, repeat=repeat)
            rate = moved / seconds
            rows.append({"kernel": kernel, "backend": backend, "shape": shape, "dtype": "float32",
                         "ms": seconds * 1e3, "bytes": moved, "GB/s": rate / 1e9, "% of copy": 100 * rate / copy,
                         "% of HBM peak": None if peak is None else 100 * rate / peak})
        torch.cuda.empty_cache()
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs.update({"copy GB/s": copy / 1e9, "HBM peak GB/s": None if peak is None else peak / 1e9,
                        "device": torch.cuda.get_device_name()})
    return table


def _skipped(reason: str) -> pd.DataFrame:
    table = pd.DataFrame(columns=COLUMNS)
    table.attrs["skipped"] = reason
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table (and its attrs) here as JSON")
    args = parser.parse_args(argv)
    table = bench_cuda_kernels()
    if "skipped" in table.attrs:
        print(f"skipped: {table.attrs['skipped']}")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print({k: v for k, v in table.attrs.items()})
    if args.out is not None:
        args.out.write_text(pd.Series({"attrs": table.attrs, "rows": table.to_dict(orient="records")}).to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
