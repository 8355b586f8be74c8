"""The paper's network: the PyTorch MNIST example CNN that PySyft 0.2's tutorials used.

conv 1->20 (5x5) -> ReLU -> max-pool 2 -> conv 20->50 (5x5) -> ReLU -> max-pool 2 -> fc 800->500 -> ReLU
-> fc 500->10 -> log-softmax, trained with the negative log-likelihood loss.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from asyncfl.core import datasets


class Net(nn.Module):
    """The network for grey images of ``image_shape`` and ``n_classes`` labels (a dataset's entry in
    datasets.py); 28x28 and 10 give the paper's fc 800->500->10."""

    def __init__(self, image_shape: tuple[int, int] = (28, 28), n_classes: int = 10) -> None:
        super().__init__()
        h, w = ((((d - 4) // 2) - 4) // 2 for d in image_shape)  # two 5x5 convolutions, each max-pooled by 2
        if h < 1 or w < 1:
            raise ValueError(f"images of {image_shape} are too small for two 5x5 convolutions")
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(h * w * 50, 500)
        self.fc2 = nn.Linear(500, n_classes)

    @classmethod
    def for_dataset(cls, name: str) -> "Net":
        """The network for a registered dataset; a name not registered (a test's own toy data) gets 28x28
        and 10 classes."""
        spec = datasets.REGISTRY.get(name)
        return cls(spec.image_shape, spec.n_classes) if spec else cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(output, target)


def initial_weights(seed: int, dataset: str = datasets.DEFAULT) -> dict[str, torch.Tensor]:
    """The global model's starting point for ``dataset``: PyTorch's default initialisation under ``seed``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return {k: v.detach().clone() for k, v in Net.for_dataset(dataset).state_dict().items()}
    finally:
        torch.random.set_rng_state(generator_state)


def weight_spec(dataset: str = datasets.DEFAULT) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The model's tensor names with their shapes and dtypes: what any weights on the wire must match."""
    return {k: (tuple(v.shape), v.dtype) for k, v in Net.for_dataset(dataset).state_dict().items()}


class FlatWeights(dict):
    """A state dict whose tensors are consecutive views of one 1-D tensor, ``flat``, in the dict's order.
    A copy, a sum or an update of the whole model is then one operation instead of one per tensor (each
    costs a few microseconds of dispatch, several times over per round). Built only by ``views_of``, and
    like every state dict here never changed key by key."""

    flat: torch.Tensor
    shapes: dict[str, tuple[int, ...]]  # name -> shape, in order: the layout, shared by weights built alike

    @classmethod
    def views_of(cls, flat: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> FlatWeights:
        """The tensors of ``shapes`` (name -> shape, in order) as views of ``flat``, which they cover exactly."""
        out, offset = cls(), 0
        for name, shape in shapes.items():
            n = torch.Size(shape).numel()
            out[name] = flat[offset : offset + n].view(shape)
            offset += n
        if offset != flat.numel() or flat.dim() != 1:
            raise ValueError(f"a flat tensor of {flat.numel()} elements for tensors of {offset}")
        out.flat, out.shapes = flat, shapes
        return out

    @classmethod
    def on(cls, flat: torch.Tensor, spec: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> FlatWeights:
        """``spec``'s tensors as views of ``flat`` (of ``numel_of(spec)`` elements of ``one_dtype(spec)``)."""
        return cls.views_of(flat, {name: shape for name, (shape, _) in spec.items()})

    @classmethod
    def zeros(cls, spec: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> FlatWeights:
        """Zeros of ``spec``'s tensors (one dtype) in one new buffer, its pages touched."""
        return cls.on(torch.zeros(numel_of(spec), dtype=one_dtype(spec)), spec)


def numel_of(spec: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Elements of all of ``spec``'s tensors together."""
    return sum(torch.Size(shape).numel() for shape, _ in spec.values())


def one_dtype(spec: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> torch.dtype:
    """The dtype all of ``spec``'s tensors share (what a single buffer needs); ValueError if they differ."""
    dtypes = {dtype for _, dtype in spec.values()}
    if len(dtypes) != 1:
        raise ValueError(f"the tensors must share one dtype, not {sorted(map(str, dtypes))}")
    return dtypes.pop()


def flat_of(weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The one tensor behind ``weights`` if it is a FlatWeights, else None."""
    return weights.flat if isinstance(weights, FlatWeights) else None


def shapes_of(weights: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape, in order (a FlatWeights' layout as it was built, without a look at each tensor)."""
    if isinstance(weights, FlatWeights):
        return weights.shapes
    return {k: tuple(v.shape) for k, v in weights.items()}


def flatten(weights: dict[str, torch.Tensor]) -> FlatWeights:
    """A copy of ``weights`` in one new buffer (all tensors must share a dtype)."""
    flat = torch.cat([v.detach().reshape(-1) for v in weights.values()]) if weights else torch.zeros(0)
    return FlatWeights.views_of(flat, shapes_of(weights))


def flatten_parameters(net: nn.Module) -> FlatWeights:
    """Move ``net``'s parameters into one buffer, returned as its state dict of views: training updates
    the buffer, and loading or reading the whole model is one copy. (The net must have no buffers.)"""
    weights = flatten(net.state_dict())
    for name, p in net.named_parameters():
        p.data = weights[name]
    return weights


def copy_into(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy ``src``'s tensors into ``dst``'s (same names and shapes); returns ``dst``. One copy when both
    are FlatWeights of the same layout."""
    dst_flat, src_flat = flat_of(dst), flat_of(src)
    if dst_flat is not None and src_flat is not None and shapes_of(dst) == shapes_of(src):
        dst_flat.copy_(src_flat)
        return dst
    for k, t in dst.items():
        if t.shape != src[k].shape:  # copy_ would broadcast a smaller tensor
            raise ValueError(f"tensor {k!r} must be of shape {tuple(t.shape)}")
        t.copy_(src[k])
    return dst


def check_weights(weights: dict[str, torch.Tensor] | None, spec: dict) -> None:
    """Raise ValueError unless ``weights`` hold exactly the tensors of ``spec``, all finite. Both sides run
    it on what they receive: a wrong tensor must never reach ``load_state_dict`` or the global model."""
    if weights is None or set(weights) != set(spec):
        raise ValueError("weights must hold exactly the model's tensors")
    for k, (shape, dtype) in spec.items():
        if tuple(weights[k].shape) != shape or weights[k].dtype != dtype:
            raise ValueError(f"tensor {k!r} must be {dtype} of shape {shape}")
    bad = non_finite(weights)
    if bad:
        raise ValueError(f"tensor {bad!r} has non-finite values")


def non_finite(weights: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding an inf or a NaN, or None when every value is finite."""
    # A finite sum proves every element finite (one inf or NaN makes any sum inf or NaN), at a tenth of
    # isfinite's cost; only a non-finite sum (or one that overflowed) needs the exact check, per tensor.
    flat = flat_of(weights)
    if flat is not None and torch.isfinite(flat.sum()):
        return None
    return next((k for k, v in weights.items() if not torch.isfinite(v.sum()) and not torch.isfinite(v).all()), None)


def architecture_signature(dataset: str = datasets.DEFAULT) -> str:
    """A short hash of the parameter names, shapes and dtypes: equal iff two sides can swap weights."""
    spec = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in Net.for_dataset(dataset).state_dict().items())
    return hashlib.sha256(spec.encode()).hexdigest()[:16]
