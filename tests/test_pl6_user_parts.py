"""A user's own registered parts: ``imports:`` in a config (saved with the run, imported
again by every command that loads it), ``DMLKIT_IMPORTS``, ``--set`` fixing a name the
file gets wrong, registry names that one class cannot take from another, and the
README's "Your own parts" example run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner
from user_parts import linear_parts

from dmlkit import registry
from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.registry import DISTANCES, LOSSES, MINERS, MODELS, SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

PARTS = linear_parts("{name}", "PL6MLP")

CONFIG = """
name: own
{imports}data: {{name: digits, max_per_class: 10, max_heldout_per_class: 10}}
model: {{name: {model}, dim: 8}}
loss: {{name: triplet_margin, margin: 0.2}}
miner: {{name: batch_hard}}
sampler: {{name: m_per_class, m: 2, batch_size: 10}}
training: {{epochs: 1, num_threads: 1, progress: false}}
"""


@pytest.fixture
def isolated(monkeypatch):
    """Registries, the modules of this test's parts and DMLKIT_IMPORTS' memory as they
    were before the test (a fresh process, as far as the parts go)."""
    families = (DISTANCES, LOSSES, MINERS, MODELS, SAMPLERS)
    saved = {r: dict(r._entries) for r in families if r.names()}  # (each one filled)
    imported = getattr(registry, "_env_imported", set())
    env = set(imported)
    monkeypatch.delenv("DMLKIT_IMPORTS", raising=False)
    yield
    for r, entries in saved.items():
        r._entries.clear()
        r._entries.update(entries)
    imported.clear()
    imported.update(env)
    forget_modules()


def forget_modules() -> None:
    """Drop this test's part modules, as a new process would not have them."""
    for name in [n for n in sys.modules if n.startswith("pl6_") or n == "myparts"]:
        del sys.modules[name]


def forget(name: str) -> None:
    """A new process: the module not imported, its model not registered."""
    forget_modules()
    MODELS._entries.pop(name, None)


def write_config(path: Path, model: str, imports: str | None = None) -> Path:
    line = f"imports: {imports}\n" if imports is not None else ""
    path.write_text(CONFIG.format(imports=line, model=model))
    return path


def test_imports_register_parts_for_training_and_for_the_saved_run(
        tmp_path, isolated, monkeypatch):
    """The module next to the config is found though the command runs elsewhere; the
    run saves it by its file's path (the run's folder is not the config's), so loading
    the run in a fresh process imports it again from anywhere (or names the file, where
    it is gone)."""
    folder, elsewhere = tmp_path / "configs", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "pl6_parts_a.py").write_text(PARTS.format(name="pl6_mlp_a"))
    config = write_config(folder / "own.yaml", "pl6_mlp_a", "[pl6_parts_a]")
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())["imports"]
    assert saved == [str((folder / "pl6_parts_a.py").resolve())]

    from dmlkit.training import load_run

    forget("pl6_mlp_a")
    assert type(load_run(out).model).__name__ == "PL6MLP"
    forget("pl6_mlp_a")
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    forget("pl6_mlp_a")
    (folder / "pl6_parts_a.py").unlink()
    with pytest.raises(ValueError, match=r"cannot import .*pl6_parts_a\.py.*no file"):
        load_run(out)


def test_a_py_file_is_read_from_the_config_folder_and_saved_absolute(tmp_path, isolated):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "pl6_parts_b.py").write_text(PARTS.format(name="pl6_mlp_b"))
    config = Config.from_yaml(write_config(tmp_path / "own.yaml", "pl6_mlp_b",
                                           "[parts/pl6_parts_b.py]"))
    config.check()
    assert config.imports == [str((tmp_path / "parts" / "pl6_parts_b.py").resolve())]
    assert "pl6_mlp_b" in MODELS
    assert Config.from_yaml(config.to_yaml()).imports == config.imports  # (saved as is)


def test_a_module_that_cannot_be_imported_is_one_clear_line(tmp_path, isolated):
    config = write_config(tmp_path / "own.yaml", "mlp", "[pl6_no_such_module]")
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert re.search(r"error: cannot import module 'pl6_no_such_module' named in imports: "
                     r"of .*own\.yaml.*put its folder on PYTHONPATH", result.output)
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
    (tmp_path / "pl6_broken.py").write_text("raise RuntimeError('boom')\n")
    config = write_config(tmp_path / "own.yaml", "mlp", "[pl6_broken]")
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "importing 'pl6_broken' (named in imports: of" in result.output
    assert "failed: RuntimeError: boom" in result.output


def test_set_fixes_an_unknown_name_of_the_file(tmp_path, isolated):
    config = write_config(tmp_path / "own.yaml", "pl6_not_registered")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress",
                                 "--set", "model.name=mlp"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 1
    assert "unknown model 'pl6_not_registered'" in result.output
    assert "list the module that registers it under imports:" in result.output


def test_dmlkit_imports_names_modules_for_commands_without_a_config(
        tmp_path, isolated, monkeypatch):
    (tmp_path / "pl6_parts_c.py").write_text(PARTS.format(name="pl6_mlp_c"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DMLKIT_IMPORTS", "pl6_parts_c")
    assert MODELS.get("pl6_mlp_c").__name__ == "PL6MLP"
    monkeypatch.setenv("DMLKIT_IMPORTS", "pl6_parts_c, pl6_missing")
    with pytest.raises(ValueError, match="cannot import module 'pl6_missing' named in "
                                         "DMLKIT_IMPORTS"):
        MODELS.get("mlp")


def test_a_run_trained_without_imports_records_where_its_parts_came_from(
        tmp_path, isolated, monkeypatch):
    """(a script that imports the parts, then trains): the run names the module."""
    (tmp_path / "pl6_parts_d.py").write_text(PARTS.format(name="pl6_mlp_d"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import pl6_parts_d  # noqa: F401

    config = write_config(tmp_path / "own.yaml", "pl6_mlp_d")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["imports"] == ["pl6_parts_d"]
    # a resume with the same file (no imports:) is the same run
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--resume",
                                 "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output


# -- registry names -------------------------------------------------------------------
def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)  # noqa: S102
    return module


ENCODER = '''
from torch import nn
from dmlkit.registry import register_model


@register_model("pl6_encoder")
class Encoder(nn.Module):
    def __init__(self, in_features: int = 4, dim: int = 2) -> None:
        super().__init__()
        self.in_features, self.dim = in_features, dim
'''


def test_a_class_of_another_module_cannot_take_a_registered_name(isolated):
    """Compared by module and qualified name: a user's class named like a built-in's, or
    two modules' classes of the same name, are refused; a reloaded module is not."""
    builtin = LOSSES.get("triplet_margin")
    with pytest.raises(ValueError, match=r"loss 'triplet_margin' is already registered to "
                                         r"dmlkit\.losses\.triplet_margin\.TripletMarginLoss.*"
                                         r"replace=True"):
        _module("pl6_clash", "from dmlkit.registry import register_loss\n"
                "@register_loss('triplet_margin')\nclass TripletMarginLoss:\n    pass\n")
    assert LOSSES.get("triplet_margin") is builtin
    first = _module("pl6_enc_a", ENCODER).Encoder
    with pytest.raises(ValueError, match=r"model 'pl6_encoder' is already registered to "
                                         r"pl6_enc_a\.Encoder, so pl6_enc_b\.Encoder"):
        _module("pl6_enc_b", ENCODER)
    again = _module("pl6_enc_a", ENCODER).Encoder  # the same module, reloaded
    assert again is not first and MODELS.get("pl6_encoder") is again
    replaced = _module("pl6_enc_c", ENCODER.replace('"pl6_encoder"',
                                                    '"pl6_encoder", replace=True')).Encoder
    assert MODELS.get("pl6_encoder") is replaced


# -- the README's example, as written ------------------------------------------------------
def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split("## Your own parts\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def test_the_readme_example_trains_and_its_run_loads_in_a_fresh_process(
        tmp_path, isolated, monkeypatch):
    (parts,), (config,), (commands,) = (readme_blocks(k) for k in ("python", "yaml", "bash"))
    (tmp_path / "myparts.py").write_text(parts)
    short = re.sub(r"(?m)^training: \{epochs: \d+\}", "training: {epochs: 1}", config)
    assert short != config and "imports: [myparts]" in short
    (tmp_path / "custom.yaml").write_text(short)
    monkeypatch.chdir(tmp_path)
    lines = [line.split("#")[0].split() for line in commands.strip().splitlines()]
    assert [w[:2] for w in lines] == [["dmlkit", "train"], ["dmlkit", "evaluate"]]
    result = runner.invoke(app, [*lines[0][1:], "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "runs" / "custom" / "config.yaml").read_text())
    assert saved["imports"] == ["myparts"] and saved["model"]["name"] == "tiny_mlp"
    forget("tiny_mlp")
    LOSSES._entries.pop("hinge_triplet", None)
    result = runner.invoke(app, lines[1][1:])
    assert result.exit_code == 0, result.output
    assert MODELS.get("tiny_mlp").__module__ == "myparts"
