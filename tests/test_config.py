"""Recipes: validation, dotted overrides, unknown-key suggestions, canonical hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeml.core.config import Recipe, config_hash, load_recipe, save_resolved, validate_recipe
from forgeml.core.errors import ConfigError, NotFoundError

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_recipe_loads_and_resolves_sources() -> None:
    rec = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert rec.train.max_steps > 0
    assert all(Path(s).is_absolute() for s in rec.data.sources)


def test_dotted_overrides_are_typed() -> None:
    rec = load_recipe(None, ["train.max_steps=7", "optim.lr=1e-4", "model.tie_embeddings=false"])
    assert rec.train.max_steps == 7
    assert rec.optim.lr == pytest.approx(1e-4)
    assert rec.model.tie_embeddings is False


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(ConfigError) as exc:
        load_recipe(None, ["train.max_step=10"])
    assert "train.max_step" in str(exc.value)
    assert "did you mean 'train.max_steps'" in str(exc.value)


def test_unknown_top_level_section_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        validate_recipe({"optimm": {"lr": 1.0}})


def test_bad_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_recipe(None, ["train.max_steps=-3"])
    with pytest.raises(ConfigError, match="n_heads"):
        load_recipe(None, ["model.dim=100", "model.n_heads=3"])


def test_override_syntax_error() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(None, ["train.max_steps"])


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_recipe(tmp_path / "nope.yaml")


def test_hash_is_canonical_and_sensitive(tmp_path: Path) -> None:
    a = Recipe()
    b = validate_recipe({"train": {"seed": a.train.seed}, "optim": {"lr": a.optim.lr}})
    assert config_hash(a) == config_hash(b)
    c = load_recipe(None, ["train.seed=1"])
    assert config_hash(a) != config_hash(c)
    digest = save_resolved(a, tmp_path / "resolved.yaml")
    text = (tmp_path / "resolved.yaml").read_text()
    assert digest in text.splitlines()[0]
    import yaml

    assert config_hash(validate_recipe(yaml.safe_load(text))) == digest


def test_recipes_are_frozen() -> None:
    rec = Recipe()
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        rec.train.max_steps = 3  # type: ignore[misc]
