"""Memory and speed when the data does not fit: ``train``, ``unlearn`` (finetune, rum) and ``evaluate`` on a stream.

1. ``--part scale``: a lazily generated dataset of ``3 x 32 x 32`` images (:class:`LazyImages`: item ``i`` is made
   from ``(seed, i)`` when it is read, nothing is stored) at N = 10k, 100k and 1M, wrapped in
   :class:`unlearn.data.Streamed`. For each N, each job runs in a fresh process, which reports its peak RSS (the
   high-water mark of its resident memory, imports included) and its examples per second:
   - ``train``: one epoch, with the training recorder (batch 256, a small CNN);
   - ``finetune``: ``unlearn(method="finetune", epochs=1)``, forgetting 1,000 examples (the retain set is the rest);
   - ``rum``: ``unlearn(method="rum", policy="random_label_fast")`` with memorization scores of the whole
     training set: its step trains on a retain sample of 16 per forget example, drawn by index (the default policy
     fine-tunes on the whole retain set, which is ``finetune``'s cost again);
   - ``evaluate``: accuracies and the default attacks on the forget, retain and a 10k test set.
   Target: peak RSS at N = 1M within 1.5x of N = 10k for every job.
2. ``--part fashion-mnist``: one epoch of the ``cnn28`` recipe on the full 60k Fashion-MNIST training set, in memory
   (the library's in-memory fast path) against streamed through torchvision's ``FashionMNIST`` with
   ``ToTensor`` + ``Normalize`` in 2 worker processes. Target: the streamed epoch at most 10% slower.

    python benchmarks/bench_scale.py [--part scale|fashion-mnist|all] [--sizes 10000 100000 1000000]

Writes ``bench_scale.json`` and ``bench_scale.csv`` under ``--out``; ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

JOBS = ("train", "finetune", "rum", "evaluate")
FORGET = 1_000
TEST = 10_000
BATCH = 256


class LazyImages(Dataset):
    """``length`` images ``[3, 32, 32]`` in ``[0, 1]``, each made when read: its class's mean colour plus uniform
    noise from a generator seeded by ``(seed, i)``; the label is ``i``'s hash modulo 10 (:meth:`labels` gives them
    all without making an image)."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed = length, seed
        self.colours = torch.linspace(0.1, 0.9, 10)[:, None, None, None].expand(10, 3, 1, 1).clone()
        self.colours[:, 1] = self.colours[:, 1].flip(0)

    def __len__(self) -> int:
        return self.length

    def labels(self, i: torch.Tensor | None = None) -> torch.Tensor:
        i = torch.arange(self.length, dtype=torch.int64) if i is None else i
        return ((i * 2654435761 + self.seed) % 2**32 >> 7) % 10

    def __getitem__(self, i: int):
        label = int(self.labels(torch.tensor(i)))
        noise = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(self.seed * 2**40 + i))
        return 0.6 * self.colours[label] + 0.4 * noise, label


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------- one job, one process

def run_job(job: str, n: int, workers: int) -> dict:
    """Run one job on a stream of ``n`` lazily made images; what it cost."""
    from proxies import TrainingRecorder
    from unlearn import evaluate, unlearn
    from unlearn.data import Streamed
    from unlearn.training import train

    torch.set_num_threads(1)
    raw = LazyImages(n)
    data = Streamed(raw, num_workers=workers, targets=raw.labels())
    forget, retain = Subset(data, range(FORGET)), Subset(data, range(FORGET, n))
    model = small_cnn()
    setup_rss = _peak_rss_mib()
    start = time.perf_counter()
    if job == "train":
        _, history = train(model, data, epochs=1, lr=0.05, batch_size=BATCH, recorder=TrainingRecorder(n),
                           device="cpu", progress=False)
        examples = n
    elif job == "finetune":
        unlearn(model, forget=forget, retain=retain, method="finetune", epochs=1, batch_size=BATCH, device="cpu")
        examples = n - FORGET
    elif job == "rum":
        scores = pd.Series(np.random.default_rng(0).random(n), index=pd.RangeIndex(n, name="index"))
        scores.attrs["higher_is_memorized"] = True
        result = unlearn(model, forget=forget, retain=retain, method="rum", scores=scores, device="cpu",
                         policy="random_label_fast")
        examples = sum(len(s.indices) + s.retain_size for s in result.plan if s.method != "noop")
    elif job == "evaluate":
        test_raw = LazyImages(TEST, seed=1)
        test = Streamed(test_raw, num_workers=workers, targets=test_raw.labels())
        evaluate(model, forget=forget, retain=retain, test=test, device="cpu")
        examples = n + TEST
    else:
        raise ValueError(f"unknown job {job!r}; expected one of {JOBS}")
    seconds = time.perf_counter() - start
    return {"job": job, "n": n, "workers": workers, "seconds": seconds, "examples": examples,
            "examples_per_s": examples / seconds, "setup_rss_mib": setup_rss, "peak_rss_mib": _peak_rss_mib()}


def bench_scale(sizes: list[int], jobs: list[str], workers: int) -> pd.DataFrame:
    rows = []
    for n in sizes:
        for job in jobs:
            out = subprocess.run([sys.executable, __file__, "--child", job, str(n), "--workers", str(workers)],
                                 capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{job:9s} N={n:>9,d}  {row['seconds']:8.1f} s  {row['examples_per_s']:9.0f} ex/s  "
                  f"peak RSS {row['peak_rss_mib']:7.0f} MiB", flush=True)
            rows.append(row)
    table = pd.DataFrame(rows)
    smallest = table[table["n"] == min(sizes)].set_index("job")["peak_rss_mib"]
    table["rss_vs_smallest"] = table["peak_rss_mib"] / table["job"].map(smallest)
    return table


# --------------------------------------------------------------------------------------------- 2. Fashion-MNIST

def bench_fashion_mnist(workers: int, epochs: int) -> pd.DataFrame:
    """Seconds per epoch of the cnn28 recipe on the 60k training set, in memory and streamed."""
    import torchvision
    from torchvision import transforms

    from unlearn.data import Streamed, default_root, load_dataset
    from unlearn.models import create_model
    from unlearn.training import RECIPES, train

    torch.set_num_threads(1)
    splits = load_dataset("fashion-mnist", val_fraction=0.0)  # also puts the raw files where torchvision reads them
    mean, std = (0.286,), (0.353,)  # the normalisation load_dataset("fashion-mnist") applies
    raw = torchvision.datasets.FashionMNIST(default_root(), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean, std)]))
    streamed = Streamed(raw, num_workers=workers, targets=raw.targets)
    recipe = RECIPES["fashion-mnist"].as_kwargs() | {"epochs": epochs}
    rows = []
    for path, data in (("in memory", splits.train), (f"streamed, {workers} workers", streamed)):
        model = create_model("cnn28", num_classes=10, in_channels=1)
        start = time.perf_counter()
        _, history = train(model, data, device="cpu", progress=False, **recipe)
        seconds = time.perf_counter() - start
        rows.append({"path": path, "examples": len(data), "epochs": epochs, "seconds_per_epoch": seconds / epochs,
                     "train_accuracy": float(history["accuracy"].iloc[-1])})
        print(f"{path:22s} {seconds / epochs:6.1f} s/epoch", flush=True)
    table = pd.DataFrame(rows)
    table["vs_in_memory"] = table["seconds_per_epoch"] / table["seconds_per_epoch"].iloc[0]
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["scale", "fashion-mnist", "all"], default="all",
                        help="what to measure (default: both)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="training-set sizes of the lazily made dataset (default: 10k 100k 1M)")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS), help="jobs to measure (default: all)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader worker processes of the lazily made dataset (default 0: items are made in "
                             "the process that trains)")
    parser.add_argument("--fmnist-workers", type=int, default=2,
                        help="worker processes of the streamed Fashion-MNIST (default 2)")
    parser.add_argument("--fmnist-epochs", type=int, default=2, help="epochs timed per Fashion-MNIST path (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON and CSV go")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", nargs=2, metavar=("JOB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_job(args.child[0], int(args.child[1]), args.workers)))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    results, failed = {}, []
    if args.part in ("scale", "all"):
        table = bench_scale(sorted(args.sizes), args.jobs, args.workers)
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
        results["scale"] = table.to_dict("records")
        table.to_csv(args.out / "bench_scale.csv", index=False)
        largest = table[table["n"] == max(args.sizes)]
        failed += [f"{r.job}: peak RSS x{r.rss_vs_smallest:.2f} at N={r.n:,}" for r in largest.itertuples()
                   if r.rss_vs_smallest > 1.5]
    if args.part in ("fashion-mnist", "all"):
        table = bench_fashion_mnist(args.fmnist_workers, args.fmnist_epochs)
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
        results["fashion_mnist"] = table.to_dict("records")
        table.to_csv(args.out / "bench_scale_fashion_mnist.csv", index=False)
        if table["vs_in_memory"].iloc[1] > 1.10:
            failed.append(f"streamed Fashion-MNIST epoch x{table['vs_in_memory'].iloc[1]:.2f} of in-memory")
    (args.out / "bench_scale.json").write_text(json.dumps(results, indent=2))
    for line in failed:
        print("MISSED:", line)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
