"""Config YAML as a mapping: parsed safely, with a key given twice refused.

PyYAML's ``safe_load`` keeps the last of two equal keys of a mapping (``model:`` twice,
or ``epochs:`` twice inside ``training:``), so half of what a file says is dropped
without a word. :class:`UniqueKeyLoader` refuses such a file, naming the key and the
lines of both; :func:`load_config_text` turns any YAML error into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping giving one key twice (merge keys,
    ``<<: *base``, still bring in defaults the mapping's own keys override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if first is not None:
                raise DuplicateKeyError(
                    problem=f"key {key!r} is given twice (first at line "
                            f"{first.start_mark.line + 1}); keep one",
                    problem_mark=key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_config_text(text: str, where: str) -> Any:
    """The YAML ``text`` of a config (read from ``where``, named in errors) as Python
    values; a ``ValueError`` of one line naming the line and column of a YAML error,
    a key given twice among them."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{where} is not valid YAML{line}: {problem}; fix the file "
                         "(an example: configs/digits.yaml)") from None


def is_file_name(text: str) -> bool:
    """Whether ``text`` names an existing file (False for what cannot be a path)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # (a name too long, a NUL byte)
        return False


def read_config_file(path: Path) -> str:
    """The text of the config file ``path``, UTF-8 (a BOM allowed); a ``ValueError``
    naming the file, the line and the byte offset where it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(
            f"{path} is not UTF-8 text{utf16}: byte 0x{data[err.start]:02x} at line {line} "
            f"(byte offset {err.start}) cannot be decoded; save the file as UTF-8") from None


__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "is_file_name", "load_config_text",
           "read_config_file"]
