import numpy as np
import pytest

import proxies
from proxies import TrainingRecorder


def _recording(correct_rows, confidence_rows=None):
    """A recording whose correctness per epoch is given (NaN = not presented); other columns derived from it."""
    correct = np.array(correct_rows, dtype=np.float32)
    conf = np.where(correct == 1, 0.9, 0.2) if confidence_rows is None else np.array(confidence_rows)
    values = np.stack([conf, conf, 1 - conf, -np.log(conf), correct], axis=2)
    missing = np.isnan(correct)
    # squared input-gradient norms as large as the loss, and a weight norm that peaks at the middle epoch
    gradients = np.where(missing, np.nan, -np.log(conf))
    norms = np.arange(len(correct), dtype=float)
    norms = np.minimum(norms, norms[::-1])
    return TrainingRecorder.from_values(np.where(missing[..., None], np.nan, values),
                                        input_gradient_norms=gradients, weight_norms=norms)


def test_learning_speed_proxies_match_hand_computation():
    rec = _recording([[0, 1, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]])
    table = proxies.compute(proxies.RECORDING_PROXIES, recording=rec)
    assert table["accuracy"].tolist() == [0.5, 1.0, 0.25]
    assert table["confidence"].tolist() == pytest.approx([0.55, 0.9, 0.375])
    assert table["csl"].tolist() == pytest.approx([-2 * np.log(0.9) - 2 * np.log(0.2), -4 * np.log(0.9),
                                                   -np.log(0.9) - 3 * np.log(0.2)])
    assert table["negative_entropy"].tolist() == pytest.approx([-0.45, -0.1, -0.625])
    assert table["forgetting_events"].tolist() == [1, 0, 1]
    assert table["first_learned"].tolist() == [1, 0, 0]
    assert table["presentations_needed"].tolist() == [3, 0, 4]
    assert table["csg"].tolist() == pytest.approx(table["csl"].tolist())  # the helper's gradients equal the loss
    # weight norms 0, 1, 1, 0 peak first at epoch 1: the losses of epochs 0 and 1
    assert table["sgal"].tolist() == pytest.approx([-np.log(0.2) - np.log(0.9), -2 * np.log(0.9),
                                                    -np.log(0.9) - np.log(0.2)])
    assert table.index.name == "index"
    assert table.attrs["higher_is_memorized"] == {
        "confidence": False, "max_confidence": False, "negative_entropy": False, "accuracy": False,
        "forgetting_events": True, "first_learned": True, "presentations_needed": True, "csl": True,
        "csg": True, "sgal": True, "loss_iqr": True, "memorization_estimate": True}


def test_never_learned_examples_count_every_presentation():
    rec = _recording([[0], [0], [0]])
    assert proxies.compute("forgetting_events", recording=rec).tolist() == [3]
    assert proxies.compute("first_learned", recording=rec).tolist() == [3]


def test_missed_presentations_are_skipped_not_counted():
    # example 0 missed epoch 1: 1, -, 1 has no forgetting event; example 1 missed epoch 0
    rec = _recording([[1, np.nan], [np.nan, 1], [1, 0]])
    table = proxies.compute(["accuracy", "forgetting_events"], recording=rec)
    assert table["accuracy"].tolist() == [1.0, 0.5]
    assert table["forgetting_events"].tolist() == [0, 1]


def test_an_example_never_presented_scores_nan_everywhere():
    rec = _recording([[1, np.nan, 0], [0, np.nan, 1]])
    table = proxies.compute(proxies.RECORDING_PROXIES, recording=rec)
    assert table.loc[1].isna().all() and table.drop(index=1).notna().all().all()
    assert table["forgetting_events"].tolist()[::2] == [1, 0]


def test_compute_names_a_misspelt_option_and_an_empty_list():
    rec = _recording([[1, 0]])
    with pytest.raises(TypeError, match=r"no proxy takes \['fractoin'\]"):
        proxies.compute("early_accuracy", recording=rec, fractoin=0.5)
    with pytest.raises(ValueError, match="names is empty"):
        proxies.compute([], recording=rec)


def _early_accuracy_by_hand(correct, fraction):
    """Slow reference: find the epoch by a loop over epochs, then each example's value there or later."""
    correct = np.asarray(correct, dtype=float)
    last = np.nanmean(correct[-1])
    epoch = next(e for e in range(len(correct)) if np.nanmean(correct[e]) >= fraction * last)
    values = []
    for i in range(correct.shape[1]):
        later = [c for c in correct[epoch:, i] if not np.isnan(c)]
        values.append(later[0] if later else np.nan)
    return epoch, values


@pytest.mark.parametrize("fraction", [0.5, 0.9, 1.0])
def test_early_accuracy_reads_the_epoch_training_accuracy_first_nears_its_end(fraction):
    nan = np.nan
    rows = [[0, 0, 1, 0, nan], [1, 0, 1, 0, 0], [1, nan, 1, 0, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    epoch, expected = _early_accuracy_by_hand(rows, fraction)
    got = proxies.compute("early_accuracy", recording=_recording(rows), fraction=fraction)
    assert epoch == {0.5: 2, 0.9: 3, 1.0: 3}[fraction]  # epoch 2 leaves example 1 out: its next value counts
    np.testing.assert_array_equal(got.to_numpy(), expected)
    assert got.attrs["higher_is_memorized"] is False
    # an epoch that presented nothing (the last, here) is skipped, not read as accuracy 0 or NaN
    padded = proxies.compute("early_accuracy", recording=_recording(rows + [[nan] * 5]), fraction=fraction)
    np.testing.assert_array_equal(padded.to_numpy(), expected)
    with pytest.raises(ValueError, match="fraction"):
        proxies.compute("early_accuracy", recording=_recording(rows), fraction=0.0)


def test_registry_errors_and_plugins():
    with pytest.raises(ValueError, match="unknown proxy 'fz'; expected one of"):
        proxies.compute("fz", recording=None)
    with pytest.raises(ValueError, match="needs recording="):
        proxies.compute("confidence")
    with pytest.raises(ValueError, match="already registered"):
        proxies.register_proxy("confidence", higher_is_memorized=False, needs=())(lambda: None)

    @proxies.register_proxy("test_margin", higher_is_memorized=False, needs=("recording",), force=True)
    def margin(recording):
        """Mean gap between true-class and max probability."""
        return np.nanmean(recording["confidence"] - recording["max_confidence"], axis=0)

    rec = _recording([[1, 0]], confidence_rows=[[0.9, 0.3]])
    assert proxies.compute("test_margin", recording=rec).tolist() == [0.0, 0.0]
    assert proxies.get_proxy("test_margin").description.startswith("Mean gap")


PROXIES_ALONE = """
import sys
import torch
from torch import nn
from torch.utils.data import TensorDataset
import proxies

torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
recorder = proxies.TrainingRecorder(6)
for _ in range(2):
    recorder.start_epoch()
    for rows in (torch.arange(0, 4), torch.arange(4, 6)):
        recorder.record(model(x[rows]).detach(), y[rows], rows)
    recorder.end_epoch()
table = proxies.compute(["confidence", "forgetting_events"], recording=recorder)
in_memory = proxies.loss_curvature(model, proxies.IndexedDataset(x, y), n_probes=2, progress=False)
loaded = proxies.loss_curvature(model, TensorDataset(x, y), n_probes=2, progress=False)
assert table.shape == (6, 2) and in_memory.index.tolist() == list(range(6))
assert in_memory.equals(loaded)  # sliced in memory or loaded item by item: the same batches
assert (in_memory > 0).all()
print(sorted(m for m in sys.modules if m == "unlearn" or m.startswith("unlearn.")))
"""


@pytest.mark.slow  # a fresh interpreter; test_no_proxies_module_imports_unlearn checks the source meanwhile
def test_proxies_score_without_importing_unlearn():
    """The scoring layer stands alone: a recording proxy and loss curvature, on a plain nn.Module and in-memory data,
    in a fresh interpreter that never loads ``unlearn``."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", PROXIES_ALONE], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_no_proxies_module_imports_unlearn():
    """Not even inside a function: ``proxies`` depends on torch, numpy and pandas, never on the engine above it."""
    import ast
    from pathlib import Path

    offenders = []
    for path in sorted((Path(proxies.__file__).parent).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] == "unlearn"]
    assert offenders == []


PLUGIN_COLOUR = (0, 0, 255)  # what the fake entry point of the Registry test names


def test_registry_refuses_duplicates_names_its_contents_and_loads_plugins_lazily(monkeypatch):
    import importlib.metadata

    from proxies import Registry

    good = importlib.metadata.EntryPoint(name="blue", value="tests.proxies.test_proxies:PLUGIN_COLOUR",
                                         group="test.colours")
    scans = []

    def entry_points(group=None):
        scans.append(group)
        return [good] if group == "test.colours" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    colours = Registry("colour", "test.colours", on_entry_point=lambda ep, obj: colours.register(ep.name, obj))
    colours.register("red", (255, 0, 0))

    @colours.register("green")
    def green():
        return (0, 255, 0)

    assert scans == []  # registering reads no entry points
    with pytest.raises(ValueError, match=r"colour 'red' is already registered \(pass force=True"):
        colours.register("red", (254, 0, 0))
    colours.register("red", (254, 0, 0), force=True)
    assert colours.get("red") == (254, 0, 0) and scans == ["test.colours"]  # the first lookup loads the plugins
    assert colours.names() == ["blue", "green", "red"] and list(colours) == ["red", "green", "blue"]
    assert "blue" in colours and colours["blue"] == PLUGIN_COLOUR and colours.get("green") is green
    with pytest.raises(ValueError, match=r"unknown colour 'cyan'; expected one of \['blue', 'green', 'red'\]"):
        colours.get("cyan")
    assert colours.get("cyan", None) is None and scans == ["test.colours"]  # loaded once
    assert colours.load_entry_points() == []  # an entry point already loaded is not loaded again

    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="test.colours")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [broken])
    with pytest.raises(RuntimeError, match=r"colour plugin 'broken' \(no_such_module_xyz\) failed to load"):
        Registry("colour", "test.colours").names()
    clash = importlib.metadata.EntryPoint(name="red", value="tests.proxies.test_proxies:PLUGIN_COLOUR",
                                          group="test.colours")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [clash])
    with pytest.raises(RuntimeError, match="colour plugin 'red' .* failed to register: colour 'red' is already"):
        colours.load_entry_points()


def test_recording_proxies_come_from_the_registry():
    recording = [name for name in proxies.available() if "recording" in proxies.get_proxy(name).needs]
    assert set(proxies.RECORDING_PROXIES) == set(recording) - {"early_accuracy", "token_accuracy", "test_margin"}
    assert "csl" in proxies.RECORDING_PROXIES and "loss_curvature" not in proxies.RECORDING_PROXIES
