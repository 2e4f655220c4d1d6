"""One prepared check of a CUDA machine, in at most 5 minutes: is the library correct and fast there?

Parts, each timed and guarded (a failure is reported in the table and the others still run):

  tests      ``pytest -m cuda``: the cuda-marked tests (the recorder -> proxies -> rum -> evaluate path on the GPU)
  kernels    the proxies' CUDA kernels against torch, and as a % of HBM bandwidth (benchmarks/gpu_kernels.py)
  recorder   the recorder's overhead on ResNet-18 epochs of 10,000 synthetic CIFAR-shaped examples, batch 512, in
             fp32 (TF32) and bf16 + channels-last, signals only and with input gradients (target: <= 3%)
  run        ``unlearn run`` end to end on synthetic-cifar with ResNet-18 (bf16, channels-last)
  farm       packed against one-at-a-time model-farm throughput (benchmarks/bench_farm.py)

Prints one table and writes JSON (``--out``). Without a GPU it says so, runs the CPU-runnable part (a tiny
``unlearn run`` on synthetic CIFAR-shaped data, well under a minute) and exits 0. On a GPU it exits 1 if a part
failed.

    python benchmarks/check_gpu.py [--out benchmarks/results/check_gpu.json]     (or: make check-gpu)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # gpu_kernels, bench_farm

RECORDER_TARGET_PCT = 3.0


class Skipped(Exception):
    """A part that does not apply here (no GPU, a benchmark not written yet): reported, not failed."""


# ------------------------------------------------------------------------------------------------------- parts

def _tests(cuda: bool) -> dict:
    if not cuda:
        raise Skipped("no GPU: the cuda-marked tests all skip")
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                "tests"], cwd=ROOT, capture_output=True, text=True, timeout=150)
    summary = (completed.stdout.strip().splitlines() or ["(no output)"])[-1]
    if completed.returncode:
        print(completed.stdout[-4000:], completed.stderr[-2000:], sep="\n", file=sys.stderr)
        raise RuntimeError(f"pytest -m cuda: {summary}")
    return {"summary": summary}


def _kernels(cuda: bool) -> dict:
    try:
        from gpu_kernels import bench_cuda_kernels
    except ImportError as err:
        raise Skipped(f"not available (benchmarks/gpu_kernels.py: {err})") from None
    if not cuda:
        raise Skipped("no GPU")
    table = bench_cuda_kernels()
    print(table.to_string(index=False), file=sys.stderr)
    return {"rows": table.to_dict(orient="records"), "summary": f"{len(table)} kernels timed"}


def _synthetic_train(n: int):
    from unlearn.data import IndexedDataset
    from unlearn.data.synthetic import SyntheticCIFAR

    x, y = SyntheticCIFAR(n, seed=0).images(torch.arange(n))
    return IndexedDataset(((x - 0.5) / 0.2).contiguous(), y)


def _recorder(cuda: bool, *, examples: int = 10_000, batch_size: int = 512, epochs: int = 3) -> dict:
    if not cuda:
        raise Skipped("no GPU (the CPU overhead is benchmarks/bench_recorder.py's)")
    from proxies import TrainingRecorder
    from unlearn.models import create_model
    from unlearn.training import train

    data = _synthetic_train(examples)
    rows = []
    for numerics in ({"precision": "fp32"}, {"precision": "bf16", "channels_last": True}):
        seconds = {}
        for setting in ("without", "signals", "signals+csg"):
            recorder = None if setting == "without" else TrainingRecorder(examples,
                                                                          input_gradients=setting == "signals+csg")
            torch.manual_seed(0)
            model = create_model("resnet18", num_classes=10, in_channels=3)
            _, history = train(model, data, epochs=epochs, batch_size=batch_size, lr=0.05, recorder=recorder,
                               device="cuda", progress=False, **numerics)
            seconds[setting] = statistics.median(history["seconds"].tolist()[1:])  # the first epoch warms up
        label = "+".join(f"{k}={v}" for k, v in numerics.items())
        rows.append({"numerics": label, "epoch_s_without": seconds["without"], "epoch_s_signals": seconds["signals"],
                     "epoch_s_signals_csg": seconds["signals+csg"],
                     "overhead_pct": 100 * (seconds["signals"] / seconds["without"] - 1),
                     "overhead_csg_pct": 100 * (seconds["signals+csg"] / seconds["without"] - 1),
                     "examples_per_s": examples / seconds["without"]})
    worst = max(r["overhead_pct"] for r in rows)
    summary = "; ".join(f"{r['numerics']}: {r['epoch_s_without']:.2f} s/epoch, signals +{r['overhead_pct']:.1f}%, "
                        f"with input gradients +{r['overhead_csg_pct']:.1f}%" for r in rows)
    if worst > RECORDER_TARGET_PCT:
        raise RuntimeError(f"recorder overhead {worst:.1f}% > {RECORDER_TARGET_PCT}% ({summary})")
    return {"rows": rows, "summary": summary}


class _TinyCNN(nn.Sequential):
    """A small CNN for 32x32 images, for the CPU smoke run (ResNet-18 takes minutes on a CPU)."""

    def __init__(self, *, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(nn.Conv2d(in_channels, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def _run(cuda: bool) -> dict:
    import proxies
    from unlearn.data.synthetic import register_synthetic_cifar
    from unlearn.models import models, register_model
    from unlearn.pipeline import RunConfig, run

    if cuda:  # CIFAR-10's sizes but a 4,096-example training set: the whole job in about a minute
        config = RunConfig(dataset="synthetic-cifar", model="resnet18", train_size=4096, val_fraction=0.02,
                           epochs=3, batch_size=512, lr=0.05, checkpoints=1, precision="bf16", channels_last=True,
                           device="cuda")
    else:
        register_synthetic_cifar("synthetic-cifar-check", train=2_000, test=200, force=True)
        if "check_gpu_tiny_cnn" not in models():
            register_model("check_gpu_tiny_cnn")(_TinyCNN)
        config = RunConfig(dataset="synthetic-cifar-check", model="check_gpu_tiny_cnn", train_size=256,
                           val_fraction=0.05, epochs=2, batch_size=64, lr=0.05, checkpoints=1, device="cpu",
                           proxies=list(proxies.RECORDING_PROXIES), attacks=["loss_threshold"])
    with tempfile.TemporaryDirectory() as out:
        result = run(config, out, progress=False)
    accuracy = result.results.loc["accuracy.test"].round(3).to_dict()  # per model: original, unlearned, ...
    shown = ", ".join(f"{model} {value}" for model, value in accuracy.items())
    return {"summary": f"{config.dataset} / {config.model} on {config.device}, {config.train_size} examples: "
                       f"test accuracy {shown}", "dataset": config.dataset, "model": config.model,
            "test_accuracy": accuracy}


def _farm_throughput(cuda: bool) -> dict:
    """Packed against one-at-a-time farm throughput on the GPU: 32 digits-CNN subset models of 5 epochs, one at a
    time (LocalFarm) and as one vmapped pack (PackedFarm), with ``benchmarks/bench_farm.py``'s timing (about 60 s)."""
    if not cuda:
        raise Skipped("no GPU (the CPU comparison is benchmarks/bench_farm.py's)")
    import functools

    from bench_farm import run_farm

    from unlearn.data import load_dataset
    from unlearn.farm import TrainTask
    from unlearn.farm.subset_models import subset_jobs
    from unlearn.models import create_model
    from unlearn.training import RECIPES

    splits = load_dataset("digits")
    model_fn = functools.partial(create_model, "digits_cnn", num_classes=10, in_channels=1)
    jobs = subset_jobs(len(splits.train), 32)
    task = TrainTask(splits.train, model_fn, RECIPES["digits"].as_kwargs() | {"epochs": 5}, "cuda")
    rows, logits = [], {}
    for name, options in (("local", {}), ("packed", {"models_per_pack": 32})):
        seconds, logits[name] = run_farm(name, options, jobs, task)
        rows.append({"farm": name, "models": len(jobs), "seconds": seconds,
                     "models_per_min": 60 * len(jobs) / seconds})
    same = float((logits["local"].argmax(-1) == logits["packed"].argmax(-1)).mean())
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    return {"rows": rows, "summary": f"packed-32 {rows[1]['models_per_min']:.0f} models/min vs one at a time "
                                     f"{rows[0]['models_per_min']:.0f} ({speedup:.1f}x), same argmax {same:.3f}"}


PARTS = {"tests": _tests, "kernels": _kernels, "recorder": _recorder, "run": _run, "farm": _farm_throughput}


# ------------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_gpu.json",
                        help="JSON output (default: benchmarks/results/check_gpu.json)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="which parts to run")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "none"
    print(f"torch {torch.__version__}, CUDA device: {device}, {platform.processor() or platform.machine()}")
    if not cuda:
        print("no CUDA device: GPU parts skipped")
    rows = []
    start = time.perf_counter()
    for name in args.parts:
        began = time.perf_counter()
        try:
            details, status = PARTS[name](cuda), "ok"
        except Skipped as why:
            details, status = {"summary": str(why)}, "skipped"
        except Exception as err:  # one part's failure is reported and does not hide the others
            traceback.print_exc()
            details, status = {"summary": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}, \
                "FAILED"
        seconds = time.perf_counter() - began
        rows.append({"part": name, "status": status, "seconds": round(seconds, 1), **details})
        print(f"  {name}: {status} in {seconds:.1f} s", file=sys.stderr)
    total = time.perf_counter() - start

    table = pd.DataFrame([{k: r[k] for k in ("part", "status", "seconds", "summary")} for r in rows])
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(table.to_string(index=False))
    print(f"total {total:.1f} s (budget 300 s on a GPU)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "cuda": cuda, "device": device,
                                    "total_seconds": total, "parts": rows}, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    failed = [r["part"] for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed and cuda else 0


if __name__ == "__main__":
    sys.exit(main())
