"""Per-sample losses ℓ(f(x), y); a batch loss is their mean, so L_k is a mean of per-sample losses too."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

Loss = Literal["cross_entropy", "mse"]
LOSSES: tuple[str, ...] = get_args(Loss)


def check_loss(loss: str) -> str:
    """Return ``loss`` if it is one of :data:`LOSSES`.

    Raises:
        ValueError: naming the allowed values otherwise.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def per_sample_loss(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample loss ℓ(f(x), y): cross-entropy on integer labels, or squared error averaged over outputs.

    For ``"mse"`` integer labels are one-hot encoded; float targets must match ``out``'s shape. The plain
    expression ``((out - y) ** 2).mean(-1)`` is used instead of ``F.mse_loss``, which fails under ``jvp`` of
    ``grad`` ("ZeroTensors are immutable").

    Args:
        out: model outputs (logits) [n, C].
        y: int64 class labels [n] in [0, C), or (``"mse"`` only) float targets of ``out``'s size.
        loss: ``"cross_entropy"`` or ``"mse"`` (any other value is treated as ``"mse"``; see :func:`check_loss`).

    Returns:
        The losses [n], in ``out``'s dtype.

    Example:
        >>> per_sample_loss(torch.zeros(2, 2), torch.tensor([0, 1]), "mse").tolist()
        [0.5, 0.5]
    """
    if loss == "cross_entropy":
        return F.cross_entropy(out, y, reduction="none")
    if not y.is_floating_point():
        y = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return ((out - y.reshape(out.shape)) ** 2).mean(-1)


def cross_entropy_class_major(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ℓ = log Σ_j exp(z_j − z_max) + (z_max − z_y) of logits laid out class-major.

    The same per-sample losses as :func:`per_sample_loss` on the transposed logits, computed with a few passes
    over rows of samples instead of one softmax per short row: much faster for few classes.

    Args:
        logits: [..., C, n], the C logits of sample s in column s.
        y: int64 class labels [n] in [0, C), the same for every leading index.

    Returns:
        The losses [..., n].

    Example:
        >>> z = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 classes, 2 samples
        >>> y = torch.tensor([0, 2])
        >>> bool(torch.allclose(cross_entropy_class_major(z, y), per_sample_loss(z[0].T, y, "cross_entropy")))
        True
    """
    top = logits.amax(dim=-2)
    picked = logits.gather(-2, y.expand(*logits.shape[:-2], 1, y.shape[-1])).squeeze(-2)
    log_sum = (logits - top.unsqueeze(-2)).exp_().sum(dim=-2).log_()
    return log_sum.add_(top.sub_(picked))  # z_max − z_y first: exact where it is small, as the loss then is
