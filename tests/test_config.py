"""The typed config loader: YAML + key=value overrides, errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from cordaseg.config import ConfigError, apply_overrides, from_dict, load, to_dict


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    size: tuple[int, int] | None = None


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  lr: 1e-4\n  size: [4, 2]\n")
    cfg = load(Outer, path, ["inner.steps=7", "flag=true", "inner.mode=b"])
    assert cfg == Outer(name="run", flag=True, inner=Inner(lr=1e-4, steps=7, mode="b", size=(4, 2)))
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data,message",
    [
        ({"inner": {"lrr": 1}}, "unknown key 'inner.lrr'"),
        ({"inner": {"steps": 1.5}}, "inner.steps: expected an integer"),
        ({"inner": {"steps": True}}, "inner.steps: expected an integer"),
        ({"inner": {"lr": "fast"}}, "inner.lr: expected a number"),
        ({"inner": {"mode": "c"}}, "inner.mode: 'c' is not one of"),
        ({"inner": {"size": [1, 2, 3]}}, "inner.size"),
        ({"flag": "yes please"}, "flag: expected true or false"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        from_dict(Outer, data)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="'name' is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load(Outer, tmp_path / "nope.yaml")
