"""The loss restricted to a D-dimensional slice w = w* + Pθ: directions P and per-batch losses for many θ."""

from __future__ import annotations

import torch
from torch.func import vmap

from .hessian import ACCELERATOR_ACTIVATION_BUDGET_MB, Objective, SubspaceLoss
from .operators import check_block
from .progress import progress_bar

# The activation budget of one pass of subspace_losses on the CPU, in MiB (on an accelerator: its activation budget)
CPU_LOSSES_BUDGET_MB = 64.0


def random_directions(
    objective: Objective, D: int, *, seed: int = 0, filter_normalize: bool = True, orthonormalize: bool = False
) -> torch.Tensor:
    """D random Gaussian directions P [M, D], the paper's baseline to the Hessian eigenvectors.

    With ``filter_normalize`` (Li et al. 2018) every filter (a row of a weight matrix, an output channel of a
    convolution) of each direction is rescaled to the norm of the same filter of w*, and biases and other 1-D
    parameters are zeroed (the original code set them to the bias values instead). With ``orthonormalize`` the
    D directions are then made orthonormal (QR), which makes them comparable with Hessian eigenvectors.

    Args:
        objective: gives M, w* and the parameter layout (``parameter_blocks``).
        D: the number of directions, an int in [1, M].
        seed: seeds the Gaussian draw (a CPU generator, float64).
        filter_normalize: rescale per filter to w*'s filter norms and zero 1-D parameters.
        orthonormalize: make the columns orthonormal (QR) afterwards.

    Returns:
        P [M, D] in the objective's dtype on its device.

    Raises:
        ValueError: if ``D`` is not an int in [1, M].

    Example:
        >>> from hesslib import Objective, make_model
        >>> model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
        >>> obj = Objective(model, torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), batch_size=2)
        >>> P = random_directions(obj, 3, orthonormalize=True)
        >>> P.shape, bool(torch.allclose(P.T @ P, torch.eye(3), atol=1e-6)), P[8:].abs().sum().item()
        (torch.Size([10, 3]), True, 0.0)
    """
    if not isinstance(D, int) or not 1 <= D <= objective.num_params:
        raise ValueError(f"D must be an integer in [1, {objective.num_params}] (num_params), got {D!r}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(D, objective.num_params, generator=generator, dtype=torch.float64)
    if filter_normalize:
        w = objective.params.double().cpu()
        for block in objective.parameter_blocks:
            part = directions[:, block.slice]
            if len(block.shape) <= 1:
                part.zero_()
            else:
                filters = part.reshape(D, block.shape[0], -1)
                target = w[block.slice].reshape(1, block.shape[0], -1).norm(dim=2, keepdim=True)
                filters.mul_(target / filters.norm(dim=2, keepdim=True).clamp_min(1e-30))
    P = directions.T.contiguous()
    if orthonormalize:
        P = torch.linalg.qr(P)[0]
    return P.to(objective.device, objective.dtype)


@torch.no_grad()
def subspace_losses(
    objective: Objective,
    P: torch.Tensor,
    thetas: torch.Tensor,
    *,
    memory_mb: float | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Per-batch losses ℓ_i(w* + Pθ_t) for every θ_t (the rows of ``thetas``) and every batch i = 1..N.

    The model runs vmapped over a chunk of θ (or, where one θ fills a pass, on that θ alone) on large slices of
    the data (with the first layer's response to P computed once per slice, :class:`~hesslib.hessian.SubspaceLoss`),
    and per-sample losses are reduced to batch means with one ``index_add``. ``memory_mb`` bounds the activations
    of one pass: large models get whole-data passes one θ at a time (already a big call), small models many θ per
    pass. No model copies, no loop over batches. With a distributed objective the
    matrix is split over batches, not θ: each rank runs every θ on its own share of the data (the share it
    already holds, so no data moves), and the [T, N] matrix is assembled on every rank by one all-reduce of
    columns that are zero outside each rank's batches (exact, whatever the number of processes).

    Args:
        objective: the loss, its N batches and w*.
        P: the subspace basis [M, D], D ≥ 1, in the objective's dtype on its device.
        thetas: [T, D] with T ≥ 1, any float dtype (moved to the objective's dtype and device).
        memory_mb: the approximate activation budget of one pass in MiB, > 0; by default
            :data:`CPU_LOSSES_BUDGET_MB` on the CPU and :data:`~hesslib.hessian.ACCELERATOR_ACTIVATION_BUDGET_MB`
            on an accelerator, where small passes leave it idle between kernel launches (the paper's CNN on an
            H200, 1,024 θ: 3.9 s at 64 MiB, one θ per pass).
        progress: show a progress bar.

    Returns:
        [T, N] in the objective's dtype on its device; entry (t, i − 1) is ℓ_i(w* + Pθ_t).

    Raises:
        ValueError: if ``P`` is not [M, D] in the objective's dtype and device, ``thetas`` is not [T ≥ 1, D], or
            ``memory_mb`` is not > 0.

    Example:
        >>> from hesslib import Objective, make_model
        >>> model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
        >>> obj = Objective(model, torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 0, 1, 1, 0]), batch_size=2)
        >>> losses = subspace_losses(obj, torch.eye(10)[:, :2], torch.zeros(4, 2))
        >>> losses.shape, bool(torch.allclose(losses[0], obj.batch_losses()))
        (torch.Size([4, 3]), True)
    """
    P = check_block(objective, P, "P")
    if thetas.dim() != 2 or thetas.shape[1] != P.shape[1] or thetas.shape[0] < 1:
        raise ValueError(
            f"thetas must have shape [T, {P.shape[1]}] (T >= 1, D = P's columns), got {list(thetas.shape)}"
        )
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"memory_mb must be > 0 (MiB), got {memory_mb}")
    thetas = thetas.to(objective.device, objective.dtype)
    T, N, n = thetas.shape[0], objective.num_batches, objective.num_samples
    restricted = SubspaceLoss(objective, P, evaluations=T)  # the first layer's response to P, where that is cheaper
    if memory_mb is None:
        memory_mb = CPU_LOSSES_BUDGET_MB if objective.device.type == "cpu" else ACCELERATOR_ACTIVATION_BUDGET_MB
    budget = memory_mb * 2**20
    element = objective.X.element_size()
    bytes_per_sample = objective.activation_numel * element
    # samples per forward pass: as many as the budget holds (no floor: the CNN's activations want small parts on a
    # CPU, 737 samples instead of 2,048 halve its time per θ)
    rows = int(min(n, max(16, budget // bytes_per_sample)))
    if restricted.batched:  # explicit batched products: about 8 θ per pass run fastest (1,024 θ: 7.5 s, 10 s with 2)
        rows = int(min(n, max(16, budget // (8 * bytes_per_sample))))
    if restricted.precomputed:  # the [D + 1, rows, ...] first-layer features of a part stay within the budget too
        rows = int(min(rows, max(64, budget // ((P.shape[1] + 1) * restricted.feature_numel * element))))
    local = objective.local_samples  # all n, or this rank's batches: the matrix is split over batches
    parts = [slice(s, min(s + rows, local.stop)) for s in range(local.start, local.stop, rows)]
    per_chunk = int(max(1, min(T, budget // (rows * bytes_per_sample))))  # models per vmapped pass
    sums = torch.zeros(T, N, dtype=objective.dtype, device=objective.device)
    if per_chunk == 1:  # one θ per pass runs without vmap: a batched tensor cannot take the channels-last layout of
        # hesslib's Conv2d (the paper's CNN: 0.073 s per θ over mnist5k instead of 0.108 s with a vmap, best of 3)
        def losses_of_chunk(chunk: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return restricted.per_sample_losses(chunk[0], features, y)[None]
    else:
        losses_of_chunk = vmap(restricted.per_sample_losses, in_dims=(0, None, None))
    chunks = [slice(start, min(start + per_chunk, T)) for start in range(0, T, per_chunk)]
    # precomputed features are the costly part of a data part: where every part's fit the budget together they are
    # made once and θ chunks go outside, so the batched path builds each chunk's weights w* + Pθ once; otherwise
    # parts go outside. Without precomputed features θ chunks go outside too (with D = 256 the weights read all of
    # P, 275 MB on the MLP)
    all_parts = (not restricted.precomputed or
                 (P.shape[1] + 1) * (local.stop - local.start) * restricted.feature_numel * element <= budget)
    order = ([(part, rows_t) for rows_t in chunks for part in parts] if all_parts
             else [(part, rows_t) for part in parts for rows_t in chunks])
    part_features = {part.start: restricted.features(objective.X[part]) for part in parts} if all_parts else {}
    features = weights = None
    bar = progress_bar(total=T * len(parts), desc="subspace losses", unit="θ·part", enabled=progress)
    for i, (part, rows_t) in enumerate(order):
        if all_parts:
            features = part_features[part.start]
        elif i == 0 or part != order[i - 1][0]:
            features = restricted.features(objective.X[part])
        y, index = objective.y[part], objective.batch_index[part]
        if restricted.batched:
            if i == 0 or rows_t != order[i - 1][1]:
                weights = restricted.weights_at(thetas[rows_t])
            per_sample = restricted.batched_losses(thetas[rows_t], features, y, weights=weights)
        else:
            per_sample = losses_of_chunk(thetas[rows_t], features, y)  # [c, n_part]
        sums[rows_t].index_add_(1, index, per_sample)
        bar.update(rows_t.stop - rows_t.start)
    bar.close()
    return objective.all_reduce(sums) / objective.batch_counts


def grid_thetas(extent: float, points: int, *, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A points x points mesh of θ on [−extent, extent]².

    Args:
        extent: the half-width of the square, > 0.
        points: the points per axis, ≥ 2.
        dtype: the dtype of the outputs.

    Returns:
        (axis, thetas): axis [points] from −extent to extent, and thetas [points², 2], row-major, with
        ``thetas[i * points + j] = (axis[i], axis[j])``.

    Raises:
        ValueError: if ``points`` < 2 or ``extent`` ≤ 0.

    Example:
        >>> axis, thetas = grid_thetas(1.0, 3)
        >>> axis.tolist(), thetas.shape, thetas[1].tolist()
        ([-1.0, 0.0, 1.0], torch.Size([9, 2]), [-1.0, 0.0])
    """
    if points < 2 or not extent > 0:
        raise ValueError(f"need points >= 2 and extent > 0, got points={points}, extent={extent}")
    axis = torch.linspace(-extent, extent, points, dtype=dtype)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return axis, torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
