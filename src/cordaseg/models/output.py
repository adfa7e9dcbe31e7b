"""What every network of the package returns, and the one upsampling of its outputs (docs/method.md,
"Network"; "Evaluation").

:class:`CordaOutput` holds the six predictions of CorDA's multi-task network at the network's
output stride; a variant without some of them leaves those fields None. The training step and
test-time inference bring the predictions to the size they are compared at with :func:`upsample`
(bilinear with ``align_corners=True``, as the reference code does it, in float32 or wider), the
step through :meth:`CordaOutput.upsampled`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when the network ran in bf16 / fp16 autocast; float32 and float64 stay."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) -> (B, K, *size): bilinear with ``align_corners=True`` (the reference's
    interpolation), in float32 or wider; a tensor already at ``size`` is returned as it is."""
    x = at_least_float32(x)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


@dataclass
class CordaOutput:
    """Predictions at the model's output stride (:attr:`cordaseg.models.corda.CordaNet.output_stride`:
    8 for the DeepLab ResNet model, 4 with the DAFormer decoder): logits (B, C, h, w) and depth maps
    (B, 1, h, w).

    ``depth`` is the "target" decoder D, ``depth_source`` the "source" decoder D_src; a field is
    None where the variant has no such output.
    """

    semantic: torch.Tensor
    semantic_initial: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_initial: torch.Tensor | None = None
    depth_source: torch.Tensor | None = None
    depth_source_initial: torch.Tensor | None = None

    def items(self) -> Iterator[tuple[str, torch.Tensor | None]]:
        """(name, tensor or None) of every field, in :data:`OUTPUT_NAMES` order."""
        for f in dataclasses.fields(self):
            yield f.name, getattr(self, f.name)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CordaOutput:
        """``fn`` applied to every present output."""
        return CordaOutput(**{k: (None if v is None else fn(v)) for k, v in self.items()})

    def upsampled(self, size: tuple[int, int]) -> CordaOutput:
        """Every output brought to ``size`` (H, W) by :func:`upsample`: logits (B, C, H, W) and
        depth maps (B, H, W), their channel dropped, the form the losses compare with labels and
        depth targets."""

        def up(name: str, value: torch.Tensor | None) -> torch.Tensor | None:
            if value is None:
                return None
            value = upsample(value, size)
            return value[:, 0] if name in DEPTH_NAMES else value  # depth: (B, 1, H, W) -> (B, H, W)

        return CordaOutput(**{name: up(name, value) for name, value in self.items()})

    def split(self, count: int) -> tuple[CordaOutput, CordaOutput]:
        """(the first ``count`` images, the rest) of the output of a merged batch."""
        return self.map(lambda v: v[:count]), self.map(lambda v: v[count:])


OUTPUT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CordaOutput))
"""The six predictions, in field order: semantic and its initial head, then the depth decoders."""
SEMANTIC = "semantic"
"""The final semantic prediction, what evaluation and prediction score."""
DEPTH_NAMES: tuple[str, ...] = tuple(name for name in OUTPUT_NAMES if name.startswith("depth"))
"""The depth decoders: D, D_init, D_src and D_src_init."""
