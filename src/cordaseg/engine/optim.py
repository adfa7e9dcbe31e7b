"""SGD that can apply a parameter group's update several times per step: the reference's
parameter multiplicity (docs/reference-behaviour.md, "Parameter multiplicity in the optimiser").

The reference lists most backbone tensors several times in its optimiser's parameter list, and
its SGD (PyTorch 1.7: momentum, no dampening, no Nesterov, coupled weight decay) updates every
entry in turn, with one momentum buffer per tensor. A tensor listed k times is therefore updated
k times per step, each time with the same gradient ``g`` and its current value ``p``::

    d = g + weight_decay * p
    buf = d                          if the tensor has no buffer yet
    buf = momentum * buf + d         otherwise
    p = p - lr * buf

Only the tensor's own state enters its updates, so the order in which the reference interleaves
different tensors does not matter: applying a group's update k times in a row gives the same
values. :class:`MultiplicitySGD` keeps the groups of :func:`cordaseg.models.corda.param_groups`
(each with a ``multiplicity``) and runs PyTorch's own SGD kernel (``foreach`` or ``fused``) k
times per group, so there is no per-tensor Python loop and the state dict is a plain SGD state
dict (one ``momentum_buffer`` per tensor), saved and resumed as usual.
"""

from __future__ import annotations

import torch
from torch.optim.sgd import sgd


class MultiplicitySGD(torch.optim.SGD):
    """:class:`torch.optim.SGD` whose step applies each group's update ``group["multiplicity"]`` times.

    A group without the key, or with multiplicity 1, is updated exactly as ``torch.optim.SGD``
    updates it. Sparse gradients and closures are not supported (the training step has neither).
    """

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group.setdefault("multiplicity", 1)
            if not isinstance(group["multiplicity"], int) or group["multiplicity"] < 0:
                raise ValueError(f"param group {group.get('name', '?')}: multiplicity must be an int >= 0, "
                                 f"got {group['multiplicity']!r}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the class docstring says what differs
        if closure is not None:
            raise ValueError("MultiplicitySGD.step takes no closure")
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor | None] = []
            if self._init_group(group, params, grads, buffers):
                raise ValueError("MultiplicitySGD does not support sparse gradients")
            if not params:
                continue
            for _ in range(group["multiplicity"]):
                # The kernel creates missing buffers in the list on its first call (buf = d) and
                # updates them in place afterwards, so repeated calls share one buffer per tensor.
                sgd(params, grads, buffers,
                    weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                    dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                    has_sparse_grad=False, foreach=group["foreach"], fused=group["fused"])
            if group["momentum"] != 0:
                for p, buf in zip(params, buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buf
        return None
