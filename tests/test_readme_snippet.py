"""The README's Python snippets run as written, on their own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of README.md."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_second_python_api_snippet_runs_on_its_own(tmp_path, monkeypatch):
    """Executed in a fresh namespace (nothing from the first snippet), in a directory
    holding only configs/digits.yaml, shortened to 2 epochs to keep the test fast."""
    snippet = python_blocks("Python API")[1]
    assert "train_run(" in snippet and "embed(" in snippet
    config = (ROOT / "configs" / "digits.yaml").read_text()
    short = re.sub(r"(?m)^(\s*epochs:)\s*\d+", r"\1 2", config)
    assert short != config
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits.yaml").write_text(short)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    embeddings, labels = namespace["embeddings"], namespace["labels"]
    assert embeddings.shape == (898, 64) and labels.shape == (898,)  # as the comment says
    assert (tmp_path / "runs" / "digits-api" / "model.pt").is_file()
    assert namespace["result"].metrics["map_at_r"] > 0.5


@pytest.mark.parametrize("section", ["Python API"])
def test_snippets_are_valid_python(section):
    for block in python_blocks(section):
        compile(block, "README.md", "exec")
