"""Deterministic, cached training of w* (Adam by default, as in the paper).

Training shuffles its mini-batches with a seeded generator; that order only affects how w* is found. The
ANALYSIS order (k counts batches) is always the dataset's fixed order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import DEFAULT_CACHE_DIR, cached
from .data import Dataset, has_test_split, load_dataset
from .losses import check_loss, per_sample_loss
from .models import make_model
from .progress import progress_bar

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainRecord:
    """What a training run produced besides the weights.

    Attributes:
        config: the training configuration (the cache key).
        loss_curve: the mean training loss of each epoch.
        train_loss: the final mean loss over the whole training set, in evaluation mode.
        train_accuracy: the final accuracy on the training set, in [0, 1].
        test_loss: the mean loss on the test set, None without one.
        test_accuracy: the accuracy on the test set, None without one.
        num_params: M, the number of parameters.
        seconds: wall time of the run as measured when it was computed (a cached record keeps its first time).
    """

    config: dict
    loss_curve: list[float] = field(default_factory=list)  # mean training loss of each epoch
    train_loss: float = float("nan")  # final loss over the whole training set (eval mode)
    train_accuracy: float = float("nan")
    test_loss: float | None = None
    test_accuracy: float | None = None
    num_params: int = 0
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, *, loss: str = "cross_entropy", chunk: int = 4096,
             device: str | torch.device = "cpu") -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``data``, in chunks of ``chunk`` samples (sets eval mode)."""
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, len(data), chunk):
        X = data.X[start : start + chunk].to(device)
        y = data.y[start : start + chunk].to(device)
        out = model(X)
        total += per_sample_loss(out, y, loss).sum().item()
        correct += (out.argmax(-1) == y).sum().item()
    return total / len(data), correct / len(data)


# Training on the CPU runs with this many torch threads on every machine: the order of float32 reductions in a
# matrix product depends on the thread count, and training amplifies such rounding differences into different w*.
# With a fixed count, machines with the same CPU instruction set and library versions train the same w*.
TRAINING_THREADS = 2


@contextmanager
def training_threads(device: str | torch.device) -> Iterator[None]:
    """Train with :data:`TRAINING_THREADS` torch threads when ``device`` is the CPU (elsewhere: unchanged)."""
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(TRAINING_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    dataset: str = "mnist5k",
    *,
    model: str = "mlp",
    limit: int | None = None,
    holdout: int = 0,
    root: str | Path = "data",
    hidden: Sequence[int] = (256, 256),
    channels: Sequence[int] = (8, 16),
    activation: str = "relu",
    loss: str = "cross_entropy",
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> tuple[nn.Module, TrainRecord]:
    """Train ``model`` on the first ``limit`` samples of ``dataset`` to find w*.

    Mini-batches are shuffled with a generator seeded by ``seed`` (this order only affects how w* is found,
    never the analysis order; on the CPU it runs with :data:`TRAINING_THREADS` threads on every machine, so w* does
    not depend on the machine's core count). Test metrics use the LAST ``holdout`` samples of the train split when
    ``holdout`` > 0, else the dataset's test split when it has one, else none. Results are cached under
    ``cache_dir`` keyed by the full configuration; ``cache_dir=None`` always retrains.

    Args:
        dataset: a name accepted by :func:`~hesslib.data.load_dataset`.
        model: ``"linear"``, ``"mlp"`` or ``"cnn"`` (:func:`~hesslib.models.make_model`).
        limit: train on the first ``limit`` samples of the fixed order; None uses all.
        holdout: the number ≥ 0 of samples at the end of the train split to test on; they must not overlap
            the first ``limit``.
        root: the data folder.
        hidden: the MLP's hidden widths.
        channels: the CNN's conv widths.
        activation: the hidden nonlinearity, ``"relu"``, ``"gelu"`` or ``"tanh"``.
        loss: ``"cross_entropy"`` or ``"mse"``.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: the learning rate, > 0.
        weight_decay: the optimiser's weight decay.
        epochs: the number of passes over the data, ≥ 0.
        batch_size: the training mini-batch size, ≥ 1 (not the analysis batch size B).
        seed: seeds the initialisation and the mini-batch order.
        device: where to train.
        cache_dir: the cache folder, or None for no cache.
        progress: show a progress bar.

    Returns:
        (model, record): the trained ``nn.Module`` in evaluation mode on ``device``, and its :class:`TrainRecord`.

    Raises:
        ValueError: if ``loss`` or ``optimizer`` is unknown, ``epochs`` < 0, ``batch_size`` < 1, ``lr`` ≤ 0,
            ``holdout`` < 0 or ``holdout`` overlaps the first ``limit`` samples; and the errors of
            :func:`~hesslib.data.load_dataset` and :func:`~hesslib.models.make_model`.
    """
    check_loss(loss)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 0 or batch_size < 1 or lr <= 0 or holdout < 0:
        raise ValueError(
            f"need epochs >= 0, batch_size >= 1, lr > 0 and holdout >= 0; got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr}, holdout={holdout}"
        )
    full = load_dataset(dataset, root=root)
    data = load_dataset(dataset, root=root, limit=limit)
    if holdout:
        if len(data) + holdout > len(full):
            raise ValueError(
                f"holdout must be <= {len(full) - len(data)} (samples left after limit={limit}), got {holdout}"
            )
        test = Dataset(full.X[-holdout:], full.y[-holdout:], f"{dataset}-holdout")
    else:
        try:
            test = load_dataset(dataset, root=root, split="test")
        except (ValueError, FileNotFoundError):
            test = None
    config = dict(
        dataset=dataset, limit=len(data), holdout=holdout, model=model, hidden=list(hidden),
        channels=list(channels), activation=activation, loss=loss, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, seed=seed, device=torch.device(device).type,
    )

    def run() -> dict:
        with training_threads(device):
            net, record = _fit(data, test, config, device=device, progress=progress)
        return {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "record": asdict(record)}

    result = cached("train", config, run, cache_dir=cache_dir)
    net = make_model(model, data.input_shape, data.num_classes, hidden=hidden, channels=channels,
                     activation=activation)
    net.load_state_dict(result["state_dict"])
    return net.to(device).eval(), TrainRecord(**result["record"])


def _fit(data: Dataset, test: Dataset | None, config: dict, *, device, progress: bool) -> tuple[nn.Module, TrainRecord]:
    import time

    start = time.perf_counter()
    net = make_model(config["model"], data.input_shape, data.num_classes, hidden=config["hidden"],
                     channels=config["channels"], activation=config["activation"], seed=config["seed"]).to(device)
    params = net.parameters()
    if config["optimizer"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])
    else:
        opt = torch.optim.SGD(params, lr=config["lr"], weight_decay=config["weight_decay"])
    generator = torch.Generator().manual_seed(config["seed"])
    X, y = data.X.to(device), data.y.to(device)
    record = TrainRecord(config=config, num_params=sum(p.numel() for p in net.parameters()))
    bs = config["batch_size"]
    for _ in progress_bar(range(config["epochs"]), desc=f"train {config['model']} on {data.name}", unit="epoch",
                           enabled=progress):
        net.train()
        order = torch.randperm(len(data), generator=generator).to(device)
        epoch_loss = 0.0
        for idx in order.split(bs):
            opt.zero_grad(set_to_none=True)
            batch_loss = per_sample_loss(net(X[idx]), y[idx], config["loss"]).mean()
            batch_loss.backward()
            opt.step()
            epoch_loss += batch_loss.item() * len(idx)
        record.loss_curve.append(epoch_loss / len(data))
    net.eval()
    record.train_loss, record.train_accuracy = evaluate(net, data, loss=config["loss"], device=device)
    if test is not None:
        record.test_loss, record.test_accuracy = evaluate(net, test, loss=config["loss"], device=device)
    record.seconds = time.perf_counter() - start
    return net, record


@dataclass
class LearningCurve:
    """Final metrics of one model trained per training-set size, all evaluated on the same test set.

    Attributes:
        sizes: the training-set sizes n, strictly increasing.
        records: the :class:`TrainRecord` of each size.
        holdout: the samples held out from the end of the train split (0: the dataset's test split is used).
        test_set: the test set, in words.
    """

    sizes: list[int]
    records: list[TrainRecord]
    holdout: int
    test_set: str

    @property
    def test_accuracy(self) -> np.ndarray:
        """The test accuracy of each size, float [len(sizes)]."""
        return np.array([r.test_accuracy for r in self.records], dtype=float)

    @property
    def test_loss(self) -> np.ndarray:
        """The mean test loss of each size, float [len(sizes)]."""
        return np.array([r.test_loss for r in self.records], dtype=float)

    @property
    def train_accuracy(self) -> np.ndarray:
        """The training accuracy of each size, float [len(sizes)]."""
        return np.array([r.train_accuracy for r in self.records], dtype=float)

    @property
    def train_loss(self) -> np.ndarray:
        """The final mean training loss of each size, float [len(sizes)]."""
        return np.array([r.train_loss for r in self.records], dtype=float)

    def _metric(self, metric: str) -> np.ndarray:
        """The array property named ``metric``, or a ValueError naming the allowed ones."""
        if metric not in ("test_accuracy", "test_loss", "train_accuracy", "train_loss"):
            raise ValueError(f"metric must be test_accuracy, test_loss, train_accuracy or train_loss, got {metric!r}")
        return getattr(self, metric)

    @property
    def mid_sizes(self) -> np.ndarray:
        """Geometric means of consecutive sizes, where the gains below are plotted on a log axis."""
        sizes = np.asarray(self.sizes, dtype=float)
        return np.sqrt(sizes[1:] * sizes[:-1])

    def gain_per_doubling(self, metric: str = "test_accuracy") -> np.ndarray:
        """The improvement bought by each doubling of the data, (m_i − m_{i−1}) / log2(n_i / n_{i−1}).

        Args:
            metric: ``"test_accuracy"``, ``"test_loss"``, ``"train_accuracy"`` or ``"train_loss"``.

        Returns:
            float [len(sizes) − 1], one value per pair of consecutive sizes.

        Raises:
            ValueError: if ``metric`` is not one of those four.
        """
        return np.diff(self._metric(metric)) / np.diff(np.log2(np.asarray(self.sizes, dtype=float)))

    def gain_per_sample(self, metric: str = "test_accuracy") -> np.ndarray:
        """The improvement bought by each added sample, (m_i − m_{i−1}) / (n_i − n_{i−1}): data's marginal value.

        Args:
            metric: ``"test_accuracy"``, ``"test_loss"``, ``"train_accuracy"`` or ``"train_loss"``.

        Returns:
            float [len(sizes) − 1], one value per pair of consecutive sizes.

        Raises:
            ValueError: if ``metric`` is not one of those four.
        """
        return np.diff(self._metric(metric)) / np.diff(np.asarray(self.sizes, dtype=float))

    def error_power_law(self) -> tuple[float, float]:
        """Least-squares fit of the test error 1 − accuracy ≈ C·n^(−α) on log-log axes.

        Sizes with zero (or NaN) error are left out. Halving the error then takes 2^(1/α) times the data.

        Returns:
            (α, C) as floats.

        Raises:
            ValueError: if fewer than 2 sizes have a positive test error.
        """
        error = 1.0 - self.test_accuracy
        keep = np.isfinite(error) & (error > 0)
        if keep.sum() < 2:
            raise ValueError("need at least 2 sizes with a positive test error to fit a power law")
        slope, intercept = np.polyfit(np.log(np.asarray(self.sizes, dtype=float)[keep]), np.log(error[keep]), 1)
        return float(-slope), float(np.exp(intercept))

    @property
    def seconds(self) -> np.ndarray:
        """Training time of each size as measured when it was computed (cached runs keep their first time)."""
        return np.array([r.seconds for r in self.records], dtype=float)


def learning_curve(dataset: str, sizes: Sequence[int], *, holdout: int = 1000, root: str | Path = "data",
                   **train_kwargs) -> LearningCurve:
    """Train one model (:func:`train`, cached) on the first n samples for each n in ``sizes``, tested alike.

    Every model is tested on the same samples: the dataset's own test split when it has one (``holdout`` is
    then ignored), else its last ``holdout`` samples, which no training set may reach. Every size gets the same
    settings, hence the same number of epochs.

    Args:
        dataset: a name accepted by :func:`~hesslib.data.load_dataset`.
        sizes: the training-set sizes, strictly increasing integers ≥ 1.
        holdout: samples held out from the end of the train split when the dataset has no test split, ≥ 1
            then; the largest size plus ``holdout`` must not exceed the train split.
        root: the data folder.
        **train_kwargs: passed to :func:`train` (model, hidden, epochs, seed, cache_dir, ...), but not
            ``limit`` or ``holdout``.

    Returns:
        A :class:`LearningCurve`.

    Raises:
        ValueError: if ``sizes`` is empty, not strictly increasing or has a size < 1; if a held-out test set
            is needed and ``holdout`` < 1; and the errors of :func:`train` (e.g. a size that reaches the
            held-out samples).
    """
    sizes = [int(n) for n in sizes]
    if not sizes or any(n < 1 for n in sizes) or sorted(set(sizes)) != sizes:
        raise ValueError(f"sizes must be a non-empty, strictly increasing list of integers >= 1, got {sizes}")
    own_split = has_test_split(dataset, root)
    if not own_split and holdout < 1:
        raise ValueError(f"{dataset!r} has no test split here, so holdout must be >= 1 (samples held out from the "
                         f"end of the train split), got {holdout}")
    used = 0 if own_split else holdout
    records = [train(dataset, limit=n, holdout=used, root=root, **train_kwargs)[1] for n in sizes]
    test_set = f"{dataset} test split" if own_split else f"last {used} samples of {dataset}"
    return LearningCurve(sizes, records, used, test_set)
