"""The loss as a function of the flat parameter vector w, its Hessian-vector products, per-batch curvature.

Batches: the data, in its fixed order, is cut into N = ceil(n / B) consecutive batches of B samples; a short
last batch is kept (``drop_last=False``, its loss is the mean over its own samples) or dropped. Every batch
counts equally: ℓ_i(w) is the mean per-sample loss of batch i, L_k(w) = (1/k) Σ_{i≤k} ℓ_i(w), and the
full-data loss is L(w) = L_N(w), so its Hessian H = (1/N) Σ_i ∇²ℓ_i exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from . import rop, taylor
from .losses import Loss, check_loss, cross_entropy_class_major, per_sample_loss
from .models import Conv2d
from .operators import check_block, check_vector
from .progress import progress_bar

if torch.distributed.is_available():
    # torch.distributed.nn.functional binds the default process group as a default argument when it is first
    # imported, and torch.func's first gradient imports it (through torch._dynamo). Imported after
    # init_process_group, it keeps the group alive past destroy_process_group: gloo's threads then outlive it and
    # are torn down while the interpreter exits, which sometimes aborts ("terminate called without an active
    # exception"). Imported here, before a program creates its group, it binds None.
    import torch.distributed.nn.functional  # noqa: F401

# The most MiB of activations (per sample × samples of a chunk × vectors of a block) one pass may hold: small on
# the CPU, where memory-bound kernels want their data in the caches and each tensor below malloc's 32 MiB mmap
# threshold (above it, every new tensor is fresh memory from the system: the paper's CNN's products ran 1.9x slower
# at 96 MiB, 1,603 samples and a 40 MiB tensor per chunk, than at 32 MiB); on an accelerator, a bound on its memory.
ACTIVATION_BUDGET_MB = 32.0
ACCELERATOR_ACTIVATION_BUDGET_MB = 2048.0
# The most MiB of forward and backward passes at w* an Objective keeps for its next explicit product (rop.Primal).
PRIMAL_CACHE_MB = 512.0


HvpMethod = Literal["explicit", "jvp"]


def split_blocks(flat: torch.Tensor, blocks: list[ParameterBlock]) -> dict[str, torch.Tensor]:
    """Flat parameter vectors [..., Σ block sizes] as named tensors [..., *shape], one per block, in order."""
    # one split, not a slice per block: under autograd a slice's backward writes a zero-filled [M] buffer per
    # block, a split's backward one concatenation (2.3x faster projected_hessians on the MLP)
    sizes = [block.slice.stop - block.slice.start for block in blocks]
    lead = flat.shape[:-1]
    return {block.name: part.reshape(*lead, *block.shape)
            for block, part in zip(blocks, flat.split(sizes, dim=-1), strict=True)}


class ParameterBlock(NamedTuple):
    """One parameter tensor of the model inside the flat vector w.

    Attributes:
        name: its name, as in ``model.named_parameters()``.
        shape: its shape.
        slice: the slice of w [M] that holds it, flattened.
    """

    name: str
    shape: torch.Size
    slice: slice


class Objective:
    """The loss L(w) over ``X, y`` cut into batches in their given order, around w* = the model's parameters.

    ℓ_i(w) is the mean per-sample loss of batch i (i = 1..N), L_k(w) = (1/k) Σ_{i≤k} ℓ_i(w) and
    L(w) = L_N(w), so the Hessian at w* is H = ∇²L(w*) = (1/N) Σ_i ∇²ℓ_i(w*): every batch counts equally, a
    short last batch included. w* is the model's trainable parameters flattened into ``params`` [M]; the model
    is switched to evaluation mode (``model.eval()``, in place) and evaluated functionally at any w.

    Args:
        model: the network f(x; w); its trainable parameters are w* (M of them).
        X: inputs [n, ...] (e.g. [n, C, H, W]), n ≥ 1; cast to ``dtype`` on ``device``.
        y: targets [n]: int64 class labels, or float targets for ``"mse"`` (cast to ``dtype``).
        batch_size: B, the samples per batch, 1 ≤ B ≤ n; N = ceil(n / B) batches (floor with ``drop_last``).
        loss: ``"cross_entropy"`` or ``"mse"`` (see :func:`~hesslib.losses.per_sample_loss`).
        drop_last: drop a short last batch instead of keeping it.
        dtype: the floating type everything is computed in (default: the model's).
        device: where everything is computed (default: the model's).
        chunk_size: the most samples one forward/backward pass sees, ≥ 1 (bounds memory, not the result).
        distributed: split the work over the processes of the initialised ``torch.distributed`` default group
            (e.g. under ``torchrun``). Every rank passes the SAME full ``X``, ``y`` and model; rank r evaluates only
            its contiguous share of the N batches (:attr:`local_batches`, ``N·r/W`` to ``N·(r+1)/W``). Per-batch
            results (:meth:`batch_losses`, :func:`projected_hessians`, :func:`~hesslib.subspace.subspace_losses`,
            ...) are assembled on every rank by an all-reduce of vectors that are zero outside each rank's own
            batches, so each entry is one rank's value plus exact zeros: the same as a single process computes,
            whatever the number of processes. Full-data sums (:meth:`gradient`, :meth:`hvp`) are all-reduced
            partial sums, which differ across world sizes by float rounding only. With NCCL the tensors live on
            each rank's GPU (``device``).

    Attributes:
        params: w* [M], in ``dtype`` on ``device``.
        num_samples: n, the samples kept (fewer than ``len(X)`` with ``drop_last``).
        num_batches: N.
        parameter_blocks: one :class:`ParameterBlock` per trainable parameter tensor, in w's order.
        batch_index: int64 [n], the 0-based batch of each sample.
        hvp_method: how :meth:`hvp` computes products: ``"explicit"``, Pearlmutter's passes written out as large
            matrix products and convolutions (:mod:`hesslib.rop`; chosen for Sequentials of Linear and Conv2d
            layers, elementwise activations, max-pooling and Flatten; on the paper's MLP 2.5x faster for one
            vector, 1.1–1.5x for blocks; on its CNN 3.2–3.5x and 1.4x), or ``"jvp"``, a ``vmap`` of ``jvp`` over
            ``grad`` (any model). Both are exact; they differ by float rounding. Assign it to choose.
        batch_counts: [N], the number of samples in each batch, in ``dtype``.
        rank, world_size: this process's rank and the number of processes (0 and 1 unless ``distributed``).
        local_batches: the slice of batches (0-based) this process evaluates; all N unless ``distributed``.
        local_samples: the slice of samples of those batches.

    Raises:
        ValueError: if ``loss`` is unknown, ``X`` and ``y`` are empty or differ in length, ``batch_size`` is
            outside [1, n] or ``chunk_size`` < 1.
        RuntimeError: if ``distributed`` is set but no ``torch.distributed`` process group is initialised.

    Example:
        >>> from hesslib import make_model
        >>> model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
        >>> X, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 1, 0, 1])
        >>> obj = Objective(model, X, y, batch_size=2)
        >>> obj.num_params, obj.num_batches, obj.batch_counts.tolist()
        (10, 3, [2.0, 2.0, 1.0])
        >>> bool(torch.isclose(obj.value(), obj.batch_losses().mean()))
        True
        >>> obj.hvp(torch.eye(10)[:, :3]).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        X: torch.Tensor,
        y: torch.Tensor,
        *,
        batch_size: int,
        loss: Loss = "cross_entropy",
        drop_last: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        chunk_size: int = 2048,
        distributed: bool = False,
    ) -> None:
        check_loss(loss)
        if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs an initialised torch.distributed process group (e.g. run "
                               "under torchrun and call torch.distributed.init_process_group first)")
        if len(X) != len(y) or len(X) == 0:
            raise ValueError(f"X and y must be non-empty with the same length, got {len(X)} and {len(y)}")
        if not 1 <= batch_size <= len(X):
            raise ValueError(f"batch_size must be in [1, {len(X)}] (the number of samples), got {batch_size}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        first = next(model.parameters())
        self.dtype = dtype or first.dtype
        self.device = torch.device(device) if device is not None else first.device
        self.model = model.eval()
        self.loss = loss
        self.batch_size = batch_size
        n = (len(X) // batch_size) * batch_size if drop_last else len(X)
        self.X = X[:n].to(self.device, self.dtype)
        self.y = y[:n].to(self.device)
        if self.y.is_floating_point():
            self.y = self.y.to(self.dtype)
        self.num_samples = n
        self.num_batches = math.ceil(n / batch_size)
        self.chunk_size = chunk_size
        names, tensors = zip(*[(k, p) for k, p in model.named_parameters() if p.requires_grad], strict=True)
        ends = list(itertools.accumulate(t.numel() for t in tensors))
        self.parameter_blocks = [ParameterBlock(name, t.shape, slice(end - t.numel(), end))
                                 for name, t, end in zip(names, tensors, ends, strict=True)]
        self.params = torch.cat([t.detach().reshape(-1) for t in tensors]).to(self.device, self.dtype)
        self._buffers = {k: b.to(self.device) for k, b in model.named_buffers()}
        # batch index and weight of every sample: L(w) = Σ_s weight_s ℓ_s(w), weight_s = 1 / (N · |batch(s)|)
        self.batch_index = torch.arange(n, device=self.device) // batch_size
        counts = torch.bincount(self.batch_index, minlength=self.num_batches).to(self.dtype)
        self.batch_counts = counts
        self.sample_weights = 1.0 / (self.num_batches * counts[self.batch_index])
        self.distributed = distributed
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.world_size = torch.distributed.get_world_size() if distributed else 1
        first_batch = self.num_batches * self.rank // self.world_size
        last_batch = self.num_batches * (self.rank + 1) // self.world_size
        self.local_batches = slice(first_batch, last_batch)
        self.local_samples = slice(min(first_batch * batch_size, n), min(last_batch * batch_size, n))
        every_parameter_trained = all(p.requires_grad for p in model.parameters())
        explicit = (isinstance(model, nn.Sequential) and every_parameter_trained and not self._buffers
                    and rop.supported(list(model), loss))
        self.hvp_method: HvpMethod = "explicit" if explicit else "jvp"
        self._primal_cache: tuple | None = None  # (params key, [(chunk, rop.Primal)]) of the explicit products

    @property
    def preferred_block_size(self) -> int:
        """The Lanczos block size that is fastest with :attr:`hvp_method` (the eigen-solver's default).

        1 for explicit products: with the shared passes kept, one vector costs about what it costs in a block
        (1.25 gradients per vector against 1.2–1.4 in blocks of 2–16 on the paper's MLP; 1.7–1.9 against 1.5–1.9 in
        blocks of 4 on its CNN), and a block Krylov space
        needs more products for the same accuracy (top-10 to 1e-4: 27, 34 and 48 products for blocks of 1, 2 and 4).
        2 for ``jvp`` of ``grad``, whose single products carry vmap's fixed cost (top-10 on the MLP 2.6 s against
        3.6 s and 3.4 s for blocks of 1 and 4; on the paper's CNN 15 s against 16 s and 21 s).
        """
        return 1 if self.hvp_method == "explicit" else 2

    # ---- several processes -----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place, and return it (itself unless :attr:`distributed`).

        Per-batch results are reduced as vectors that are zero outside each rank's :attr:`local_batches`, so
        the sum is exact; partial sums over the data differ across world sizes by float rounding only.
        """
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every process, in place (e.g. the eigen-solver's random start)."""
        if self.distributed:
            torch.distributed.broadcast(tensor, src=0)
        return tensor

    # ---- parameters ------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """M, the number of parameters."""
        return self.params.numel()

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector w [M] into the model's named parameter tensors (views), one per parameter block."""
        return split_blocks(w, self.parameter_blocks)

    def _primal_passes(self):
        """(chunk, :class:`hesslib.rop.Primal`) for each of :meth:`chunks`: the passes every explicit product shares.

        They are kept for the next product (on the paper's MLP a single product then costs 1.2 instead of 1.8
        gradients) while they fit in :data:`PRIMAL_CACHE_MB` and :attr:`params` is unchanged; else recomputed.
        """
        key = (id(self.params), self.params._version)
        if self._primal_cache is not None and self._primal_cache[0] == key:
            yield from self._primal_cache[1]
            return
        weights, modules = self.unflatten(self.params), list(self.model)
        keep, held, passes = True, 0, []
        first, last = self.local_samples.start, self.local_samples.stop
        for part in self.chunks():
            state = rop.primal(modules, weights, self.X[part], self.y[part], self.sample_weights[part], self.loss)
            held += state.nbytes
            # keep them while all chunks, estimated from those so far, fit (the paper's CNN: 0.36 GB over mnist5k)
            keep = keep and held * (last - first) <= PRIMAL_CACHE_MB * 2**20 * (part.stop - first)
            if keep:
                passes.append((part, state))
            else:
                passes.clear()  # nothing is kept: let the passes so far go
            yield part, state
        self._primal_cache = (key, passes) if keep else None

    def per_sample_losses(self, w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The per-sample losses ℓ(f(x; w), y) for each sample of ``X``.

        Args:
            w: parameters [M] in ``dtype`` on ``device`` (not checked).
            X: inputs [m, ...] on ``device``, in ``dtype``.
            y: targets [m] on ``device``.

        Returns:
            [m], in ``dtype``.
        """
        out = functional_call(self.model, ({**self.unflatten(w), **self._buffers},), (X,))
        return per_sample_loss(out, y, self.loss)

    @functools.cached_property
    def activation_numel(self) -> int:
        """Floats of activations one sample produces in a forward pass (its input and every leaf module's output)."""
        total = self.X[0].numel()
        hooks = []

        def count(_module, _inputs, output):
            nonlocal total
            total += output.numel()

        for module in self.model.modules():
            if not list(module.children()):
                hooks.append(module.register_forward_hook(count))
        try:
            with torch.no_grad():
                functional_call(self.model, ({**self.unflatten(self.params), **self._buffers},), (self.X[:1],))
        finally:
            for hook in hooks:
                hook.remove()
        return total

    @property
    def _activation_budget_mb(self) -> float:
        """:data:`ACTIVATION_BUDGET_MB` on the CPU, :data:`ACCELERATOR_ACTIVATION_BUDGET_MB` elsewhere."""
        return ACTIVATION_BUDGET_MB if self.device.type == "cpu" else ACCELERATOR_ACTIVATION_BUDGET_MB

    def chunks(self, width: int = 1) -> list[slice]:
        """Consecutive slices of samples covering this process's samples (all n when it runs alone).

        Each holds at most ``chunk_size`` samples, and fewer when one chunk's activations times ``width`` (the
        vectors of a block of products) would exceed :data:`ACTIVATION_BUDGET_MB` on the CPU (or
        :data:`ACCELERATOR_ACTIVATION_BUDGET_MB` on another device): models with many activations per sample
        are memory-bound on a CPU, and small chunks keep them in the caches (a block of 4 products on the paper's
        CNN: 1.9 s at 276 samples per chunk against 6.2 s at 2,048). The MLP's activations are small, so it
        keeps ``chunk_size``. Chunking changes float rounding only.
        """
        per_sample = self.activation_numel * self.X.element_size() * max(1, width)
        c = max(16, min(self.chunk_size, int(self._activation_budget_mb * 2**20 // per_sample)))
        start, stop = self.local_samples.start, self.local_samples.stop
        return [slice(s, min(s + c, stop)) for s in range(start, stop, c)]

    def prefix(self, k: int) -> Objective:
        """L_k: the same objective restricted to its first k batches (same w*, batch size, loss, dtype, device).

        Its Hessian is H_k = (1/k) Σ_{i≤k} ∇²ℓ_i(w*), as in the paper's Theorem 1.

        Args:
            k: the number of batches, an int in [1, N].

        Returns:
            An :class:`Objective` with ``num_batches == k`` (``self`` itself for k = N).

        Raises:
            ValueError: if ``k`` is not in [1, N].
        """
        if not isinstance(k, int) or not 1 <= k <= self.num_batches:
            raise ValueError(f"k must be an integer in [1, {self.num_batches}] (N = num_batches), got {k!r}")
        if k == self.num_batches:
            return self
        n = k * self.batch_size
        part = Objective(self.model, self.X[:n], self.y[:n], batch_size=self.batch_size, loss=self.loss,
                         dtype=self.dtype, device=self.device, chunk_size=self.chunk_size,
                         distributed=self.distributed)
        part.params = self.params  # w* as this objective holds it
        return part

    def batch(self, i: int) -> Objective:
        """ℓ_i alone: the objective of batch i's samples (1-based), whose Hessian is h_i = ∇²ℓ_i(w*).

        It is never split over processes (one batch is cheap; every rank computes the same), so with
        :meth:`prefix`, H_k = (1/k) Σ_{i≤k} h_i can be accumulated batch by batch
        (:func:`~hesslib.eigen.running_mean_eigenpairs`).

        Args:
            i: the batch, an int in [1, N].

        Returns:
            An :class:`Objective` with one batch (same w*, loss, dtype, device, chunk size).

        Raises:
            ValueError: if ``i`` is not in [1, N].
        """
        if not isinstance(i, int) or not 1 <= i <= self.num_batches:
            raise ValueError(f"i must be an integer in [1, {self.num_batches}] (N = num_batches), got {i!r}")
        part = slice((i - 1) * self.batch_size, min(i * self.batch_size, self.num_samples))
        single = Objective(self.model, self.X[part], self.y[part], batch_size=part.stop - part.start, loss=self.loss,
                           dtype=self.dtype, device=self.device, chunk_size=self.chunk_size)
        single.params = self.params
        return single

    # ---- losses ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def batch_losses(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """The batch losses ℓ_i(w) for i = 1..N.

        Args:
            w: parameters [M] in ``dtype`` on ``device``; None means w*.

        Returns:
            [N] in ``dtype``; index i − 1 holds ℓ_i(w).

        Raises:
            ValueError: if ``w`` does not have shape [M], ``dtype`` and ``device``.
        """
        w = self.params if w is None else check_vector(self, w, "w")
        sums = torch.zeros(self.num_batches, dtype=self.dtype, device=self.device)
        for part in self.chunks():
            sums.index_add_(0, self.batch_index[part], self.per_sample_losses(w, self.X[part], self.y[part]))
        return self.all_reduce(sums) / self.batch_counts

    def value(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """The full-data loss L(w) = L_N(w) = (1/N) Σ_i ℓ_i(w), a scalar tensor (w defaults to w*).

        Raises:
            ValueError: if ``w`` does not have shape [M], ``dtype`` and ``device``.
        """
        return self.batch_losses(w).mean()

    def _chunk_loss(self, w: torch.Tensor, part: slice) -> torch.Tensor:
        """The share of L(w) contributed by the samples in ``part`` (weighted per-sample losses, summed)."""
        return (self.sample_weights[part] * self.per_sample_losses(w, self.X[part], self.y[part])).sum()

    def gradient(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient ∇L(w), shape [M] in ``dtype`` (w defaults to w*).

        Raises:
            ValueError: if ``w`` does not have shape [M], ``dtype`` and ``device``.
        """
        w = self.params if w is None else check_vector(self, w, "w")
        total = torch.zeros_like(w)
        for part in self.chunks():
            total += grad(self._chunk_loss)(w, part)
        return self.all_reduce(total)

    # ---- Hessian-vector products -----------------------------------------------------------------------
    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        """The Hessian-vector products H V with H = ∇²L(w*).

        The r columns go through one pass per data chunk: Pearlmutter's explicit forward and backward passes
        (:mod:`hesslib.rop`) where :attr:`hvp_method` is ``"explicit"``, else ONE vmapped forward-over-reverse
        product (``jvp`` of ``grad``).

        Args:
            V: [M, r] with r ≥ 1, or [M]; in ``dtype`` on ``device``.

        Returns:
            H V, of V's shape.

        Raises:
            ValueError: if ``V`` has the wrong shape, dtype or device.
        """
        single = V.dim() == 1
        V = check_block(self, V.unsqueeze(1) if single else V, "V")
        w = self.params
        r = V.shape[1]
        out = torch.zeros(r, V.shape[0], dtype=self.dtype, device=self.device)
        if self.hvp_method == "explicit":
            weights, directions = self.unflatten(w), split_blocks(V.T.contiguous(), self.parameter_blocks)
            budget = self._activation_budget_mb
            for part, state in self._primal_passes():
                # tangents of at most `width` vectors at once, so one pass's activations × vectors fit the budget
                per_vector = (part.stop - part.start) * self.activation_numel * self.X.element_size()
                width = max(1, int(budget * 2**20 // per_vector))
                for first in range(0, r, width):
                    group = {name: d[first:first + width] for name, d in directions.items()}
                    products = rop.tangent(state, weights, group, self.loss)
                    for block in self.parameter_blocks:  # in place, block by block (a concatenation costs a pass)
                        out[first:first + width, block.slice] += products[block.name].flatten(1)
            self.all_reduce(out)
            return out[0] if single else out.T
        for part in self.chunks(width=r):

            def hv(v: torch.Tensor, part: slice = part) -> torch.Tensor:
                return jvp(lambda w_: grad(self._chunk_loss)(w_, part), (w,), (v,))[1]

            out += vmap(hv)(V.T)
        self.all_reduce(out)
        return out[0] if single else out.T


AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, Conv2d, nn.Conv3d)  # hesslib's Conv2d: a layout, not a new map


class SubspaceLoss:
    """The per-sample losses ℓ_s(w* + Pθ) as a function of θ ∈ R^D, with the first layer's response precomputed.

    When the model is an ``nn.Sequential`` whose first parametric module is a linear or convolution layer (affine
    in its weights and bias) after parameter-free ones (e.g. ``Flatten``), that layer's output at w* + Pθ is
    exactly z*(x) + Σ_d θ_d z_d(x), with z* the layer at w* and z_d the layer with weight and bias taken from
    column d of P. :meth:`features` computes [z*, z_1, ..., z_D] once per data chunk; every θ then costs D
    multiply-adds per output of that layer instead of its fan-in (784 for the paper's MLP: 3.8x fewer multiply-adds
    per θ at D = 10). With ``precompute=None`` it is used where it saves work: D < fan-in and, when the number T of θ
    to come is known (``evaluations``), (D + 1)·fan-in < T·(fan-in − D) multiply-adds per first-layer output (the
    D + 1 maps cost more than they save for few θ in many directions, e.g. 128 θ with D = 256 on the paper's MLP);
    True or False forces the choice. Otherwise :meth:`features` is the input itself and :meth:`per_sample_losses`
    runs the whole model at w* + Pθ. Both paths agree to float rounding.

    When the layers after the first are Linear layers and elementwise activations only (the MLP, the linear model),
    :meth:`batched_losses` runs many θ at once with explicit batched products instead of a vmap of
    :meth:`per_sample_losses`: z = z* + Θ Z (one ``addmm``), then per layer one ``baddbmm`` with the bias fused and
    the activation in place, so each activation is written once per θ (``batched`` says whether it applies; on the
    paper's MLP, 1,024 θ over 4,992 samples: about 7.5 s instead of 13 s). Without the precomputation the same runs
    the whole model when it is Flatten modules, then Linear layers and those activations, every parameter trained:
    the first Linear layer sees the input every θ shares, so its c weight matrices take one ``mm`` with it.

    Args:
        objective: the loss, its data and w*.
        P: the subspace basis [M, D], in the objective's dtype on its device (not checked here).
        precompute: precompute the first layer (True), never (False) or where that saves work (None, see above).
        evaluations: how many θ the caller will evaluate (None: many), for the choice of ``precompute=None``.

    Raises:
        ValueError: if ``precompute`` is True but the model has no such first layer.
    """

    def __init__(self, objective: Objective, P: torch.Tensor, *, precompute: bool | None = None,
                 evaluations: int | None = None) -> None:
        self.objective, self.P = objective, P
        D, model = P.shape[1], objective.model
        first = _first_affine_layer(model)
        if precompute and first is None:
            raise ValueError("precompute=True needs an nn.Sequential whose first parametric module is a linear or "
                             "convolution layer after parameter-free modules")
        if first is not None and precompute is None:
            fan_in = model[first].weight[0].numel()
            precompute = D < fan_in and (evaluations is None or (D + 1) * fan_in < evaluations * (fan_in - D))
        self.precomputed = bool(precompute)
        # the modules run on features(X) and their parameters: the whole model unless the first layer is precomputed
        self.tail, self.tail_blocks = model, objective.parameter_blocks
        self.tail_params, self.tail_P = objective.params, P
        # the batched path takes every weight from w* + Pθ: no frozen parameter (it would be dropped), no buffer
        stateless = not objective._buffers and all(p.requires_grad for p in model.parameters())
        if not self.precomputed:  # then it runs the whole model, when Flatten modules and a Linear layer come first
            self.batched = (stateless and first is not None and type(model[first]) is nn.Linear
                            and all(type(m) is nn.Flatten for m in model[:first])
                            and all(type(m) in BATCHED_TAIL for m in model[first:]))
            return
        prefix = f"{first}."
        head_blocks = [b for b in objective.parameter_blocks if b.name.startswith(prefix)]
        rows = torch.cat([torch.arange(b.slice.start, b.slice.stop, device=P.device) for b in head_blocks])
        rest = torch.ones(objective.num_params, dtype=torch.bool, device=P.device)
        rest[rows] = False
        self._head, self.tail = model[: first + 1], model[first + 1:]
        self._head_blocks = head_blocks
        self.tail_blocks = [b for b in objective.parameter_blocks if not b.name.startswith(prefix)]
        # the head's parameters at w* and along each column of P, [D + 1, head params], one row per parameter set
        self._head_weights = torch.cat([objective.params[rows][None], P[rows].T])
        self.tail_params, self.tail_P = objective.params[rest], P[rest]
        self.batched = stateless and all(type(module) in BATCHED_TAIL for module in self.tail)
        self.feature_numel = self.features(objective.X[:1])[0, 0].numel()  # first-layer outputs per sample

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """What :meth:`per_sample_losses` needs of inputs X [m, ...]: [D + 1, m, ...] first-layer outputs, or X."""
        if not self.precomputed:
            return X
        buffers = self.objective._buffers

        def head(weights: torch.Tensor) -> torch.Tensor:
            return functional_call(self._head, ({**split_blocks(weights, self._head_blocks), **buffers},), (X,))

        with torch.no_grad():
            return vmap(head)(self._head_weights)

    def tail_weights(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of ``flat`` [c, tail parameters] as the tail's parameter tensors by name, each [c, *shape]."""
        return split_blocks(flat, self.tail_blocks)

    def weights_at(self, thetas: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tail's parameters at w* + Pθ for each row θ of ``thetas`` [c, D] (or one θ [D]), by name, [c, *shape]."""
        return self.tail_weights(self.tail_params + thetas @ self.tail_P.T)

    @torch.no_grad()
    def batched_losses(self, thetas: torch.Tensor, features: torch.Tensor, y: torch.Tensor, *,
                       weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """ℓ_s(w* + Pθ_t) [c, m] for θ_t the rows of ``thetas`` [c, D], from :meth:`features` (needs ``batched``).

        ``weights``: :meth:`weights_at` of these θ, when the caller keeps them for several data parts.
        """
        c, m = thetas.shape[0], y.shape[0]
        shared, z = features, None  # the input every θ shares; z [c, m, width] once a Linear layer has run
        if self.precomputed:
            z = torch.addmm(features[0].reshape(1, -1), thetas, features[1:].reshape(thetas.shape[1], -1))
            z = z.view(c, m, features.shape[-1])
        weights = self.weights_at(thetas) if weights is None else weights
        children = list(self.tail.named_children())
        for position, (name, module) in enumerate(children):
            if z is None:  # the whole model: Flatten modules, then the first Linear layer on the shared input
                if isinstance(module, nn.Linear):
                    W, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")  # [c, out, in], [c, out]
                    z = (shared @ W.reshape(-1, W.shape[-1]).T).view(m, c, -1).transpose(0, 1).contiguous()
                    z = z if b is None else z.add_(b[:, None, :])
                else:
                    shared = module(shared)
                continue
            if (isinstance(module, nn.Linear) and position == len(children) - 1
                    and self.objective.loss == "cross_entropy" and y.dim() == 1):
                # the logits class-major, [c, classes, m]: for few classes the product and the loss run about 3x
                # and 6x faster than samples-major (the paper's 10 classes: 1.0 ms against 3.2 ms and 0.17 against
                # 1.05 ms for 8 θ x 1,600 samples)
                W, b = weights[f"{name}.weight"], weights.get(f"{name}.bias")  # [c, out, in], [c, out]
                logits = torch.bmm(W, z.transpose(1, 2)) if b is None else torch.baddbmm(b[:, :, None], W,
                                                                                           z.transpose(1, 2))
                return cross_entropy_class_major(logits, y)
            if isinstance(module, nn.Linear):
                W, b = weights[f"{name}.weight"].transpose(1, 2), weights.get(f"{name}.bias")
                z = torch.bmm(z, W) if b is None else torch.baddbmm(b[:, None, :], z, W)
            elif isinstance(module, nn.ReLU):
                z = z.relu_()
            elif isinstance(module, nn.Tanh):
                z = z.tanh_()
            else:
                z = module(z)
        target = y.expand(c, *y.shape).reshape(c * m, *y.shape[1:])
        return per_sample_loss(z.reshape(c * m, -1), target, self.objective.loss).view(c, m)

    def per_sample_losses(self, theta: torch.Tensor, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ℓ_s(w* + Pθ) for the samples whose :meth:`features` are given; θ [D] (vmap over θ for many)."""
        if not self.precomputed:
            return self.objective.per_sample_losses(self.objective.params + self.P @ theta, features, y)
        z = features[0] + torch.tensordot(theta, features[1:], dims=1)
        weights = self.weights_at(theta)
        out = functional_call(self.tail, ({**weights, **self.objective._buffers},), (z,))
        return per_sample_loss(out, y, self.objective.loss)


BATCHED_TAIL = (nn.Linear, nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid)  # layers SubspaceLoss.batched_losses runs


def _first_affine_layer(model: nn.Module) -> int | None:
    """Index of a Sequential's first parametric module if it is affine and only parameter-free modules precede it."""
    if not isinstance(model, nn.Sequential):
        return None
    for index, module in enumerate(model):
        names = {name for name, p in module.named_parameters() if p.requires_grad}
        if not names:
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                return None  # frozen parameters or state: not a pure function of the input
            continue
        affine = type(module) in AFFINE_LAYERS and names <= {"weight", "bias"}
        return index if affine and not any(True for _ in module.buffers()) else None
    return None


@dataclass
class ProjectedCurvature:
    """Per-batch terms at w*, in the subspace spanned by P's D columns (made by :func:`projected_hessians`).

    Attributes:
        losses: ℓ_i(w*) for i = 1..N, [N].
        grads: Pᵀ∇ℓ_i(w*), [N, D].
        hessians: Pᵀ∇²ℓ_i(w*)P, [N, D, D], symmetric.
    """

    losses: torch.Tensor
    grads: torch.Tensor
    hessians: torch.Tensor


def projected_hessians(objective: Objective, P: torch.Tensor, *, memory_mb: float = 512.0) -> ProjectedCurvature:
    """The per-batch terms ℓ_i(w*), Pᵀ∇ℓ_i(w*) and Pᵀ∇²ℓ_i(w*)P for every batch i in ONE pass over the data.

    Each batch's gradient and its D Hessian-vector products come from one ``jvp`` of ``grad`` (the jvp's primal
    output is the gradient), vmapped over the D directions and over a chunk of batches, then projected onto
    P. Their prefix means are L_k, Pᵀ∇L_k and PᵀH_kP with H_k = (1/k) Σ_{i≤k} ∇²ℓ_i(w*), for every k at once
    (see :func:`~hesslib.estimators.delta_from_curvature`).

    Args:
        objective: the loss and its N batches, around w*.
        P: the subspace basis [M, D], D ≥ 1, in the objective's dtype on its device (orthonormal columns are
            the intended use but are not required).
        memory_mb: the approximate budget in MiB for one chunk of per-batch products [chunk, D, M], > 0.

    Returns:
        A :class:`ProjectedCurvature` with ``losses`` [N], ``grads`` [N, D] and ``hessians`` [N, D, D]
        (symmetrised), in the objective's dtype on its device.

    Raises:
        ValueError: if ``P`` does not have shape [M, D] with D ≥ 1, the objective's dtype and device.

    Example:
        >>> from hesslib import make_model
        >>> model = make_model("linear", (1, 2, 2), num_classes=2, seed=0)
        >>> obj = Objective(model, torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 1, 0, 1, 0]), batch_size=2)
        >>> c = projected_hessians(obj, torch.eye(10)[:, :3])
        >>> c.losses.shape, c.grads.shape, c.hessians.shape
        (torch.Size([3]), torch.Size([3, 3]), torch.Size([3, 3, 3]))
    """
    P = check_block(objective, P, "P")
    obj, D, B = objective, P.shape[1], objective.batch_size
    N, M, n = obj.num_batches, obj.num_params, obj.num_samples
    # lay the data out as [N, B, ...] with a 0/1 mask for the padding of a short last batch
    pad = N * B - n
    X = torch.cat([obj.X, obj.X[:pad]]) if pad else obj.X
    y = torch.cat([obj.y, obj.y[:pad]]) if pad else obj.y
    mask = torch.ones(N * B, dtype=obj.dtype, device=obj.device)
    if pad:
        mask[n:] = 0
    X, y, mask = X.reshape(N, B, *X.shape[1:]), y.reshape(N, B, *y.shape[1:]), mask.reshape(N, B)
    w = obj.params
    directions = P.T.contiguous()  # one direction per row: a strided tangent makes every split of it a slow copy

    def batch_terms(Xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor):
        def loss_fn(w_: torch.Tensor) -> torch.Tensor:
            return (mb * obj.per_sample_losses(w_, Xb, yb)).sum() / mb.sum()

        def grad_and_hvp(v: torch.Tensor):
            return jvp(grad(loss_fn), (w,), (v,))

        g, HP = vmap(grad_and_hvp)(directions)  # g: [D, M] (D identical copies), HP: [D, M] = (∇²ℓ_i P)ᵀ
        return loss_fn(w), P.T @ g[0], HP @ P

    bytes_per_batch = 3 * D * M * P.element_size() + B * X[0, 0].numel() * D * 64
    per_chunk = max(1, min(N, int(memory_mb * 2**20 // bytes_per_batch)))
    losses = torch.zeros(N, dtype=obj.dtype, device=obj.device)
    grads = torch.zeros(N, D, dtype=obj.dtype, device=obj.device)
    hessians = torch.zeros(N, D, D, dtype=obj.dtype, device=obj.device)
    local = obj.local_batches
    for start in range(local.start, local.stop, per_chunk):
        part = slice(start, min(start + per_chunk, local.stop))
        lo, gr, he = vmap(batch_terms)(X[part], y[part], mask[part])
        losses[part], grads[part], hessians[part] = lo.detach(), gr.detach(), he.detach()
    for terms in (losses, grads, hessians):  # zero outside each rank's batches: the sum assembles them exactly
        obj.all_reduce(terms)
    return ProjectedCurvature(losses, grads, 0.5 * (hessians + hessians.transpose(1, 2)))


@dataclass
class HigherDerivatives:
    """Per-batch third and fourth derivatives of f_i(θ) = ℓ_i(w* + Pθ) at θ = 0, contracted as Δ_k's σ⁴ term needs.

    Made by :func:`projected_higher_derivatives`; read by :func:`~hesslib.estimators.delta_fourth_order`.

    Attributes:
        third: [N, D], row i: t_i,a = Σ_b ∂³f_i / ∂θ_a ∂θ_b ∂θ_b.
        fourth: [N], s_i = Σ_{a,b} ∂⁴f_i / ∂θ_a² ∂θ_b².
    """

    third: torch.Tensor
    fourth: torch.Tensor


HigherMethod = Literal["taylor", "jvp"]


def default_higher_method(objective: Objective) -> HigherMethod:
    """The method :func:`projected_higher_derivatives` uses by default: "taylor" where the model allows it."""
    model = objective.model
    return "taylor" if isinstance(model, nn.Sequential) and taylor.supported(list(model)) else "jvp"


def projected_higher_derivatives(objective: Objective, P: torch.Tensor, *, samples_per_step: int = 256,
                                 pairs_per_step: int = 32, method: HigherMethod | None = None,
                                 progress: bool = False) -> HigherDerivatives:
    """The contracted third and fourth derivatives of every batch loss along P, in one pass over the data.

    ``method="taylor"`` (the default wherever the model allows it: an ``nn.Sequential`` of Linear, Conv2d, ReLU,
    Tanh, exact GELU, MaxPool2d and Flatten, :func:`hesslib.taylor.supported`) propagates the Taylor series of
    ℓ_s(w* + t·Pu) to t⁴ (:mod:`hesslib.taylor`) along the D² directions u = e_a and e_a ± e_b (a < b), whose
    cubic and quartic coefficients c₃(u) = D³f[u, u, u]/3!, c₄(u) = D⁴f[u, u, u, u]/4! give the contractions
    exactly by polarisation: D³f[a, b, b] = (T(e_a + e_b) + T(e_a − e_b) − 2T(e_a))/6 and
    D⁴f[a, a, b, b] = (Q(e_a + e_b) + Q(e_a − e_b) − 2Q(e_a) − 2Q(e_b))/12 with T = 6c₃, Q = 24c₄. Every
    direction costs about one forward pass per nonzero coefficient (a ReLU MLP has only c₀..c₂ before its output
    layer), with c₀ shared. On the paper's MLP at D = 10 (4,992 samples, 2 CPU threads): 2.7–4 s with ReLU and
    8–10 s with GELU, against about 90 s for both by nested ``jvp``s (each method timed on the first 1,024
    samples and scaled); in float32 both are within 1e-5 of float64.

    ``method="jvp"`` (any model): for each pair of directions (e_a, e_b) of the subspace, D³f[e_b, e_b, e_a] and
    D⁴f[e_b, e_b, e_a, e_a] of the per-sample losses come together from one ``jvp`` along e_a of θ ↦ D³f[e_b, e_b,
    e_a](θ) (nested ``jvp``s: exact forward-mode derivatives, no finite differences). A vmap over b holds a vmap
    over a, so the second derivative along e_b is shared by every a; steps cover whole rows of D pairs (about
    ``pairs_per_step`` of them) and ``samples_per_step`` samples, and the terms are averaged into batches with the
    same weights as :meth:`Objective.batch_losses`. Cost: about 9 D² forward passes' worth instead of 24 D² (one jvp
    for both terms, the b-level work shared): on the paper's MLP at D = 10, 100 s -> 59 s, and 283 s before the
    first layer was precomputed (:class:`SubspaceLoss`); 51 s (ReLU) and 86 s (GELU) in a cold ``make paper``.

    Args:
        objective: the loss and its N batches, around w*.
        P: the subspace basis [M, D], D ≥ 1, in the objective's dtype on its device.
        samples_per_step: samples per vectorised step, ≥ 1 (bounds memory).
        pairs_per_step: direction pairs (a, b) per vectorised step, ≥ 1, of the D² (bounds memory; the taylor
            method takes this many of its D² directions, the jvp method rounds down to whole rows of D pairs, at
            least one row).
        method: ``"taylor"``, ``"jvp"`` or None (taylor where the model allows it, else jvp).
        progress: show a progress bar over the samples (:func:`~hesslib.progress.progress_bar`).

    Returns:
        A :class:`HigherDerivatives` in the objective's dtype on its device.

    Raises:
        ValueError: if ``P`` does not have shape [M, D] with D ≥ 1, the objective's dtype and device, if
            ``method`` is unknown, or if it is ``"taylor"`` for a model that method does not handle.
    """
    P = check_block(objective, P, "P")
    if method not in (None, "taylor", "jvp"):
        raise ValueError(f"method must be 'taylor', 'jvp' or None, got {method!r}")
    if method == "taylor" and default_higher_method(objective) != "taylor":
        raise ValueError("method='taylor' needs an nn.Sequential of Linear, Conv2d, ReLU, Tanh, GELU "
                         "(approximate='none'), MaxPool2d and Flatten modules; use method='jvp'")
    if (method or default_higher_method(objective)) == "taylor":
        return _higher_derivatives_taylor(objective, P, max(1, samples_per_step), max(1, pairs_per_step), progress)
    obj, D = objective, P.shape[1]
    eye = torch.eye(D, dtype=obj.dtype, device=obj.device)
    zero = torch.zeros(D, dtype=obj.dtype, device=obj.device)
    third = torch.zeros(obj.num_batches, D, dtype=obj.dtype, device=obj.device)
    fourth = torch.zeros(obj.num_batches, dtype=obj.dtype, device=obj.device)
    weights = 1.0 / obj.batch_counts[obj.batch_index]  # ℓ_i = (1/|batch i|) Σ_{s ∈ batch i} ℓ_s
    restricted = SubspaceLoss(obj, P)  # the first layer's response to P precomputed where that is cheaper

    def along(f, direction):
        return lambda theta: jvp(f, (theta,), (direction,))[1]

    rows_per_step = max(1, pairs_per_step // D)  # directions b per step, each with all D directions a
    local = obj.local_samples
    bar = progress_bar(total=local.stop - local.start, desc="third and fourth derivatives", unit="sample",
                       enabled=progress)
    for start in range(local.start, local.stop, max(1, samples_per_step)):
        part = slice(start, min(start + samples_per_step, local.stop))
        X, y = obj.X[part], obj.y[part]
        features = restricted.features(X)

        def f(theta: torch.Tensor, features: torch.Tensor = features, y: torch.Tensor = y) -> torch.Tensor:
            return restricted.per_sample_losses(theta, features, y)

        def terms_along(b: torch.Tensor, f=f):
            f_bb = along(along(f, b), b)  # shared by every a (the inner vmap batches only what depends on a)

            def pair_terms(a: torch.Tensor):
                return jvp(along(f_bb, a), (zero,), (a,))  # (D³f[b, b, a], D⁴f[b, b, a, a]) from one jvp

            return vmap(pair_terms)(eye)  # each [D (a), samples]

        t3 = torch.zeros(part.stop - part.start, D, dtype=obj.dtype, device=obj.device)
        t4 = torch.zeros(part.stop - part.start, dtype=obj.dtype, device=obj.device)
        for r in range(0, D, rows_per_step):
            d3, d4 = vmap(terms_along)(eye[r:r + rows_per_step])  # [b, a, samples]
            t3 += d3.detach().sum(0).T
            t4 += d4.detach().sum((0, 1))
        index, w = obj.batch_index[part], weights[part]
        third.index_add_(0, index, w[:, None] * t3)
        fourth.index_add_(0, index, w * t4)
        bar.update(part.stop - part.start)
    bar.close()
    return HigherDerivatives(obj.all_reduce(third), obj.all_reduce(fourth))


def _polarization_directions(D: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The D² directions of the polarisation identities: e_a (a = 1..D), then e_a + e_b and e_a − e_b (a < b)."""
    eye = torch.eye(D, dtype=dtype, device=device)
    a, b = torch.triu_indices(D, D, 1, device=device)
    return torch.cat([eye, eye[a] + eye[b], eye[a] - eye[b]])


def _higher_derivatives_taylor(obj: Objective, P: torch.Tensor, samples_per_step: int, directions_per_step: int,
                               progress: bool) -> HigherDerivatives:
    """:func:`projected_higher_derivatives` by Taylor mode along the polarisation directions."""
    D = P.shape[1]
    directions = _polarization_directions(D, obj.dtype, obj.device)  # [D², D]
    first, second = torch.triu_indices(D, D, 1, device=obj.device)
    pairs = first.numel()
    restricted = SubspaceLoss(obj, P)  # the first layer's response to P precomputed where that is cheaper
    modules = list(restricted.tail.named_children())
    params = {name: value[0] for name, value in restricted.tail_weights(restricted.tail_params[None]).items()}
    weights = 1.0 / obj.batch_counts[obj.batch_index]  # ℓ_i = (1/|batch i|) Σ_{s ∈ batch i} ℓ_s
    third = torch.zeros(obj.num_batches, D, dtype=obj.dtype, device=obj.device)
    fourth = torch.zeros(obj.num_batches, dtype=obj.dtype, device=obj.device)
    local = obj.local_samples
    bar = progress_bar(total=local.stop - local.start, desc="third and fourth derivatives", unit="sample",
                       enabled=progress)
    with torch.no_grad():
        for start in range(local.start, local.stop, samples_per_step):
            part = slice(start, min(start + samples_per_step, local.stop))
            X, y = obj.X[part], obj.y[part]
            features = restricted.features(X)
            cubic, quartic = [], []  # c₃(u), c₄(u) per direction, [U, samples]
            for lo in range(0, directions.shape[0], directions_per_step):
                U = directions[lo:lo + directions_per_step]
                deltas = restricted.tail_weights((restricted.tail_P @ U.T).T)  # the tail's part of each P u
                if restricted.precomputed:
                    series = [features[0], torch.tensordot(U, features[1:], dims=1), None, None, None]
                else:
                    series = [features, None, None, None, None]
                coefficients = taylor.loss_series(taylor.propagate(modules, series, params, deltas), y, obj.loss)
                cubic.append(coefficients[3])
                quartic.append(coefficients[4])
            T, Q = 6 * torch.cat(cubic), 24 * torch.cat(quartic)  # D³f[u, u, u], D⁴f[u, u, u, u]
            plus, minus = slice(D, D + pairs), slice(D + pairs, D + 2 * pairs)
            t3 = (1 - (D - 1) / 3) * T[:D]
            t3.index_add_(0, first, (T[plus] + T[minus]) / 6).index_add_(0, second, (T[plus] - T[minus]) / 6)
            t4 = (1 - (D - 1) / 3) * Q[:D].sum(0) + (Q[plus] + Q[minus]).sum(0) / 6
            index, w = obj.batch_index[part], weights[part]
            third.index_add_(0, index, w[:, None] * t3.T)
            fourth.index_add_(0, index, w * t4)
            bar.update(part.stop - part.start)
    bar.close()
    return HigherDerivatives(obj.all_reduce(third), obj.all_reduce(fourth))


def curvature_spread(curvature: ProjectedCurvature) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the N batches of the per-batch curvature p_dᵀ∇²ℓ_i(w*)p_d.

    p_d is the d-th column of P; the values are the diagonal of the projected per-batch Hessians. The mean is
    the full-data curvature p_dᵀH p_d (H = mean of the batch Hessians). The spread is what makes the landscape
    move with k along p_d: H_{k+1} − H_k = (∇²ℓ_{k+1} − H_k)/(k+1).

    Args:
        curvature: per-batch terms from :func:`projected_hessians`, with N ≥ 2 batches.

    Returns:
        (mean, std), each a float64 CPU tensor [D]; the std uses Bessel's correction (divides by N − 1).

    Raises:
        ValueError: if there are fewer than 2 batches.

    Example:
        >>> c = ProjectedCurvature(torch.zeros(3), torch.zeros(3, 1), torch.tensor([[[1.0]], [[2.0]], [[3.0]]]))
        >>> [t.tolist() for t in curvature_spread(c)]
        [[2.0], [1.0]]
    """
    diag = curvature.hessians.double().cpu().diagonal(dim1=1, dim2=2)  # [N, D]
    if diag.shape[0] < 2:
        raise ValueError(f"need at least 2 batches for a spread, got {diag.shape[0]}")
    return diag.mean(0), diag.std(0, correction=1)
