"""The one plugin loader (forgeml.core.plugins): import paths, file paths next to their
neighbours, and one clear error for each way a plugin spec can be wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forgeml.core.errors import ConfigError
from forgeml.core.plugins import load_plugin, plugin_module
from forgeml.eval.scoring import token_f1

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a plugin file that imports its neighbour; sys.path restored after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "plugin_probe_helper.py").write_text("BONUS = 2\n")
    (folder / "plugin_probe.py").write_text(
        "from plugin_probe_helper import BONUS\n\n\ndef reward(p, c, m):\n    return len(c) + BONUS\n"
    )
    return folder


def test_an_import_path_names_a_module_attribute():
    assert load_plugin("forgeml.eval.scoring:token_f1") is token_f1


def test_a_file_path_is_read_from_the_working_directory_or_base_dir(plugin_dir, monkeypatch):
    fn = load_plugin("plugins/plugin_probe.py:reward", base_dir=plugin_dir.parent)
    assert fn("p", "abc", {}) == 5  # the file imported its neighbour
    monkeypatch.chdir(plugin_dir.parent)
    assert load_plugin("plugins/plugin_probe.py:reward") is fn  # one module, loaded once
    assert load_plugin(f"{plugin_dir}/plugin_probe.py:reward") is fn  # absolute


def test_the_demo_reward_by_file_path_is_the_module_the_tests_import():
    import acme_rl

    spec = "examples/acme/acme_rl.py:translation_reward"
    assert load_plugin(spec, base_dir=REPO) is acme_rl.translation_reward
    assert plugin_module(spec, base_dir=REPO) is acme_rl


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "not an import path"),
        ("forgeml.eval.scoring:", "not an import path"),
        ("forgeml.nowhere:fn", "cannot import forgeml.nowhere"),
        ("forgeml.eval.scoring:nope", "has no attribute 'nope'"),
        ("missing/plugin.py:fn", "file not found"),
    ],
)
def test_a_bad_spec_is_one_clear_error(spec, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_plugin(spec, base_dir=tmp_path)


def test_a_file_whose_module_name_is_taken_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "json.py").write_text("def f():\n    return 1\n")
    with pytest.raises(ConfigError, match="already taken"):
        load_plugin("json.py:f", base_dir=tmp_path)
