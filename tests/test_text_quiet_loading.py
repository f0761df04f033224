"""Loading the sentence encoder from its local folder prints no progress bar, and leaves
``transformers``' progress-bar setting as the program had it."""

from __future__ import annotations

import pytest
from test_text import needs_text


@needs_text
@pytest.mark.parametrize("enabled", [True, False])
def test_loading_the_encoder_prints_no_progress_bar(capfd, enabled):
    import transformers.utils.logging as tf_logging

    from dmlkit.models.sentence_encoder import SentenceEncoder

    was = tf_logging.is_progress_bar_enabled()
    (tf_logging.enable_progress_bar if enabled else tf_logging.disable_progress_bar)()
    try:
        SentenceEncoder()
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "it/s" not in err, err
        assert tf_logging.is_progress_bar_enabled() == enabled
    finally:
        (tf_logging.enable_progress_bar if was else tf_logging.disable_progress_bar)()
