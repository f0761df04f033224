"""A class of one's own registered under a built-in's name, in a process where its module
is imported before dmlkit's own parts: refused without replace=True, and with it the
user's class wins; dmlkit's own imports keep working either way."""

import subprocess
import sys
import textwrap
from pathlib import Path

MODULE = """
from torch import nn
from dmlkit.registry import register_model

@register_model("mlp"{replace})
class MyMLP(nn.Module):
    pass
"""


def _run(tmp_path: Path, code: str, replace: bool, env_imports: bool = False):
    (tmp_path / "clash.py").write_text(MODULE.format(replace=", replace=True" if replace else ""))
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    if env_imports:
        env["DMLKIT_IMPORTS"] = "clash"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)


def test_without_replace_the_users_class_is_refused_not_the_builtin(tmp_path):
    res = _run(tmp_path, "import clash", replace=False)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "so clash.MyMLP cannot take the name" in last, res.stderr
    assert "dmlkit.models.mlp" in last


def test_with_replace_the_users_class_wins_and_dmlkit_still_imports(tmp_path):
    code = """
    import clash
    from dmlkit.registry import MODELS
    from dmlkit.training import Trainer
    print(MODELS.get("mlp").__module__)
    """
    res = _run(tmp_path, code, replace=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "clash"


def test_a_replacing_module_named_in_the_environment_wins(tmp_path):
    code = """
    from dmlkit.registry import LOSSES, MODELS
    LOSSES.get("triplet_margin")
    print(MODELS.get("mlp").__module__)
    """
    res = _run(tmp_path, code, replace=True, env_imports=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "clash"
