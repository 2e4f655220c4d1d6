"""Every Python block of README.md runs, in order, in one namespace, as a reader would paste them: trainings are
shortened (2 epochs; README's own numbers are for the real thing), and the blocks' placeholders for the reader's own
things (a folder of photos, a deletion request, a training loop's loader and optimizer, checkpoint files, a
LightningModule, a held-out set) are stood in for by real digits data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import unlearn
import unlearn.pipeline
from proxies.batching import WithIndex
from unlearn.data.text import DEBIAN_FORTUNES
from unlearn.training import save_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = 2  # epochs of every training the blocks start


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_python_blocks_this_test_stands_in_for():
    blocks = python_blocks()
    assert len(blocks) == 8
    assert "deletion_request" in blocks[2] and "loader" in blocks[3] and "lightning.Trainer" in blocks[5]
    assert "fortunes" in blocks[7]


def _photos(folder: Path, digits, n: int = 60) -> None:
    """A torchvision ImageFolder of real 8x8 digits: PATH/CLASS/IMAGE.png."""
    images, labels = digits.train.inputs[:n, 0], digits.train.targets[:n]
    low, high = images.min(), images.max()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        pixels = ((image - low) / (high - low) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / str(int(label)) / f"{i}.png")


def _lightning_stand_ins(namespace: dict):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = unlearn.create_model("digits_cnn", num_classes=10, in_channels=1)

        def training_step(self, batch, _):
            x, y, _ = batch
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits.detach()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def trainer(max_epochs, **options):  # the README's 30 epochs, shortened; no logs or checkpoints written
        return lightning.Trainer(max_epochs=SHORT, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, **options)

    namespace.update(module=Module(), lightning=type("lightning", (), {"Trainer": staticmethod(trainer)}),
                     DataLoader=DataLoader)


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    real_train, real_config = unlearn.train, unlearn.pipeline.RunConfig
    monkeypatch.setattr(unlearn, "train", lambda *a, epochs=20, **k: real_train(*a, epochs=SHORT, progress=False,
                                                                                 **k))
    monkeypatch.setattr(unlearn.pipeline, "RunConfig", lambda **k: real_config(epochs=SHORT, train_size=300, **k))
    blocks = python_blocks()
    namespace: dict = {"__name__": "readme"}
    for block in blocks[:2]:  # use it from Python; the whole job as one call
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs/digits-high/report.md").is_file()

    _photos(tmp_path / "photos/train", namespace["splits"])
    namespace["deletion_request"] = [3, 10, 11]
    exec(compile(blocks[2], "README.md", "exec"), namespace)  # a streamed image folder
    assert len(namespace["forget"]) == 3

    digits_model, train = namespace["model"], namespace["splits"].train
    photos_model = unlearn.create_model("digits_cnn", num_classes=10, in_channels=3)  # ImageFolder reads RGB
    namespace.update(epochs=1, model=photos_model, loader=DataLoader(WithIndex(namespace["train_set"]), batch_size=16),
                     optimizer=torch.optim.SGD(photos_model.parameters(), lr=0.01))
    exec(compile(blocks[3], "README.md", "exec"), namespace)  # your own training loop
    assert namespace["recorder"].num_epochs == 1

    for e in range(1, 31):
        save_checkpoint(digits_model, f"epoch-{e}.pt")
    namespace.update(load_checkpoint=unlearn.load_checkpoint, forget=torch.utils.data.Subset(train, range(100)),
                     retain=torch.utils.data.Subset(train, range(100, len(train))))
    exec(compile(blocks[4], "README.md", "exec"), namespace)  # checkpoints of a model trained without a recorder

    _lightning_stand_ins(namespace)
    exec(compile(blocks[5], "README.md", "exec"), namespace)  # with PyTorch Lightning
    assert np.isfinite(namespace["scores"].to_numpy()).all()

    namespace.update(test_set=namespace["splits"].test, model=digits_model)
    exec(compile(blocks[6], "README.md", "exec"), namespace)  # then unlearn and evaluate
    assert "accuracy.forget" in namespace["report"].index

    if not DEBIAN_FORTUNES.is_dir():
        pytest.skip("the language-model block needs Debian's fortunes (make fortunes)")
    exec(compile(blocks[7], "README.md", "exec"), namespace)  # language models
    assert len(namespace["exposure"]) == 12 and np.isfinite(namespace["exposure"]).all()
    assert namespace["scores"]["log_p_z"].notna().sum() > 900
