"""The reference's parameter multiplicity (docs/reference-behaviour.md) and the recipe-fidelity switch."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch

from cordaseg.config import ConfigError, to_dict
from cordaseg.engine.config import FIDELITY_SWITCHES, load_train_config
from cordaseg.engine.iteration import build_optimizer
from cordaseg.engine.optim import MultiplicitySGD
from cordaseg.models.corda import (
    REFERENCE_BACKBONE_BLOCKS,
    ModelConfig,
    build_model,
    param_groups,
    reference_multiplicity,
)

LR, HEAD_MULT, MOMENTUM, WD = 0.05, 10.0, 0.9, 5e-4


def reference_parameter_list(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, float]]:
    """The reference's optimiser list, built the way its code builds it: walk each top-level
    backbone block's modules (the block included) and list every trainable tensor of each
    module's (recursive) parameters; then each head tensor once at 10x."""
    listed = []
    for name in REFERENCE_BACKBONE_BLOCKS:
        for module in getattr(model.backbone, name).modules():
            listed += [(p, LR) for p in module.parameters() if p.requires_grad]
    backbone = {id(p) for p in model.backbone.parameters()}
    listed += [(p, LR * HEAD_MULT) for p in model.parameters() if p.requires_grad and id(p) not in backbone]
    return listed


def reference_sgd_step(listed, state: dict[int, torch.Tensor]) -> None:
    """PyTorch 1.7 SGD (momentum, no dampening, no Nesterov, coupled weight decay), entry by entry."""
    with torch.no_grad():
        for p, lr in listed:
            d = p.grad + WD * p
            state[id(p)] = d.clone() if id(p) not in state else MOMENTUM * state[id(p)] + d
            p -= lr * state[id(p)]


def tiny(depth: int = 50) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone_depth=depth, backbone_width=4, head_width=8, num_classes=3)).double()


def fake_gradients(model: torch.nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) if p.requires_grad else None


@pytest.mark.parametrize("depth", [18, 50])  # basic blocks and bottlenecks
@pytest.mark.parametrize("kernel", [{"foreach": True}, {"foreach": False}])
def test_multiplicity_sgd_equals_the_reference_entry_by_entry_loop(depth, kernel):
    ours, theirs = tiny(depth), tiny(depth)
    theirs.load_state_dict(ours.state_dict())
    optimizer = MultiplicitySGD(param_groups(ours, LR, HEAD_MULT, "reference"), lr=LR, momentum=MOMENTUM,
                                weight_decay=WD, **kernel)
    listed, state = reference_parameter_list(theirs), {}
    for step in range(3):
        fake_gradients(ours, step)
        fake_gradients(theirs, step)
        optimizer.step()
        reference_sgd_step(listed, state)
    moved = 0
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
        moved += a.requires_grad
    assert moved > 0
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        if p_ours.requires_grad:
            torch.testing.assert_close(optimizer.state[p_ours]["momentum_buffer"], state[id(p_theirs)],
                                       rtol=0, atol=1e-12)


def test_resnet101_multiplicity_table_follows_the_rule():
    model = build_model(ModelConfig())
    counts = reference_multiplicity(model.backbone)
    assert Counter(counts.values()) == {1: 1, 3: 99, 4: 4}  # stem conv; 33 blocks x 3 convs; 4 projections
    assert counts[id(model.backbone.conv1.weight)] == 1
    assert counts[id(model.backbone.layer3[7].conv2.weight)] == 3
    assert counts[id(model.backbone.layer2[0].downsample[0].weight)] == 4
    frozen = [p for p in model.backbone.parameters() if not p.requires_grad]
    assert frozen and all(id(p) not in counts for p in frozen)  # frozen BN tensors are not listed
    groups = param_groups(model, 1.0, 10.0, "reference")
    assert [(g["name"], g["multiplicity"], len(g["params"])) for g in groups[:-1]] == [
        ("backbone_x1", 1, 1), ("backbone_x3", 3, 99), ("backbone_x4", 4, 4)]
    assert groups[-1]["name"] == "heads" and groups[-1]["multiplicity"] == 1 and groups[-1]["lr"] == 10.0
    once = param_groups(model, 1.0, 10.0, "once")
    assert [g["multiplicity"] for g in once] == [1, 1]
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for g in once for p in g["params"]}


def test_first_step_of_a_three_times_listed_tensor_is_5_61_gradient_steps():
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = MultiplicitySGD([{"params": [p], "multiplicity": 3}], lr=0.1, momentum=0.9, weight_decay=0.0)
    p.grad = torch.ones(2, dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.full((2,), -0.1 * 5.61, dtype=torch.float64))


def test_multiplicity_once_is_plain_sgd():
    ours, plain = tiny(18), tiny(18)
    a = MultiplicitySGD(param_groups(ours, LR, HEAD_MULT, "once"), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    b = torch.optim.SGD(param_groups(plain, LR, HEAD_MULT, "once"), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for step in range(2):
        fake_gradients(ours, step)
        fake_gradients(plain, step)
        a.step()
        b.step()
    for x, y in zip(ours.parameters(), plain.parameters()):
        assert torch.equal(x, y)


def test_momentum_state_resumes_exactly():
    cfg = load_train_config(None, [])
    assert cfg.optim.param_multiplicity == "reference"
    straight, resumed = tiny(18), tiny(18)
    resumed.load_state_dict(straight.state_dict())
    first = build_optimizer(straight, cfg, LR, torch.device("cpu"))
    for step in range(3):
        fake_gradients(straight, step)
        first.step()
    # resume after one step from a state dict
    partial = tiny(18)
    early = build_optimizer(partial, cfg, LR, torch.device("cpu"))
    fake_gradients(partial, 0)
    early.step()
    saved_model, saved_optim = copy.deepcopy(partial.state_dict()), copy.deepcopy(early.state_dict())
    resumed.load_state_dict(saved_model)
    later = build_optimizer(resumed, cfg, LR, torch.device("cpu"))
    later.load_state_dict(saved_optim)
    for step in (1, 2):
        fake_gradients(resumed, step)
        later.step()
    for x, y in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(x, y)


def test_recipe_fidelity_sets_every_switch_and_explicit_keys_win():
    reference = to_dict(load_train_config(None, []))
    paper = to_dict(load_train_config(None, ["recipe.fidelity=paper"]))
    for key, values in FIDELITY_SWITCHES.items():
        section, name = key.split(".")
        assert reference[section][name] == values["reference"], key
        assert paper[section][name] == values["paper"], key
    mixed = load_train_config(None, ["recipe.fidelity=paper", "optim.param_multiplicity=reference"])
    assert mixed.optim.param_multiplicity == "reference"
    assert mixed.adaptation.depth_weight == "per_image"
    with pytest.raises(ConfigError, match="recipe.fidelity"):
        load_train_config(None, ["recipe.fidelity=exact"])


def test_shipped_corda_configs_default_to_the_reference_recipe():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("gta2cityscapes", "synthia2cityscapes", "synthia2cityscapes_mono", "dacs_gta2cityscapes",
                 "source_only_gta2cityscapes"):
        cfg = load_train_config(root / f"{name}.yaml", [])
        assert cfg.recipe.fidelity == "reference", name
        assert cfg.optim.param_multiplicity == "reference", name
        assert cfg.adaptation.depth_weight == "reference_cross_batch", name
        assert cfg.adaptation.augment_decision == "per_batch", name
        assert cfg.model.aspp_branches == 2, name
        assert cfg.model.head_bias_init == "uniform", name


def test_head_bias_keeps_default_initialisation_unless_zeroed():
    model = build_model(ModelConfig(backbone_depth=18, backbone_width=4, head_width=8))
    bias = model.semantic_head.branches[0].bias  # ASPP on the 8-channel G_S: fan_in 8 * 3 * 3
    fan_in = 8 * 9
    assert bias.abs().max() > 0 and bias.abs().max() <= fan_in ** -0.5
    zero = build_model(ModelConfig(backbone_depth=18, backbone_width=4, head_width=8, head_bias_init="zero"))
    assert all(not m.bias.any() for m in zero.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
