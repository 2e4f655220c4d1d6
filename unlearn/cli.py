"""The ``unlearn`` command line: argument parsing and printing over :mod:`unlearn.pipeline`.

``unlearn run`` is the main job: train with the recorder, score memorization, pick a forget set, retrain a reference,
unlearn, attack and report (:func:`unlearn.pipeline.run`). Its output folder keeps every finished stage, so a rerun
only does what is missing. Errors a user can cause print one line and exit with status 2; ``--verbose`` shows
tracebacks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd

import proxies

from .algorithms.registry import methods
from .algorithms.rum import GROUPINGS, policies
from .data.sources import check_dataset_name, dataset_sources, datasets
from .evaluation.attacks import DEFAULT_ATTACKS
from .evaluation.attacks import attacks as attack_names
from .farm.registry import farms
from .models import get_model, is_model, models
from .pipeline import RunConfig, request, run, run_attack, run_proxies, train_original, verify
from .pipeline.config import TEXT_PROXIES
from .pipeline.config import run_proxies as proxies_for
from .training.augment import augmentations
from .training.trainer import PRECISIONS, recipes, top1_accuracy

RUN_DEFAULTS: dict[str, object] = {}
"""The defaults ``unlearn run`` and ``train`` declare, by option (a test holds them equal to :class:`RunConfig`'s)."""


class UsageError(Exception):
    """A mistake on the command line or in its inputs; shown as one line."""


def _only_given(p: argparse.ArgumentParser) -> None:
    """Leave options the user did not give out of the namespace, so that a config file's settings stand; their
    declared defaults (RunConfig's) go to :data:`RUN_DEFAULTS`."""
    for action in p._actions:
        if action.dest not in ("help", "verbose", "config") and action.default is not argparse.SUPPRESS:
            RUN_DEFAULTS.setdefault(action.dest, action.default)
            action.default = argparse.SUPPRESS


# ------------------------------------------------------------------------------------------------ arguments

def _model_name(value: str) -> str:
    if not is_model(value):
        try:
            get_model(value)
        except (ValueError, ModuleNotFoundError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _dataset_name(value: str) -> str:
    try:
        return check_dataset_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", type=_dataset_name, metavar="NAME",
                   help=f"training data: one of {', '.join(datasets())} (default: digits, scikit-learn's real 8x8 "
                        "digits, nothing to download); or "
                        + "; or ".join(dataset_sources().values())
                        + ". imagefolder: holds out a stratified 20%% of each class as test with a fixed seed, "
                          "normalises with the training split and picks the model from the image size")
    g.add_argument("--root", default=None,
                   help="folder of torchvision-format datasets (default: $UNLEARN_DATA or ~/.cache/memunlearn)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--train-size", type=int, default=None, help="train on a seeded random subset of this size")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training set held out for validation (default: 0.1)")
    g.add_argument("--stream", action="store_true",
                   help="read the splits a batch at a time instead of into memory (an imagefolder: is then never "
                        "decoded whole; every stage streams; its normalisation is summed over one pass)")
    g.add_argument("--num-workers", type=int, default=0,
                   help="with --stream: DataLoader worker processes reading the items (default: 0, in the main "
                        "process)")
    g = p.add_argument_group("text data (fortunes, text:PATH)")
    g.add_argument("--canaries", type=int, default=None, metavar="K",
                   help="insert K secrets 'my PIN is d d d d d d' into the training set, secret i repeated 1, 2, 4, "
                        "8, 16 or 32 times (i %% 6), each copy a training sequence (default: 12 for fortunes, 0 for "
                        "text:PATH)")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="size of the byte-level BPE trained on the training split (default: 2048)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="sequences are cut at this many tokens, bos and eos included (default: 64)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the recipe's, by default the dataset's recipe)")
    g.add_argument("--model", default=None, type=_model_name, metavar="NAME",
                   help=f"architecture: one of {models()}, timm:NAME (any timm model; needs the vision extra) or "
                        "torchvision:NAME, built for the data's classes, channels and image size (default: the "
                        "dataset's model)")
    g.add_argument("--model-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="keywords of the model's factory, values read as JSON, e.g. for timm:vit_tiny_patch16_224 on "
                        "28x28 images patch_size=7 depth=6")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="start every model of the run (original, reference, shadow and subset models) from this "
                        "local state_dict file instead of a random initialisation; nothing is downloaded. A timm model "
                        "adapts it as its pretrained weights (a new head for other classes)")
    g.add_argument("--recipe", default=None, choices=recipes(), metavar="NAME",
                   help="named training recipe (optimizer, schedule and training-time augmentation), one of "
                        f"{recipes()}: a dataset's name is its default recipe, cifar-resnet18 the anchors' CIFAR "
                        "ResNet-18 one (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 512, 30 epochs, x0.1 at 15/20/25, "
                        "random crop with padding 4 and a horizontal flip; the cifar10 / cifar100 default), "
                        "fashion-mnist-augmented the fashion-mnist default with a crop of padding 2 and a flip, "
                        "fashion-mnist-vit a small ViT's (AdamW lr 1e-3, wd 0.05, warmup then cosine, 10 epochs; with "
                        "--model vit_mini). The "
                        "options below override its values (default: the dataset's recipe)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs")
    g.add_argument("--lr", type=float, default=None, help="SGD learning rate")
    g.add_argument("--batch-size", type=int, default=None, help="minibatch size")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay")
    g.add_argument("--schedule", default=None, choices=["cosine", "step", "linear", "constant"],
                   help="learning-rate schedule, set per epoch")
    g.add_argument("--augment", default=None, choices=augmentations(), metavar="NAME",
                   help=f"training-time augmentation of the training batches, one of {augmentations()} (crop: a "
                        "random crop of the image zero-padded by 4 pixels a side; flip: a horizontal flip with "
                        "probability 1/2; crop_flip: both, the CIFAR anchors'; crop2_flip: both, padded by 2). The "
                        "model and the recording see the augmented presentations; evaluation, the model-based "
                        "proxies, the attacks and the unlearning methods other than retrain see the data as it is "
                        "(default: the recipe's)")
    g.add_argument("--seed", type=int, default=0, help="seed of the splits, initialisation and shuffling (default: 0)")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    g.add_argument("--checkpoints", type=int, default=3,
                   help="evenly spaced epoch checkpoints kept for checkpoint-averaged proxies such as loss curvature; "
                        "the last epoch is always one (default: 3)")
    g.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="arithmetic of the training: fp32 (the default; on CUDA its matmuls and convolutions use "
                        "TF32 tensor cores) or bf16 (autocast: bfloat16 matmuls and convolutions, float32 weights, "
                        "optimizer, loss and recording; on CUDA about twice as fast, on the CPU too where it has "
                        "bf16 instructions)")
    g.add_argument("--channels-last", action="store_true", default=None,
                   help="keep the model's convolution weights and the image batches in channels-last memory order, "
                        "the layout cuDNN's tensor-core convolutions want (faster on CUDA with --precision bf16; the "
                        "same values up to rounding)")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="bitwise-reproducible CUDA training: deterministic algorithms, cuDNN deterministic without "
                        "benchmark, CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set (slower on CUDA; CPU training is "
                        "deterministic for a seed already)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Memorization-aware machine unlearning: train with per-example dynamics recorded, score "
                    "memorization with cheap proxies, and remove training examples from a classifier.")
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)  # options every command also takes after its name
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")

    p = sub.add_parser("train", parents=[common], help="train a model and record its per-example training dynamics",
                       description="Train a model with the training recorder; writes model.pt (state_dict), "
                                   "recording.npz, history.csv and config.json to --out.")
    _add_data_options(p)
    _add_train_options(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite a folder trained with other settings")
    _only_given(p)

    p = sub.add_parser(
        "run", parents=[common], help="the main job: train, score memorization, unlearn a forget set, attack, report",
        description="Train (or reuse from --out) the original model with the training recorder, compute the "
                    "memorization proxies, choose a forget set, retrain a reference without it, unlearn it, evaluate "
                    "both with membership-inference attacks, and write results.json, report.md, scores.csv and PNG "
                    "figures to --out. A rerun with the same --out reuses every finished stage.")
    _add_data_options(p)
    _add_train_options(p)
    g = p.add_argument_group("unlearning")
    g.add_argument("--forget", default=None, metavar="SPEC",
                   help="the examples to remove: random:FRACTION or random:N (seeded random), high:N / low:N (the N "
                        "most / least memorized by --select-by), mixed:N (a third each of least, median and most "
                        "memorized), ids:FILE (training indices as in scores.csv, comma/space/newline separated, or "
                        "a CSV with an 'index' or 'source_row' column) or canaries (every copy of every canary of a "
                        "text dataset); default: canaries on text with canaries, else random:0.1")
    g.add_argument("--select-by", default=None, metavar="SCORE",
                   help="what ranks examples for high/low/mixed: a proxy name or 'memorization' (needs --fz-models); "
                        "default: memorization when --fz-models is set, else --proxy")
    g.add_argument("--method", default="rum", choices=methods(),
                   help="unlearning method; rum (the default) schedules one per memorization group")
    model_proxies = list(dict.fromkeys(proxies_for("classification") + proxies_for("causal_lm")))
    g.add_argument("--proxy", default=None, choices=model_proxies, metavar="PROXY",
                   help="memorization proxy that schedules rum and groups the report (default: confidence on images, "
                        f"token_accuracy on text); one of {model_proxies} that scores the data's examples")
    g.add_argument("--proxies", nargs="+", default=None, metavar="PROXY", choices=model_proxies,
                   help="proxies to compute and report (default on images: the recording-based ones and "
                        "loss_curvature, which costs ~20 forward-backward passes per checkpoint; on text: "
                        f"{' '.join(TEXT_PROXIES)}); --proxy and --select-by must be among them")
    g.add_argument("--grouping", default="training_set", choices=list(GROUPINGS),
                   help="how rum forms its memorization groups: training_set (the default: bins between the "
                        "training set's score tertiles, the same levels whatever the request's size) or request (the "
                        "RUM paper's: a third of the forget set each, by rank within it)")
    g.add_argument("--policy", default=None, choices=policies(),
                   help="rum's built-in policy. Default: random_label_to_expected on images, npo_graded on text "
                        "(policies whose cost follows the request, not the retain set; the run warns before a plan "
                        "that would pass over more examples than retraining). To choose: the cheap ones cost a few "
                        "percent of retraining and may leave part of the most memorized group; the paper's recipes "
                        "cost about their fine-tuning epochs over the recipe's epochs (10/3 on a 3-epoch recipe); "
                        "benchmarks/README.md compares them. The policies: finetune_salun (the paper's first recipe, "
                        "unlearn()'s default: fine-tune the medium group, SalUn on the high one, over the whole "
                        "retain set), neggrad_plus "
                        "(its second), random_label_fast (random labels on the high group only, 2 epochs on a retain "
                        "sample of 16 per forget example: a few percent of retraining), random_label_repair (the "
                        "same plus 1 epoch of fine-tuning on another such sample), random_label_to_expected (random "
                        "labels on the medium and high groups, each stopped once its accuracy falls to what a model "
                        "that never saw it is expected to score, estimated from the recording; then 1 epoch of "
                        "fine-tuning; up to 10 epochs on a sample of 16 per forget example). On text: npo_graded (the "
                        "text default, chosen by benchmarks/bench_text_unlearn.py: NPO on every group, 2, 5 and 10 "
                        "epochs as memorization grows) or npo_to_expected (NPO on the medium and high groups, each "
                        "stopped once its token accuracy falls to that of held-out sequences of its kind)")
    g.add_argument("--method-config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="settings of --method, e.g. epochs=3 lr=0.01 (values read as JSON: numbers, true/false, "
                        "quoted or bare strings); for rum: groups, order, retain_per_forget; `unlearn run --method M "
                        "--method-config nope=1` lists a method's settings")
    g = p.add_argument_group("evaluation")
    g.add_argument("--attacks", nargs="+", default=None, choices=attack_names(),
                   metavar="ATTACK", help=f"membership-inference attacks, of {attack_names()} (default: "
                                          "loss_threshold loss_logreg svc on images, loss_threshold loss_logreg on "
                                          "text, where the language-model scores, PrivLeak and extraction are always "
                                          "reported; lira and rmia are added with --shadows)")
    g.add_argument("--shadows", type=int, default=0, metavar="K",
                   help="train K shadow models (even, >= 4; default 0: none) for LiRA and RMIA, and K train-then-"
                        "unlearn shadows for U-LiRA. Each example is IN for K/2 shadows and OUT for K/2 (RMIA tunes "
                        "on one); each U-LiRA shadow unlearns a random 20%% of the training examples in its half, "
                        "so a forget example has Binomial(K/2, 0.2) unlearned shadows, K/10 on average. K=4: 64%% "
                        "of forget examples have none (not scored) and 32%% one (scored with the global variance); "
                        "K=16: 17%% / 34%%; use K >= 32 for U-LiRA (3%% none, 86%% with two or more, a variance of "
                        "their own)")
    g.add_argument("--fz-models", type=int, default=0, metavar="K",
                   help="train K subset models for ground-truth Feldman-Zhang memorization (hundreds for stable "
                        "scores; default 0: none); adds the proxy-vs-memorization figure")
    g.add_argument("--klom", type=int, default=0, metavar="N",
                   help="KLoM (Georgiev et al. 2024; images only): train N more originals, each unlearning the "
                        "forget set with --method, and N oracles retrained without it (N >= 2; default 0: none); "
                        "per example the KL divergence of the unlearned models' margins from the oracles' (0: "
                        "indistinguishable), reported as the 95th percentile over the forget, retain and validation "
                        "examples, and for each training example in scores.csv. EasyDUB uses 200 originals and "
                        "2,000 oracles; a few give a coarse, upward-biased estimate")
    _add_farm_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<dataset>)")
    g.add_argument("--force", action="store_true",
                   help="redo stages that --out holds with other settings instead of refusing")
    g.add_argument("--rows", type=int, default=10, help="rows of the proxy table to print (default: 10)")
    g.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="read the settings from a TOML file (e.g. a run folder's config.toml, which every run "
                        "writes: `unlearn run --config OUT/config.toml` repeats that run); options given here "
                        "override it")
    _only_given(p)

    p = sub.add_parser("proxies", parents=[common], help="compute the memorization proxies of a trained run folder",
                       description="Compute per-example memorization proxies for the model and training recording "
                                   "in a folder written by `unlearn train` or `unlearn run`; writes them as a CSV "
                                   "indexed by training index.")
    p.add_argument("run", type=Path, help="folder written by `unlearn train` or `unlearn run`")
    p.add_argument("--proxies", nargs="+", default=None, choices=proxies.available(), metavar="PROXY",
                   help=f"which proxies (default: the recording-based ones and loss_curvature); of "
                        f"{proxies.available()}")
    p.add_argument("--fz-models", type=int, default=0, metavar="K",
                   help="also train K subset models for Feldman-Zhang memorization and c-scores (0: none)")
    p.add_argument("--to", type=Path, default=None, help="CSV to write (default: <run>/proxy_scores.csv)")
    p.add_argument("--root", default=None, help="dataset folder, as when the run was trained")
    p.add_argument("--device", default=None, help="torch device for the models, e.g. cpu or cuda (default: cuda if "
                                                  "available)")
    p.add_argument("--rows", type=int, default=10, help="rows of the table to print (default: 10)")
    _add_farm_options(p)

    p = sub.add_parser("attack", parents=[common], help="evaluate a saved model with membership-inference attacks",
                       description="Attack a saved model (default: the run's unlearned.pt) on the run's forget set "
                                   "(or --forget), beside the run's retrained reference when it has one; prints the "
                                   "report and writes attack-<model>.json to the run folder.")
    p.add_argument("run", type=Path, help="folder written by `unlearn run` (or `unlearn train` with --forget)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="state_dict of the model to attack (default: <run>/unlearned.pt)")
    p.add_argument("--forget", default=None, metavar="SPEC",
                   help="forget set, as in `unlearn run` (default: the run's forget.csv)")
    p.add_argument("--select-by", default="confidence", choices=proxies.RECORDING_PROXIES, metavar="PROXY",
                   help="the proxy that ranks examples for --forget high:N / low:N / mixed:N, read from the run's "
                        f"recording: one of {proxies.RECORDING_PROXIES} (default: confidence)")
    p.add_argument("--attacks", nargs="+", default=list(DEFAULT_ATTACKS), choices=attack_names(),
                   metavar="ATTACK", help=f"attacks to run, of {attack_names()} (default: loss_threshold "
                                          "loss_logreg svc; lira and rmia are added with --shadows)")
    p.add_argument("--shadows", type=int, default=0, metavar="K",
                   help="train (or reuse) K shadow models for LiRA and RMIA (even, >= 4; 0: none): each example is "
                        "IN for K/2 of them and OUT for K/2; 16+ for stable scores")
    p.add_argument("--root", default=None, help="dataset folder, as when the run was trained")
    p.add_argument("--device", default=None, help="torch device for the models, e.g. cpu or cuda (default: cuda if "
                                                  "available)")
    _add_farm_options(p)

    p = sub.add_parser("request", parents=[common], help="delete further examples from a finished run's model",
                       description="Unlearn further examples from a finished run's latest model (the ledger's last), "
                                   "retrain the reference without every example deleted so far, evaluate, and "
                                   "append the request to <run>/ledger.jsonl; writes <run>/requests/NNN/ and lists "
                                   "every request in the run's report.md. An example deleted before is refused, as "
                                   "is a ledger that does not verify. Interrupted, the same command resumes.")
    p.add_argument("run", type=Path, help="folder written by `unlearn run`")
    p.add_argument("--forget", required=True, metavar="SPEC",
                   help="the examples, as in `unlearn run` (ids:FILE, random:N, high:N, ...), chosen among those not "
                        "deleted yet; sizes and fractions count those")
    p.add_argument("--method", default=None, choices=methods(), metavar="METHOD",
                   help=f"how to unlearn, of {methods()} (default: the run's)")
    p.add_argument("--method-config", nargs="+", default=None, metavar="KEY=VALUE",
                   help="the method's settings (default: the run's, or the method's defaults with --method)")
    p.add_argument("--root", default=None, help="dataset folder, as when the run was trained")
    p.add_argument("--device", default=None, help="torch device for the models (default: the run's)")

    p = sub.add_parser("verify", parents=[common], help="check a run's deletion ledger against its files",
                       description="Recompute the sha256 of every file <run>/ledger.jsonl records and both of its "
                                   "chains (each request's model before is the previous one's model after; each "
                                   "line holds the hash of the line before), and say per request whether the model "
                                   "on disk is the one the ledger says was evaluated. Exits 1 when anything fails.")
    p.add_argument("run", type=Path, help="folder written by `unlearn run`")

    p = sub.add_parser("bench", parents=[common], help="run one of the benchmarks in benchmarks/",
                       description="Run benchmarks/bench_<NAME>.py from a source checkout, passing the remaining "
                                   "arguments through (e.g. `unlearn bench proxies --part kernels`; "
                                   "`unlearn bench unlearn -- --help` shows a benchmark's own options).")
    p.add_argument("name", choices=_benchmarks() or None, metavar="NAME",
                   help=f"which benchmark: {', '.join(_benchmarks()) or 'none found (not a source checkout)'}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    return parser


def _add_farm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model farm (shadow and subset models)")
    g.add_argument("--farm", default="local", choices=farms(),
                   help="where the many small models train: here, one after another, or as Ray tasks (pip install "
                        "'memunlearn[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, else a local instance)")
    g.add_argument("--gpus-per-model", type=float, default=None,
                   help="fraction of a GPU each Ray task asks for when the cluster has GPUs (e.g. 0.25)")


def _benchmarks() -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    return sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py"))


def parse_method_config(items: list[str], option: str = "--method-config") -> dict:
    """``KEY=VALUE`` strings as a method's (or model's) settings; values read as JSON, else kept as strings."""
    config = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. epochs=3")
        try:
            config[key] = json.loads(text)
        except ValueError:
            config[key] = text  # a bare string
    return config


def run_config(args: argparse.Namespace) -> RunConfig:
    """The settings of ``unlearn run`` / ``train``: ``--config`` (else the defaults), then the options given."""
    settings = vars(RunConfig.from_toml(args.config)) if getattr(args, "config", None) is not None else {}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "verbose", "config")}
    if "method_config" in given:
        given["method_config"] = parse_method_config(given["method_config"])
    if "model_options" in given:
        given["model_options"] = parse_method_config(given["model_options"], "--model-options")
    if given.get("out") is not None:
        given["out"] = str(given["out"])
    return RunConfig.from_mapping({**settings, **given})  # what neither sets: the defaults for the data's kind


def cmd_train(args: argparse.Namespace) -> None:
    splits, model, _ = train_original(run_config(args))
    if getattr(splits, "tokenizer", None) is not None:  # a language model: exact match says little
        from .evaluation.attacks import extract_signals
        from .evaluation.language import perplexity

        print(f"test perplexity {perplexity(extract_signals(model, splits.test)):.2f}")
    else:
        print(f"test accuracy {top1_accuracy(model, splits.test):.4f}")


def cmd_run(args: argparse.Namespace) -> None:
    config = run_config(args)
    result = run(config)
    results, per_group = result.results, result.results.attrs["per_group"]
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(f"\n{results.to_string()}\n\nforget accuracy by {config.proxy} group:\n{per_group.to_string()}")
    print(f"\n{results.attrs['summary']}")


def cmd_proxies(args: argparse.Namespace) -> None:
    table = run_proxies(args.run, args.proxies, fz_models=args.fz_models, root=args.root, device=args.device,
                        farm=args.farm, farm_options=_farm_options(args), to=args.to)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(table.head(args.rows).to_string())
    print(f"\nwrote {len(table.columns)} proxies for {len(table)} examples to "
          f"{args.to or args.run / 'proxy_scores.csv'}")


def cmd_attack(args: argparse.Namespace) -> None:
    report = run_attack(args.run, checkpoint=args.checkpoint, forget=args.forget, select_by=args.select_by,
                        attacks=args.attacks, shadows=args.shadows, root=args.root, device=args.device,
                        farm=args.farm, farm_options=_farm_options(args))
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(report.to_string())
    print(f"\nwrote {report.attrs['written']}")


def cmd_request(args: argparse.Namespace) -> None:
    method_config = None if args.method_config is None else parse_method_config(args.method_config)
    result = request(args.run, args.forget, method=args.method, method_config=method_config, root=args.root,
                     device=args.device)
    with pd.option_context("display.width", 160, "display.precision", 4):
        print(f"\n{result.results.to_string()}")
    print(f"\n{result.results.attrs['summary']}")


def cmd_verify(args: argparse.Namespace) -> int:
    table = verify(args.run)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print(table.to_string(index=False))
    if not table.attrs["ok"]:
        print(f"\n{args.run}: the ledger does NOT verify", file=sys.stderr)
        return 1
    print(f"\n{args.run}: every request verifies; the latest model is {table.attrs['current']}")
    return 0


def _farm_options(args: argparse.Namespace) -> dict:
    return RunConfig(farm=args.farm, ray_address=args.ray_address, gpus_per_model=args.gpus_per_model).farm_options()


def cmd_bench(args: argparse.Namespace) -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{args.name}.py"
    if not script.is_file():
        raise UsageError(f"no benchmark {args.name!r}: the benchmarks live in the source checkout's benchmarks/")
    passthrough = args.args[1:] if args.args[:1] == ["--"] else args.args
    completed = subprocess.run([sys.executable, str(script), *passthrough], cwd=script.parent.parent)
    if completed.returncode:
        raise UsageError(f"benchmark {args.name} exited with status {completed.returncode}")


COMMANDS = {"train": cmd_train, "run": cmd_run, "proxies": cmd_proxies, "attack": cmd_attack,
            "request": cmd_request, "verify": cmd_verify, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"unlearn {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            status = COMMANDS[args.command](args)
    except (UsageError, ValueError, OSError) as err:
        if args.verbose:
            raise
        print(f"unlearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            raise
        _close_bars()
        print(f"unlearn {args.command}: interrupted; {_resumes_from(args)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped
    return status or 0


def _close_bars() -> None:
    """Close the progress bars an interrupt left open, so that the message after them starts its own line (a bar
    closes when its loop is collected, after the message)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _resumes_from(args: argparse.Namespace) -> str:
    """What the same command does next after an interrupt: where it resumes."""
    if args.command == "request":
        return f"the same command resumes from what {args.run}/requests holds of it (its finished stages are kept)"
    if args.command in ("train", "run"):
        try:
            folder = run_config(args).folder
        except (UsageError, ValueError, OSError):
            folder = getattr(args, "out", None) or "its output folder"
        return (f"the same command resumes from what {folder} holds (finished stages, trained epochs and models "
                "are kept)")
    return "the same command starts again (models of the farm already on disk are kept)"


if __name__ == "__main__":
    sys.exit(main())
