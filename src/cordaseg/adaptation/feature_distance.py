"""Thing-class ImageNet feature distance (Hoyer et al., "DAFormer", CVPR 2022, section 3.4 of the
paper; ``calc_feat_dist`` and ``downscale_label_ratio`` in its ``mmseg/models/uda/dacs.py`` and
``mmseg/utils/utils.py``).

The student's backbone features on the source image are pulled towards those of a frozen copy of
the network as training started (its ImageNet-pretrained encoder), on the source pixels of thing
classes only, so that self-training does not forget what ImageNet pretraining knew about objects::

    F   = student.encode(x_src)                 (B, C, h, w), with gradient
    F0  = reference.encode(x_src)               (B, C, h, w), frozen, eval mode, no gradient
    d   = ||F - F0||_2 over C                   (B, h, w)
    m   = thing_cells(y_src, (h, w))            (B, h, w) bool
    L_FD = sum(d * m) / max(sum(m), 1)          the mean of d over the thing cells of the batch

and the source loss gains ``adaptation.feature_distance_weight * L_FD`` (DAFormer: 0.005).

Label downsampling (DAFormer's rule): the crop's label is divided into the h x w cells of the
feature map (``adaptive_avg_pool2d`` cells, DAFormer's ``avg_pool2d`` with kernel H / h when the
crop is a multiple of the feature map); a cell takes the class that covers at least
``feature_distance_min_share`` (0.75) of its pixels, ignored pixels counted as a class of their
own, and is ignored when no class reaches that share. A cell is a thing cell when its class is one
of ``feature_distance_classes``. Because the share is above one half, "some listed class covers at
least the share" is the same test, which is what :func:`thing_cells` computes.

The student's features come from the same backbone pass as its source prediction, as in DAFormer,
when the network has ``predict_and_encode(x) -> (output, features)``
(:func:`forward_with_features`); otherwise from a separate ``encode`` call, which costs one more
backbone pass (and, for a batch-norm backbone in train mode, one more update of its running
statistics). Under DDP that pass goes to the network inside the wrapper; its gradients still reach
DDP's hooks, because every backbone parameter also takes part in the wrapped mixed-image pass.

Differences from DAFormer: an empty mask gives 0, where DAFormer's mean over no cells is NaN (its
gradient is zero either way); and cells that do not tile the crop exactly (the ResNet's ceil-mode
stride, 65 cells for 512 pixels) are ``adaptive_avg_pool2d``'s, where DAFormer needs a multiple.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cordaseg.errors import CordasegError
from cordaseg.models.output import at_least_float32
from cordaseg.runtime.distributed import unwrap


def encode(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map (B, C, h, w) through the network's ``encode``."""
    net = unwrap(model)
    if not hasattr(net, "encode"):
        raise CordasegError(
            f"adaptation.feature_distance_weight needs a network with encode(x); {type(net).__name__} has none"
        )
    return net.encode(image)


def forward_with_features(model: nn.Module, image: torch.Tensor) -> tuple[object, torch.Tensor]:
    """(the model's output, its backbone's last feature map) for ``image``: one pass through
    ``predict_and_encode`` where the network has it, else ``model(image)`` and :func:`encode`."""
    net = unwrap(model)
    if hasattr(net, "predict_and_encode"):
        return net.predict_and_encode(image)
    return model(image), encode(model, image)


def frozen_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model``'s network in eval mode: the reference the distance is measured to."""
    reference = copy.deepcopy(unwrap(model))
    reference.requires_grad_(False)
    return reference.eval()


def class_shares(label: torch.Tensor, size: tuple[int, int], classes: tuple[int, ...]) -> torch.Tensor:
    """(B, H, W) labels -> (B, K, h, w): the share of each listed class in each feature cell."""
    ids = torch.as_tensor(classes, device=label.device).view(1, -1, 1, 1)  # (1, K, 1, 1)
    one_hot = (label.unsqueeze(1) == ids).to(torch.float32)  # (B, K, H, W)
    return F.adaptive_avg_pool2d(one_hot, size)


def thing_cells(label: torch.Tensor, size: tuple[int, int], classes: tuple[int, ...],
                min_share: float = 0.75) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w) bool: cells whose class (share >= ``min_share``) is listed."""
    if not classes:
        return torch.zeros((label.shape[0], *size), dtype=torch.bool, device=label.device)
    return (class_shares(label, size, classes) >= min_share).any(dim=1)


def masked_feature_distance(features: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the cells of ``mask`` (B, h, w) of the L2 distance over channels; 0 for an empty mask.

    No boolean indexing, so the number of cells never has to reach the host.
    """
    distance = torch.linalg.vector_norm(at_least_float32(features) - at_least_float32(reference), dim=1)  # (B, h, w)
    weight = mask.to(distance.dtype)
    return (distance * weight).sum() / weight.sum().clamp(min=1)


def feature_distance(student: nn.Module, reference: nn.Module, source_image: torch.Tensor,
                     source_label: torch.Tensor, classes: tuple[int, ...], min_share: float,
                     features: torch.Tensor | None = None) -> torch.Tensor:
    """L_FD of the module docstring (0-d, with gradient to the student's backbone).

    ``source_label`` (B, H, W) holds train IDs with the ignore value; ``features`` the student's
    (B, C, h, w) features from its source pass, when the caller has them (else ``encode`` runs).
    Both networks run under the caller's autocast, the distance in float32.
    """
    if features is None:
        features = encode(student, source_image)  # (B, C, h, w)
    with torch.no_grad():
        reference_features = encode(reference, source_image)
    if reference_features.shape != features.shape:
        raise CordasegError(f"feature distance: the reference's features {tuple(reference_features.shape)} "
                            f"differ from the student's {tuple(features.shape)}")
    mask = thing_cells(source_label, tuple(features.shape[-2:]), classes, min_share)  # (B, h, w)
    with torch.autocast(device_type=source_image.device.type, enabled=False):
        return masked_feature_distance(features, reference_features, mask)
