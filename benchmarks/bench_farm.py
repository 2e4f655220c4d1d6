"""Models per minute of the model farms: the same subset models trained by LocalFarm, PackedFarm and RayFarm.

Every farm trains the same K subset models (``train_and_predict``, the dataset's recipe; ``--epochs`` overrides its
epochs) into a fresh folder. ``local`` runs them one after another with torch's default threads; ``local-1thread``
does the same with one thread, the reference the Ray results must equal bit for bit (CPU sums depend on the thread
count); ``packed`` trains them P at a time as one vmapped ensemble (:class:`unlearn.farm.packed.PackedFarm`), one
row per ``--pack-sizes`` P, with torch's default threads; its logits equal ``local``'s up to float rounding
(``max_abs_diff_vs_*``, ``same_predictions``). ``ray`` runs them as Ray tasks, one CPU and one torch thread each (a
fraction of a GPU each where the cluster has GPUs). Ray's start and its workers' first import of torch are timed
apart (``startup_s``) and left out of the rate. The local and packed farms run on each of ``--devices`` (default:
the CPU, and CUDA where there is one); each device's rows are compared with that device's first one
(``speedup_vs_first``) and with its ``local-1thread`` or else ``local`` row. Prints a table and writes JSON.

    python benchmarks/bench_farm.py [--models 16] [--epochs 30] [--ray-cpus 2] [--farms local,local-1thread,ray]
    python benchmarks/bench_farm.py --farms local,packed --pack-sizes 1,4,16 --epochs 5   # one at a time vs packed
    RAY_ADDRESS=auto python benchmarks/bench_farm.py --dataset cifar10 --download --models 16 --epochs 2 --farms ray \
        --gpus-per-model 0.25
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from unlearn.data import load_dataset
from unlearn.farm import LocalFarm, TrainTask, train_and_predict
from unlearn.farm.packed import PackedFarm
from unlearn.farm.subset_models import subset_jobs
from unlearn.models import create_model
from unlearn.training import RECIPES

FARMS = ("local", "local-1thread", "packed", "ray")


def _warm_worker() -> int:
    """A no-op task that makes a Ray worker import what the training tasks import."""
    import unlearn.evaluation.attacks.signals  # noqa: F401
    import unlearn.training  # noqa: F401

    time.sleep(0.5)  # hold the worker so that the other warm-up tasks start the other workers
    return os.getpid()


def start_ray(args) -> tuple[object, float]:
    """Connect to (or start) Ray and warm one worker per CPU; the Ray module and the seconds it took."""
    import ray

    start = time.perf_counter()
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False)
    slots = int(ray.cluster_resources().get("CPU", 1))
    ray.get([ray.remote(num_cpus=1)(_warm_worker).remote() for _ in range(slots)])
    return ray, time.perf_counter() - start


def run_farm(name: str, farm_options: dict, jobs, task) -> tuple[float, np.ndarray]:
    """Seconds to train ``jobs`` with the farm ``name`` in a fresh folder, and the logits ``[K, N, C]``."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        if name == "ray":
            from unlearn.farm.ray import RayFarm

            farm = RayFarm(folder, progress=False, **farm_options)
        elif name == "packed":
            farm = PackedFarm(folder, progress=False, **farm_options)
        else:
            farm = LocalFarm(folder, progress=False)
            if name == "local-1thread":
                torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            results = farm.run(train_and_predict, jobs, task)
            if task.device is not None and torch.device(task.device).type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
    return seconds, np.stack([results[job.key]["logits"] for job in jobs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(RECIPES), help="dataset (default: digits)")
    parser.add_argument("--train-size", type=int, default=None, help="train on a seeded subset of this size")
    parser.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    parser.add_argument("--models", type=int, default=16, help="subset models per farm (default: 16)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the dataset's recipe)")
    parser.add_argument("--farms", default=",".join(FARMS), help=f"comma-separated, of {', '.join(FARMS)} "
                        "(default: all)")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(),
                        help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--address", default=None, help="a Ray cluster to use instead (default: $RAY_ADDRESS)")
    parser.add_argument("--gpus-per-model", type=float, default=1.0,
                        help="GPU fraction per Ray task where the cluster has GPUs (default: 1)")
    parser.add_argument("--pack-sizes", default="4,16",
                        help="models per pack of the packed farm, one row each (default: 4,16)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated devices of the local and packed farms (default: cpu, and cuda where "
                             "there is one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_farm.json"), help="JSON output")
    args = parser.parse_args()
    farms = [name.strip() for name in args.farms.split(",") if name.strip()]
    unknown = sorted(set(farms) - set(FARMS))
    if unknown or not farms:
        parser.error(f"--farms takes names from {', '.join(FARMS)}, got {args.farms!r}")

    splits = load_dataset(args.dataset, download=args.download,
                          **({"train_size": args.train_size} if args.train_size else {}))
    recipe = RECIPES[args.dataset].as_kwargs()
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    model_fn = functools.partial(create_model, splits.default_model, num_classes=splits.num_classes,
                                 in_channels=splits.in_channels)
    jobs = subset_jobs(len(splits.train), args.models)
    try:
        pack_sizes = [int(p) for p in args.pack_sizes.split(",") if p.strip()]
    except ValueError:
        pack_sizes = []
    if "packed" in farms and (not pack_sizes or min(pack_sizes) < 1):
        parser.error(f"--pack-sizes takes whole numbers >= 1, got {args.pack_sizes!r}")
    devices = ([d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else
               ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    load_before = os.getloadavg()
    ray, startup = None, None
    if "ray" in farms:
        ray, startup = start_ray(args)
    rows, logits = [], {}
    for device in devices:
        device_rows = []
        for name in farms:
            if name == "ray" and device != devices[0]:
                continue  # Ray's tasks pick their own device (a GPU where the cluster has them)
            task = TrainTask(splits.train, model_fn, recipe, None if name == "ray" else device)
            for size in (pack_sizes if name == "packed" else [None]):
                label = f"packed-{size}" if size else name
                options = {"models_per_pack": size} if size else {"gpus_per_model": args.gpus_per_model}
                seconds, logits[device, label] = run_farm(name, options, jobs, task)
                if name == "ray":
                    cluster = ray.cluster_resources()
                    parallel, threads = int(cluster.get("CPU", 1)), 1
                    if cluster.get("GPU", 0) > 0:
                        parallel = int(cluster["GPU"] / args.gpus_per_model)
                else:
                    parallel = size or 1
                    threads = 1 if name == "local-1thread" else torch.get_num_threads()
                device_rows.append({"farm": label, "device": "ray" if name == "ray" else device,
                                    "parallel_models": parallel, "threads_per_model": threads,
                                    "models": args.models, "seconds": seconds,
                                    "models_per_min": 60.0 * args.models / seconds,
                                    "startup_s": startup if name == "ray" else 0.0})
                print(f"{device} {label}: {device_rows[-1]['models_per_min']:.3g} models/min", flush=True)
        labels = [row["farm"] for row in device_rows]
        reference = "local-1thread" if "local-1thread" in labels else "local" if "local" in labels else labels[0]
        for row in device_rows:
            row["speedup_vs_first"] = device_rows[0]["seconds"] / row["seconds"]
            mine, theirs = logits[device, row["farm"]], logits[device, reference]
            row["reference"] = reference
            row["max_abs_diff_vs_reference"] = float(np.abs(mine - theirs).max())
            row["identical_to_reference"] = bool(np.array_equal(mine, theirs))
            row["same_predictions"] = float((mine.argmax(-1) == theirs.argmax(-1)).mean())
            per_model = np.abs(mine - theirs).reshape(len(jobs), -1).max(1)  # rounding grows through training
            row["median_model_max_abs_diff"] = float(np.median(per_model))
            row["models_within_1e-4"] = float((per_model <= 1e-4).mean())
        rows.extend(device_rows)
    load_after = os.getloadavg()

    table = pd.DataFrame(rows)
    print(f"{args.dataset}: {args.models} subset models of {len(jobs[0].train_ids)} examples, "
          f"{recipe['epochs']} epochs (batch {recipe['batch_size']}); torch {torch.__version__}, "
          f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
          + (f"; ray {ray.__version__}" if ray else ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "dataset": args.dataset, "examples": len(splits.train), "models": args.models, "recipe": recipe,
        "torch": torch.__version__, "ray": getattr(ray, "__version__", None), "cores": os.cpu_count(),
        "default_threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": load_after,
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")
    if ray is not None and not args.address and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
