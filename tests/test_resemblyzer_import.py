"""The resemblyzer baseline's import: a missing resemblyzer is named as such, and a
missing webrtcvad (which only resemblyzer's unused preprocessing imports) does not stop
the encoder from loading."""

import importlib.util
import sys

import pytest

from dmlkit.models.pretrained.resemblyzer_encoder import _voice_encoder_class


def test_missing_resemblyzer_is_named_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "resemblyzer" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs resemblyzer: pip install 'dmlkit\[audio\]'"):
        _voice_encoder_class()


def test_missing_webrtcvad_gets_a_stand_in(tmp_path, monkeypatch):
    if importlib.util.find_spec("webrtcvad") is not None:
        pytest.skip("webrtcvad is installed here")
    package = tmp_path / "resemblyzer"
    package.mkdir()
    (package / "__init__.py").write_text("import webrtcvad\n\n\nclass VoiceEncoder:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("resemblyzer", "webrtcvad"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        encoder = _voice_encoder_class()
        assert encoder.__name__ == "VoiceEncoder" and encoder.__module__ == "resemblyzer"
    finally:
        for name in ("resemblyzer", "webrtcvad"):
            sys.modules.pop(name, None)
