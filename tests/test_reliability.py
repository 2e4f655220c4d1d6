"""Never a silent NaN model: non-finite inputs are refused before any work, and a training or unlearning run whose
loss or weights become non-finite stops with an error naming the epoch and step, returning nothing."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from unlearn import NonFiniteError, train, unlearn
from unlearn.data import IndexedDataset, Streamed

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data(digits):
    """200 digits in memory, and a copy with example 7's pixels NaN and example 11's infinite."""
    x, y = digits.train.inputs[:200].clone(), digits.train.targets[:200].clone()
    broken = x.clone()
    broken[7, 0, 3, 3] = float("nan")
    broken[11, 0, 0, 0] = float("inf")
    return IndexedDataset(x, y), IndexedDataset(broken, y)


def quick(**options):
    return {"epochs": 2, "batch_size": 32, "progress": False, "device": "cpu", **options}


def test_training_refuses_non_finite_inputs_before_any_work(data):
    _, broken = data
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"training set has 2 examples whose inputs are NaN or infinite \(training "
                                         r"indices \[7, 11\]\)"):
        train(model, broken, **quick())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    train(mlp(), Subset(broken, [i for i in range(200) if i not in (7, 11)]), **quick())  # the rest trains


def test_a_streamed_non_finite_example_stops_training_at_its_epoch_and_step(data):
    _, broken = data
    stream = Streamed(Subset(broken, list(range(100, 200)) + [7]))  # not read up front: the loss finds it
    with pytest.raises(NonFiniteError, match=r"loss became NaN or infinite at epoch 1, step \d+"):
        train(mlp(), stream, **quick(batch_size=101))


def test_a_diverging_training_stops_instead_of_returning_a_nan_model(data):
    clean, _ = data
    with pytest.raises(NonFiniteError, match=r"at epoch \d, step \d+: .* lower the learning rate"):
        train(mlp(), clean, **quick(lr=1e12, momentum=0.0, epochs=5))
    assert issubclass(NonFiniteError, ValueError) and issubclass(NonFiniteError, FloatingPointError)


@pytest.mark.parametrize("what, inputs, message", [
    ("forget", "broken", r"forget set has 1 examples whose inputs are NaN or infinite \(training indices \[7\]\)"),
    ("retain", "broken", r"retain set has 1 examples whose inputs are NaN or infinite \(training indices \[11\]\)"),
    ("model", "clean", r"the model to unlearn from: the weights \['1.weight'\] are NaN or infinite"),
])
def test_unlearn_refuses_non_finite_inputs_and_weights(data, what, inputs, message):
    clean, broken = data
    dataset = {"clean": clean, "broken": broken}[inputs]
    model, _ = train(mlp(), clean, **quick())
    if what == "model":
        with torch.no_grad():
            model[1].weight[0, 0] = float("nan")
    forget = Subset(dataset, [3, 5, 7] if what == "forget" else [3, 5])  # 7: NaN pixels, 11: an infinite one
    retain = Subset(dataset, [i for i in range(8, 200) if i != 11 or what == "retain"])
    with pytest.raises(ValueError, match=message):
        unlearn(model, forget=forget, retain=retain, method="finetune", epochs=1)


def test_a_diverging_method_raises_rather_than_return_a_nan_model(data):
    clean, _ = data
    model, _ = train(mlp(), clean, **quick())
    forget, retain = Subset(clean, range(20)), Subset(clean, range(20, 200))
    with pytest.raises(NonFiniteError, match=r"NaN or infinite at epoch \d, step \d+"):
        unlearn(model, forget=forget, retain=retain, method="neggrad", lr=1e12, momentum=0.0, epochs=3)
    finite = unlearn(model, forget=forget, retain=retain, method="neggrad", epochs=1).model
    assert all(torch.isfinite(p).all() for p in finite.parameters())
    assert np.isfinite(finite(clean.inputs[:4]).detach().numpy()).all()


def test_scores_without_a_direction_are_refused_and_a_proxys_column_keeps_its_own(data, tmp_path):
    import pandas as pd

    import proxies

    clean, _ = data
    recorder = proxies.TrainingRecorder(len(clean))
    model, _ = train(mlp(), clean, recorder=recorder, **quick(epochs=3))
    forget, retain = Subset(clean, range(0, 200, 10)), Subset(clean, [i for i in range(200) if i % 10])
    leave = {"low": "noop", "medium": "noop", "high": "noop"}  # the plan's groups are what is checked
    confidence = proxies.compute("confidence", recording=recorder)  # lower confidence: more memorized
    expected = unlearn(model, forget=forget, retain=retain, scores=confidence, policy=leave)
    pd.DataFrame({"confidence": confidence}).to_csv(tmp_path / "scores.csv")
    read_back = pd.read_csv(tmp_path / "scores.csv", index_col=0)["confidence"]  # attrs lost, name kept
    assert "higher_is_memorized" not in read_back.attrs
    groups = {s.group: list(s.indices) for s in expected.plan}
    same = unlearn(model, forget=forget, retain=retain, scores=read_back, policy=leave)
    assert {s.group: list(s.indices) for s in same.plan} == groups
    unnamed = read_back.rename("score")  # e.g. after a join
    with pytest.raises(ValueError, match="do not say which way they point"):
        unlearn(model, forget=forget, retain=retain, scores=unnamed, policy=leave)
    with pytest.raises(ValueError, match="given as an array do not say which way"):
        unlearn(model, forget=forget, retain=retain, scores=unnamed.loc[list(forget.indices)].to_numpy(),
                policy=leave)
    told = unlearn(model, forget=forget, retain=retain, scores=unnamed, higher_is_memorized=False, policy=leave)
    assert {s.group: list(s.indices) for s in told.plan} == groups
    reversed_plan = unlearn(model, forget=forget, retain=retain, scores=unnamed, higher_is_memorized=True,
                            policy=leave)
    assert {s.group: list(s.indices) for s in reversed_plan.plan}["high"] == groups["low"]
    with pytest.raises(ValueError, match="contradicts the scores' own direction"):
        unlearn(model, forget=forget, retain=retain, scores=confidence, higher_is_memorized=True, policy=leave)


@pytest.mark.parametrize("device, message", [("cuda:7", r"device 'cuda:7' asked for, but this machine has \d CUDA"),
                                             ("gpu", "unknown device 'gpu'; expected e.g. 'cpu', 'cuda'")])
def test_a_device_this_machine_lacks_is_one_clear_line(data, device, message):
    from unlearn import evaluate

    clean, _ = data
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    model = mlp()
    forget, retain = Subset(clean, range(10)), Subset(clean, range(10, 200))
    with pytest.raises(ValueError, match=message):
        unlearn(model, forget=forget, retain=retain, method="finetune", device=device)
    with pytest.raises(ValueError, match=message):
        evaluate(model, forget=forget, retain=retain, test=retain, device=device)
    with pytest.raises(ValueError, match=message):
        train(model, clean, **{**quick(), "device": device})


def _float64(clean):
    return IndexedDataset(clean.inputs.double(), clean.targets)


@pytest.mark.parametrize("case, message", [
    ("float64 inputs", "the inputs are float64 but the model's weights are float32"),
    ("half model", "the inputs are float32 but the model's weights are float16"),
    ("flattened inputs", r"the model cannot take the training inputs of shape \[64\]"),
    ("label -1", r"model returns 10 logits but the labels span \[-1, 9\]"),
    ("label 10", r"model returns 10 logits but the labels span \[0, 10\]"),
])
def test_train_refuses_what_the_model_cannot_take_before_any_work(data, case, message):
    clean, _ = data
    x, y = clean.inputs, clean.targets.clone()
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    dataset = clean
    if case == "float64 inputs":
        dataset = _float64(clean)
    elif case == "half model":
        model = model.half()
    elif case == "flattened inputs":
        dataset = IndexedDataset(x.flatten(1), y)
    else:
        y[5] = -1 if case == "label -1" else 10
        dataset = IndexedDataset(x, y)
    model.train()
    with pytest.raises(ValueError, match=message):
        train(model, dataset, **quick())
    assert model.training  # the probe leaves the caller's model in its mode


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch, tmp_path, capsys):
    from unlearn import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "run", interrupted)
    assert cli.main(["run", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"unlearn run: interrupted; the same command resumes from what {tmp_path / 'run'} holds "
                   "(finished stages, trained epochs and models are kept)"]


TINY_RUN = ["run", "--train-size", "300", "--epochs", "3", "--checkpoints", "1", "--forget", "random:30",
            "--attacks", "loss_threshold", "--policy", "random_label_fast"]


def _unlearn_command(*args):
    import sys

    return [sys.executable, "-m", "unlearn.cli", *args]


def _env():
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    import subprocess

    whole = tmp_path_factory.mktemp("whole")
    subprocess.run(_unlearn_command(*TINY_RUN, "--out", str(whole)), check=True, env=_env(), capture_output=True)
    return whole


@pytest.mark.slow  # thirteen runs of the command in fresh interpreters
@pytest.mark.parametrize("stage", range(1, 7))
def test_sigint_in_each_stage_exits_130_in_one_line_and_the_rerun_finishes_the_job(tmp_path, uninterrupted, stage):
    import signal
    import subprocess

    env = _env()
    out = tmp_path / "run"
    process = subprocess.Popen(_unlearn_command(*TINY_RUN, "--out", str(out)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if f"[{stage}/6]" in line:
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("unlearn run: interrupted; the same command resumes from what")
    subprocess.run(_unlearn_command(*TINY_RUN, "--out", str(out)), check=True, env=env, capture_output=True)
    for name in ("model.pt", "reference.pt", "unlearned.pt", "scores.csv", "forget.csv"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name


def test_outputs_are_written_whole(tmp_path, data):
    from proxies.files import written
    from unlearn.training import save_checkpoint

    path = tmp_path / "model.pt"
    model = mlp()
    save_checkpoint(model, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"), written(path) as tmp:
        tmp.write_bytes(b"half a mod")
        raise RuntimeError("disk full")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.state_dict())


def test_a_file_written_whole_does_not_depend_on_its_temporary_name(tmp_path):
    """torch.save names its archive after the file it writes: one written through a temporary name holding the
    process id differed from run to run (a resumed run's model.pt from an uninterrupted run's)."""
    from unlearn.training import save_checkpoint

    model = mlp()
    save_checkpoint(model, tmp_path / "model.pt")
    plain = tmp_path / "plain" / "model.pt"
    plain.parent.mkdir()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, plain)
    assert (tmp_path / "model.pt").read_bytes() == plain.read_bytes()


def test_unlearning_steps_show_a_bar_once_they_last_a_second(data, monkeypatch):
    import tqdm.auto

    from unlearn.training import loop

    clean, _ = data
    model, _ = train(mlp(), clean, **quick())
    made = []

    class Bar(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loop, "tqdm", Bar)
    unlearn(model, forget=Subset(clean, range(10)), retain=Subset(clean, range(10, 200)), method="finetune",
            epochs=2)
    assert [(k["desc"], k["delay"], k["disable"]) for k in made] == [("unlearning", 1.0, False)]
    token = loop.SHOW_BARS.set(False)  # a silent run (unlearn.pipeline.run(progress=False))
    try:
        unlearn(model, forget=Subset(clean, range(10)), retain=Subset(clean, range(10, 200)), method="finetune",
                epochs=1)
    finally:
        loop.SHOW_BARS.reset(token)
    assert made[-1]["disable"] is True


def test_a_model_without_values_is_refused(data):
    clean, _ = data
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match="on the 'meta' device, which holds shapes but no values"):
        unlearn(model, forget=Subset(clean, range(10)), retain=Subset(clean, range(10, 200)), method="finetune")


@pytest.mark.parametrize("damaged", ["model.pt", "recording.npz", "config.json", "checkpoints/epoch-002.pt"])
def test_force_trains_again_over_a_damaged_file(tmp_path, capsys, damaged):
    from unlearn.cli import main

    command = ["train", "--train-size", "60", "--epochs", "2", "--checkpoints", "2", "--out", str(tmp_path)]
    assert main(command) == 0
    before = (tmp_path / "model.pt").read_bytes()
    (tmp_path / damaged).write_text("garbage")
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "pass --force to train again" in err and "weights_only=False" not in err and "allow_pickle" not in err
    assert main([*command, "--force"]) == 0
    assert "training again (--force)" in capsys.readouterr().err
    assert (tmp_path / "model.pt").read_bytes() == before  # the same training, deterministic on the CPU
    assert main(command) == 0 and "reusing the trained model" in capsys.readouterr().out


def test_a_request_drawn_from_a_held_out_split_is_refused(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    retain = Subset(digits.train, range(100))
    for split, name in ((digits.test, "test"), (digits.val, "validation")):
        with pytest.raises(ValueError, match=f"forget set is drawn from the {name} split"):
            unlearn(model, forget=Subset(split, range(5)), retain=retain, method="finetune")
    with pytest.raises(ValueError, match="retain set is drawn from the test split"):
        unlearn(model, forget=Subset(digits.train, range(5)), retain=digits.test, method="finetune")


def test_a_config_file_means_the_same_from_any_directory(tmp_path, monkeypatch):
    from unlearn.pipeline import RunConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "request.txt").write_text("1 2 3\n")
    written = RunConfig(out="runs/mine", forget="ids:request.txt", dataset="digits").to_toml()
    assert f'out = "{tmp_path / "runs" / "mine"}"' in written  # absolute: where the run wrote
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "config.toml").write_text(written)
    (tmp_path / "hand.toml").write_text('out = "elsewhere"\nforget = "ids:request.txt"\n')  # relative, by hand
    monkeypatch.chdir("/")
    config = RunConfig.from_toml(tmp_path / "runs" / "mine" / "config.toml")
    assert (config.out, config.forget) == (str(tmp_path / "runs" / "mine"), f"ids:{tmp_path / 'request.txt'}")
    by_hand = RunConfig.from_toml(tmp_path / "hand.toml")
    assert (by_hand.out, by_hand.forget) == (str(tmp_path / "elsewhere"), f"ids:{tmp_path / 'request.txt'}")


def test_an_image_folder_needs_two_classes_and_readable_images(tmp_path):
    from PIL import Image

    from unlearn.data import load_dataset

    two, one = tmp_path / "two", tmp_path / "one"
    for folder, names in ((two, ("a", "b")), (one, ("a",))):
        for name in names:
            (folder / name).mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), color=40 * i).save(folder / name / f"{i}.png")
    with pytest.raises(ValueError, match=r"found 1 class folder \(\['a'\]\); a classifier needs at least two"):
        load_dataset(f"imagefolder:{one}")
    (two / "b" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read .*b/1.png as an image"):
        load_dataset(f"imagefolder:{two}")


def _unlearn_case(**options):
    """A case that unlearns 10 of the 200 examples from a fresh model (``model=`` replaces it; ``data=`` the set)."""
    def case(data, tmp_path):
        given = dict(options)
        clean = given.pop("data", None) or data[0]
        model = given.pop("model", None) or mlp()
        forget, retain = Subset(clean, range(10)), Subset(clean, range(10, 200))
        unlearn(model, forget=given.pop("forget", forget), retain=retain,
                **({"method": "finetune", "epochs": 1} if "method" not in given else {}), **given)
    return case


def _train_case(make):
    return lambda data, tmp_path: train(*make(data[0]), **quick())


def _ids_file(text):
    def case(data, tmp_path):
        from unlearn.data.selection import read_ids

        (tmp_path / "ids.txt").write_text(text)
        read_ids(tmp_path / "ids.txt")
    return case


def _meta_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _direction_lost(data, tmp_path):
    import pandas as pd

    scores = pd.Series(np.arange(200.0), name="score")  # e.g. a column after a join: no direction recorded
    _unlearn_case(method="rum", scores=scores)(data, tmp_path)


def _policy_group(data, tmp_path):
    import pandas as pd

    scores = pd.Series(np.arange(200.0), name="score")
    _unlearn_case(method="rum", scores=scores, higher_is_memorized=True,
                  policy={"lowish": "noop", "medium": "noop", "high": "noop"})(data, tmp_path)


def _few_logits(data, tmp_path):
    from unlearn import evaluate

    clean = data[0]
    evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), forget=Subset(clean, range(10)),
             retain=Subset(clean, range(10, 200)), test=Subset(clean, range(10, 50)))


def _streamed_targets(data, tmp_path):
    clean = data[0]
    train(mlp(), Streamed(clean, targets=torch.zeros(len(clean), dtype=torch.long)), **quick())


def _forget_spec(spec):
    def case(data, tmp_path):
        from unlearn.data.selection import select_forget

        select_forget(spec, num_train=200)
    return case


BAD_INPUTS = {  # what a user passes -> (exception, a fragment of its message)
    "NaN / inf training inputs": (lambda d, t: train(mlp(), d[1], **quick()), ValueError,
                                  "2 examples whose inputs are NaN or infinite (training indices [7, 11])"),
    "NaN forget inputs": (lambda d, t: _unlearn_case(data=d[1], forget=Subset(d[1], [3, 7]))(d, t), ValueError,
                          "forget set has 1 examples whose inputs are NaN or infinite"),
    "a model on the meta device": (_unlearn_case(model=_meta_model()), ValueError, "on the 'meta' device"),
    "scores without a direction": (_direction_lost, ValueError, "do not say which way they point"),
    "a policy naming an unknown group": (_policy_group, ValueError,
                                         "has entries for ['lowish'], which are not groups of this split"),
    "unlearn on cuda:7": (_unlearn_case(device="cuda:7"), ValueError, "device 'cuda:7' asked for"),
    "unlearn on mps": (_unlearn_case(device="mps"), ValueError, "device 'mps' asked for"),
    "evaluate on 'gpu'": (lambda d, t: __import__("unlearn").evaluate(
        mlp(), forget=Subset(d[0], range(5)), retain=Subset(d[0], range(5, 50)), test=d[0], device="gpu"),
        ValueError, "unknown device 'gpu'"),
    "float64 inputs": (_train_case(lambda c: (mlp(), _float64(c))), ValueError,
                       "the inputs are float64 but the model's weights are float32"),
    "a half model": (_train_case(lambda c: (mlp().half(), c)), ValueError, "model's weights are float16"),
    "flattened inputs": (_train_case(lambda c: (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()),
                                                IndexedDataset(c.inputs.flatten(1), c.targets))),
                         ValueError, "the model cannot take the training inputs of shape [64]"),
    "a label of 10": (_train_case(lambda c: (mlp(), IndexedDataset(c.inputs, torch.where(
        torch.arange(len(c)) == 5, 10, c.targets)))), ValueError, "the labels span [0, 10]"),
    "Subset(train, [99999])": (_train_case(lambda c: (mlp(), Subset(c, [0, 99999]))), ValueError,
                               "a Subset lists position 99999 of a dataset of 200 items"),
    "too few logits for evaluate()": (_few_logits, ValueError, "the model returns 5 logits but the labels span"),
    "Streamed(targets=wrong)": (_streamed_targets, ValueError, "targets disagree with the items"),
    "forget random:1.0": (_forget_spec("random:1.0"), ValueError, "a fraction lies in (0, 1)"),
    "forget random:1.5": (_forget_spec("random:1.5"), ValueError, "or a fraction in (0, 1)"),
    "an ids file with a bad line": (_ids_file("4\n5 6\nseven\n"), ValueError,
                                    "ids.txt, line 3: expected integer training indices, found 'seven'"),
    "an ids CSV with a bad row": (_ids_file("index\n4\n5.5\n"), ValueError, "ids.txt, line 3:"),
}
"""The bad-input matrix: every case is refused with the exception and words a user can act on. Cases with files
on disk or a run folder are in their own tests: the damaged run files (``test_force_trains_again_over_a_damaged_
file``, tests/pipeline/test_cli.py's ``FAULTS``), an image folder of one class or an unreadable image
(``test_an_image_folder_needs_two_classes_and_readable_images``), a held-out split (``test_a_request_drawn_from_a_
held_out_split_is_refused``), the command line's options (``test_run_input_errors_fail_before_training``), an
example deleted twice (tests/pipeline/test_ledger.py)."""


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_is_refused_with_what_was_expected(data, tmp_path, case):
    if case == "unlearn on cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    act, error, fragment = BAD_INPUTS[case]
    with pytest.raises(error) as raised:
        act(data, tmp_path)
    assert fragment in str(raised.value)


@pytest.mark.slow  # a fresh interpreter
def test_the_first_unlearning_of_a_process_does_not_pay_for_its_imports():
    """A process's first optimizer step imports torch's compiler (~1.3 s on two cores): unlearn() and the run's
    stages warm up before their clocks, so a rerun that reuses the trained model times only the method. Checked
    without timing anything: when unlearn()'s clock starts, the import is done."""
    import subprocess
    import sys

    code = """
import sys, time, torch
from torch import nn
from torch.utils.data import Subset
import unlearn.unlearning
from unlearn.data import IndexedDataset
clock = time.perf_counter
ready = []
def watched():
    ready.append("torch._dynamo" in sys.modules)
    return clock()
unlearn.unlearning.time = type(sys)("watched_time")
unlearn.unlearning.time.perf_counter = watched
data = IndexedDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
before = "torch._dynamo" in sys.modules
unlearn.unlearn(nn.Linear(4, 2), forget=Subset(data, range(8)), retain=Subset(data, range(8, 64)),
                method="finetune", epochs=1)
print(before, ready[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # not imported before the call; imported when its clock started
