"""A saved kit (an Identifier: state, arrays and an index inside) loaded while another
process saves the same directory: one save whole, its index included, never a mix."""

from __future__ import annotations

import textwrap

import numpy as np
from conftest import loads_during_saves

from dmlkit.apps import Identifier

N, DIM = 600, 16

WRITER = textwrap.dedent("""
    import os, sys, time, numpy as np
    from dmlkit.apps import Identifier
    path, stop = sys.argv[1], sys.argv[2]
    g = np.random.default_rng(0).normal(size=({n}, {dim})).astype(np.float32)
    y = np.repeat(np.arange(10), {n} // 10)
    pair = (Identifier(metric="euclidean").fit(g, y),
            Identifier(metric="euclidean").fit(-g, y + 100))
    saves, end = 0, time.time() + 20
    open(stop + ".ready", "w").close()
    while not os.path.exists(stop) and time.time() < end:
        pair[saves % 2].save(path)
        saves += 1
    print(saves)
""").format(n=N, dim=DIM)


def test_a_kit_loaded_during_saves_is_one_save_whole(tmp_path):
    g = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    y = np.repeat(np.arange(10), N // 10)
    path = tmp_path / "kit"
    Identifier(metric="euclidean").fit(g, y).save(path)

    def which(ident):  # noqa: ANN001, ANN202 (the save of the state, and of the index)
        return (int(ident.identities_[0]) >= 100,
                bool(np.allclose(ident.index_.vectors[:1].numpy(), -g[:1])))

    saves, loads, mixed, errors = loads_during_saves(
        tmp_path, WRITER, [path], lambda: Identifier.load(path), which)
    assert saves > 5, "the writer saved too rarely to race"
    assert errors == [] and mixed == 0 and loads > 0, (errors[:3], mixed, loads)
