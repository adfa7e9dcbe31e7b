"""The recipes ship inside the package (``cordaseg/recipes`` is the repository's ``configs/``), a
bare recipe name works wherever a config file does, ``cordaseg configs`` lists, shows, copies and
checks them, and docs/config.md is the reference ``cordaseg configs docs`` generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordaseg.cli import main
from cordaseg.cli.configs import recipe_kind, reference
from cordaseg.config import RECIPES_DIR, ConfigError, recipe_names, resolve_config
from cordaseg.engine.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_recipes_are_the_repository_configs():
    configs = {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in RECIPES_DIR.glob("*.yaml")}
    assert shipped == configs and len(shipped) >= 10


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_is_a_valid_config_of_its_kind(name):
    kind, cfg = recipe_kind(resolve_config(name))
    assert kind in ("train", "depth", "demo")
    if name.startswith("depth_"):
        assert kind == "depth"


def test_a_bare_name_is_the_shipped_recipe_and_paths_still_work(tmp_path):
    assert resolve_config("gta2cityscapes") == RECIPES_DIR / "gta2cityscapes.yaml"
    assert resolve_config("gta2cityscapes.yaml") == RECIPES_DIR / "gta2cityscapes.yaml"
    assert load_train_config("gta2cityscapes") == load_train_config(ROOT / "configs" / "gta2cityscapes.yaml")
    own = tmp_path / "gta2cityscapes.yaml"
    own.write_text("optim: {iterations: 7}\n")
    assert resolve_config(own) == own and load_train_config(own).optim.iterations == 7
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe: .*gta2cityscapes"):
        resolve_config("no_such_recipe")


def test_configs_command_lists_shows_copies_and_checks(tmp_path, capsys):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == recipe_names()
    assert any(line.split()[:2] == ["gta2cityscapes", "train"] for line in listed)

    assert main(["configs", "show", "gta2cityscapes"]) == 0
    assert capsys.readouterr().out == (RECIPES_DIR / "gta2cityscapes.yaml").read_text()

    target = tmp_path / "mine.yaml"
    assert main(["configs", "copy", "synthia2cityscapes", str(target)]) == 0
    assert target.read_bytes() == (RECIPES_DIR / "synthia2cityscapes.yaml").read_bytes()
    target.write_text("# edited\n")
    capsys.readouterr()
    assert main(["configs", "copy", "synthia2cityscapes", str(target)]) == 2  # never replaces a file
    assert "already exists" in capsys.readouterr().err and target.read_text() == "# edited\n"
    assert main(["configs", "copy", "demo", str(tmp_path)]) == 0 and (tmp_path / "demo.yaml").is_file()

    assert main(["configs", "check", "depth_video"]) == 0
    assert main(["train", "--config", "gta2cityscapes", "--validate-only"]) == 0  # no data needed
    assert "valid training config" in capsys.readouterr().out
    assert main(["train", "--config", "gta2cityscapes", "--validate-only", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_config_reference_is_up_to_date():
    written = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert written == reference(), "docs/config.md is out of date: python -m cordaseg.cli configs docs > docs/config.md"
    for key in ("`adaptation.confidence_threshold`", "`optim.lr`", "`source.mean_bgr`", "`world.num_source`",
                "`optim.iterations`"):
        assert key in written
