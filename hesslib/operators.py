"""The operator contract that the eigen-solver and the estimators rely on, and a dense operator.

An operator is anything symmetric with a (batched) matrix product: ``num_params`` (M), ``dtype``, ``device`` and
``hvp(V)`` returning H V for V of shape [M, r] (or [M]). :class:`~hesslib.hessian.Objective` (the loss Hessian
over a data set) is one; :class:`DenseOperator` wraps an explicit matrix; a user's own operator (a GGN, a
distributed objective) plugs in the same way, with no private attribute read by anything in ``hesslib``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Operator(Protocol):
    """A symmetric M x M operator H given by its products.

    Attributes:
        num_params: M, the size of the vectors it acts on.
        dtype: the floating-point type of its products.
        device: where its products are computed.
    """

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """The product H V.

        Args:
            V: a block of r vectors [M, r] or one vector [M], in the operator's ``dtype`` on its ``device``.

        Returns:
            H V, a tensor of V's shape, dtype and device.
        """
        ...


class DenseOperator:
    """An explicit symmetric matrix H [M, M] as an :class:`Operator` (for tests and small problems).

    ``num_params``, ``dtype`` and ``device`` are those of ``H``; symmetry is assumed, not checked.

    Args:
        H: the matrix [M, M], any floating dtype and device.

    Raises:
        ValueError: if ``H`` is not a square 2-D matrix.

    Example:
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 1.0])))
        >>> op.hvp(torch.ones(2, 1)).ravel().tolist()
        [3.0, 1.0]
    """

    def __init__(self, H: torch.Tensor) -> None:
        if H.dim() != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"H must be a square matrix, got shape {list(H.shape)}")
        self.H = H
        self.num_params = H.shape[0]
        self.dtype = H.dtype
        self.device = H.device

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """The product H V for V of shape [M, r] (returns [M, r]) or [M] (returns [M])."""
        return self.H @ V


def check_operator(operator: object, name: str = "operator") -> Operator:
    """Return ``operator`` itself if it has the :class:`Operator` members.

    Raises:
        TypeError: naming the missing members (``num_params``, ``dtype``, ``device``, ``hvp``) after ``name``.
    """
    if not isinstance(operator, Operator):
        missing = [m for m in ("num_params", "dtype", "device", "hvp") if not hasattr(operator, m)]
        raise TypeError(f"{name} must provide num_params, dtype, device and hvp(V) (the hesslib.Operator "
                        f"protocol); {type(operator).__name__} lacks {', '.join(missing)}")
    return operator


def check_vector(operator: Operator, w: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``w`` if it has shape [M] and the operator's dtype and device.

    Raises:
        ValueError: naming ``name`` if the shape, dtype or device differs.
    """
    if w.shape != (operator.num_params,):
        raise ValueError(f"{name} must have shape [{operator.num_params}] (M = num_params), got {list(w.shape)}")
    return _check_dtype_device(operator, w, name)


def check_block(operator: Operator, V: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``V`` if it has shape [M, r] with r ≥ 1 and the operator's dtype and device.

    Raises:
        ValueError: naming ``name`` (e.g. the subspace basis P) if the shape, dtype or device differs.
    """
    if V.dim() != 2 or V.shape[0] != operator.num_params or V.shape[1] < 1:
        raise ValueError(f"{name} must have shape [{operator.num_params}, r] with r >= 1 (M = num_params), "
                         f"got {list(V.shape)}")
    return _check_dtype_device(operator, V, name)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Same device type, and the same index unless one of them names none ("cuda" matches "cuda:0")."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_dtype_device(operator: Operator, t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` if it has the operator's dtype and device, else a ValueError naming ``name``."""
    if not _same_device(t.device, torch.device(operator.device)) or t.dtype != operator.dtype:
        raise ValueError(f"{name} must be {operator.dtype} on {operator.device} like the operator, "
                         f"got {t.dtype} on {t.device}")
    return t
