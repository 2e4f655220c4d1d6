"""Per-sample gradients: the ``gradient_norm`` proxy with the torch.func engine against opacus, in the same run.

Times :func:`proxies.gradient_norm` with each engine on the digits CNN (scikit-learn digits) and the
Fashion-MNIST CNN (``cnn28``; the real images when installed, else random 1x28x28 ones), and reports seconds,
examples/s, the ratio torch.func / opacus (below 1: torch.func is faster), how far the two engines' norms are apart,
and on CUDA the peak memory (``torch.cuda.max_memory_allocated``; not measured on CPU). Each engine is warmed up on
a few examples first, so torch.func's one-off set-up (seconds, on the first ``vmap(grad)`` of a process) is left out.

    python benchmarks/per_sample_gradients.py [--n 2000] [--batch-size 256] [--repeats 1] [--device cuda]

Writes ``benchmarks/results/per_sample_gradients.json``. ``bench_per_sample_gradients`` returns the table as a
DataFrame, for other benchmark scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset

import proxies
from proxies.gradients import get_engine, per_sample_chunk_size
from unlearn.data import DatasetNotFoundError, IndexedDataset, load_dataset
from unlearn.models import create_model

__all__ = ["CASES", "bench_per_sample_gradients", "case_data"]

CASES = {"digits_cnn": "digits", "cnn28": "fashion-mnist"}
"""The benchmarked models and the dataset each is timed on."""


def case_data(dataset: str, n: int, *, seed: int = 0) -> tuple[IndexedDataset, str]:
    """Up to ``n`` training examples of ``dataset`` and where they came from (Fashion-MNIST falls back to random
    1x28x28 images when it is not installed)."""
    if dataset == "fashion-mnist":
        try:
            train = load_dataset("fashion-mnist", train_size=n, seed=seed).train
            return train, "fashion-mnist"
        except DatasetNotFoundError:
            generator = torch.Generator().manual_seed(seed)
            return (IndexedDataset(torch.randn(n, 1, 28, 28, generator=generator),
                                   torch.randint(0, 10, (n,), generator=generator)), "random 1x28x28")
    train = load_dataset(dataset, seed=seed).train
    return (Subset(train, list(range(min(n, len(train))))) if n < len(train) else train), dataset


def _timed(model, data, engine: str, batch_size: int, chunk_size: int | None,
           device: torch.device) -> tuple[float, pd.Series, float]:
    """Seconds of one ``gradient_norm`` run, its scores, and the peak CUDA memory in MiB (NaN off CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    scores = proxies.gradient_norm(model, data, batch_size=batch_size, device=device, engine=engine,
                                   chunk_size=chunk_size)
    seconds = time.perf_counter() - start  # gradient_norm ends with a copy to the host: the device is done
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return seconds, scores, peak


def bench_per_sample_gradients(*, models: tuple[str, ...] = tuple(CASES), n: int = 2000, batch_size: int = 256,
                               chunk_size: int | None = None, repeats: int = 1,
                               engines: tuple[str, ...] = ("torch_func", "opacus"),
                               device: torch.device | str | None = None, seed: int = 0) -> pd.DataFrame:
    """Time ``gradient_norm`` with each engine on each model (best of ``repeats`` runs after a warm-up).

    Args:
        models: names from :data:`CASES`.
        n: examples scored per model (digits has fewer: all its training split).
        batch_size: examples moved to the device at once.
        chunk_size: per-sample gradients computed together (default: the proxy's memory-bounded default).
        repeats: timed runs per engine; the fastest counts.
        engines: names from :func:`proxies.gradients.engines`.
        device: where to compute (default: CPU).
        seed: seed of the models' initialisation and of the data.

    Returns:
        One row per model and engine: ``model, data, n, parameters, engine, device, chunk_size, seconds,
        examples_per_s, ratio_vs_opacus, max_rel_diff_vs_first`` (the largest relative difference of its norms from
        the first engine's) and ``peak_cuda_mib``.
    """
    unknown = [m for m in models if m not in CASES]
    if unknown:
        raise ValueError(f"unknown benchmark model {unknown[0]!r}; expected one of {sorted(CASES)}")
    for engine in engines:
        get_engine(engine)
    device = torch.device(device) if device is not None else torch.device("cpu")
    rows = []
    for name in models:
        data, source = case_data(CASES[name], n, seed=seed)
        torch.manual_seed(seed)
        model = create_model(name, num_classes=10, in_channels=1).to(device).eval()
        parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        first = None
        for engine in engines:
            proxies.gradient_norm(model, Subset(data, list(range(8))), batch_size=batch_size, device=device,
                                  engine=engine, chunk_size=chunk_size)  # warm-up
            best, scores, peak = float("inf"), None, float("nan")
            for _ in range(repeats):
                seconds, scores, peak = _timed(model, data, engine, batch_size, chunk_size, device)
                best = min(best, seconds)
            first = scores if first is None else first
            diff = np.max(np.abs(scores.to_numpy() - first.to_numpy()) / np.abs(first.to_numpy()))
            rows.append({"model": name, "data": source, "n": len(data), "parameters": parameters,
                         "engine": engine, "device": str(device),
                         "chunk_size": chunk_size or per_sample_chunk_size(model, batch_size=batch_size),
                         "seconds": best, "examples_per_s": len(data) / best, "max_rel_diff_vs_first": float(diff),
                         "peak_cuda_mib": peak})
    table = pd.DataFrame(rows)
    opacus = table[table.engine == "opacus"].set_index("model").seconds
    table["ratio_vs_opacus"] = [row.seconds / opacus[row.model] if row.model in opacus.index else float("nan")
                                for row in table.itertuples()]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="examples per model (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples moved to the device at once")
    parser.add_argument("--chunk-size", type=int, default=None, help="per-sample gradients at once (default: "
                        "what fits in proxies.gradients.CHUNK_BYTES)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per engine; the fastest counts")
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="JSON output folder")
    args = parser.parse_args()
    table = bench_per_sample_gradients(n=args.n, batch_size=args.batch_size, chunk_size=args.chunk_size,
                                       repeats=args.repeats, device=args.device)
    columns = ["model", "data", "n", "parameters", "engine", "device", "chunk_size", "seconds", "examples_per_s",
               "ratio_vs_opacus", "max_rel_diff_vs_first", "peak_cuda_mib"]
    print(f"\n== gradient_norm: torch.func vs opacus ({torch.get_num_threads()} threads, torch {torch.__version__})")
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "per_sample_gradients.json"
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "repeats": args.repeats,
              "rows": table[columns].astype(object).where(table[columns].notna(), None).to_dict("records")}
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
