"""Proxies read off the shape of each example's training trace: CSG, SGAL and the loss trace's IQR.

Like the confidence family they cost nothing beyond training: :class:`~proxies.TrainingRecorder` keeps each
presentation's loss, its squared input-gradient norm (when the loop hands ``x.grad`` over, as
:func:`unlearn.train` does) and the weight norm at the end of every epoch.

- ``csg``, the cumulative sample gradient (Ravikumar et al., "Memorization through the lens of sample gradients",
  ICLR 2026): the sum over presentations of ``||grad_x loss(x, y)||^2``.
- ``sgal`` (same paper): the cumulative sample loss summed only up to the epoch where the weights' L2 norm peaks;
  the paper stops there because what the network learns after the peak is mostly memorization of the whole set.
- ``loss_iqr`` (Pollock, Shilov et al. 2024, "Free record-level privacy risk evaluation through artifact-based
  methods", LT-IQR): the interquartile range of the per-presentation losses, which finds the examples most
  exposed to LiRA: an easy example's loss falls at once and stays low (a small IQR), a memorized one's stays high
  for a long while and then drops (a large one).

An example never presented scores NaN. Presentations an example missed (``drop_last``) are skipped.
"""

from __future__ import annotations

import warnings

import numpy as np

from .recording import TrainingRecorder
from .registry import register_proxy


def _loss(recording: TrainingRecorder) -> np.ndarray:
    if recording.num_epochs == 0:
        raise ValueError("the recording has no epochs")
    return recording["loss"]


def _nan_sum(values: np.ndarray) -> np.ndarray:
    """Sum over epochs (axis 0) of the values present; NaN where none is."""
    return np.where(np.isnan(values).all(axis=0), np.nan, np.nansum(values, axis=0, dtype=np.float64))


@register_proxy("csg", higher_is_memorized=True, needs=("recording",))
def csg(recording: TrainingRecorder) -> np.ndarray:
    """Cumulative sample gradient: the sum over presentations of the squared input-gradient norm (Ravikumar et al.
    2026).

    Raises:
        ValueError: a recording without input gradients (made with ``input_gradients=False``, or by a loop that
            did not call :meth:`~proxies.TrainingRecorder.record_input_gradients`).
    """
    if recording.num_epochs == 0:
        raise ValueError("the recording has no epochs")
    norms = recording.input_gradient_norms
    if norms is None:
        raise ValueError("csg needs input-gradient norms, and this recording has none: train with "
                         "TrainingRecorder(n, input_gradients=True), or in a manual loop call "
                         "record_input_gradients(x.grad, index, scale=batch_size) after each backward")
    return _nan_sum(norms)


@register_proxy("sgal", higher_is_memorized=True, needs=("recording",), directions={"causal_lm": False})
def sgal(recording: TrainingRecorder) -> np.ndarray:
    """Cumulative sample loss up to and including the epoch where the weight norm peaks (Ravikumar et al. 2026).

    Raises:
        ValueError: a recording without weight norms (epochs closed by ``end_epoch()`` without the model).
    """
    loss = _loss(recording)
    norms = recording.weight_norms
    if np.isnan(norms).all():
        raise ValueError("sgal needs the weight norm of each epoch, and this recording has none: close each epoch "
                         "with end_epoch(model) (unlearn.train does)")
    peak = int(np.nanargmax(norms))
    return _nan_sum(loss[: peak + 1])


@register_proxy("loss_iqr", higher_is_memorized=True, needs=("recording",))
def loss_iqr(recording: TrainingRecorder) -> np.ndarray:
    """Interquartile range of the per-presentation training loss, LT-IQR (Pollock, Shilov et al. 2024)."""
    loss = _loss(recording).astype(np.float64)
    if not np.isnan(loss).any():
        low, high = np.percentile(loss, [25, 75], axis=0)
        return high - low
    with warnings.catch_warnings():  # an example never presented: an all-NaN column, NaN on purpose
        warnings.filterwarnings("ignore", message="All-NaN slice encountered")
        low, high = np.nanpercentile(loss, [25, 75], axis=0)
    return high - low
