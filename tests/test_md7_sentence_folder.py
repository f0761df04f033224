"""A sentence encoder folder that is there but holds no Hugging Face model is one line
naming the folder and what it lacks, not transformers' advice to install tokenizers."""

from __future__ import annotations

import re
import shutil

import pytest

pytest.importorskip("transformers")

from dmlkit.models.sentence_encoder import SentenceEncoder, default_model_dir  # noqa: E402


@pytest.mark.parametrize("files, lacks", [
    ({"config.json": "{}"}, r"lacks a tokenizer \(tokenizer.json or vocab.txt\) and "
                            r"weights \(model.safetensors or pytorch_model.bin\)"),
    ({"a.wav": "RIFF"}, r"lacks config.json, a tokenizer \(.*\) and weights \("),
    ({}, "lacks config.json, a tokenizer"),
])  # fmt: skip
def test_a_folder_without_a_model_names_what_it_lacks(tmp_path, files, lacks):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    where = re.escape(str(tmp_path))
    with pytest.raises(ValueError, match=f"sentence encoder folder {where} is not a "
                                         f"Hugging Face model folder: it {lacks}") as info:
        SentenceEncoder(path=str(tmp_path))
    assert "\n" not in str(info.value) and "sentencepiece" not in str(info.value)


def test_a_folder_transformers_cannot_read_names_it(tmp_path):
    try:
        model = default_model_dir()
    except ImportError:
        pytest.skip("the default sentence encoder is not installed")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"):
        shutil.copy(model / name, tmp_path / name)
    (tmp_path / "config.json").write_text("{}")  # no model_type
    where = re.escape(str(tmp_path))
    with pytest.raises(ValueError, match=f"sentence encoder folder {where} cannot be loaded "
                                         "as a Hugging Face model .*model_type") as info:
        SentenceEncoder(path=str(tmp_path))
    assert "\n" not in str(info.value)
