"""A saved kit (an Identifier: state, arrays and an index inside) loaded while another
process saves the same directory: one save whole, its index included, never a mix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np

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
    path, stop = tmp_path / "kit", tmp_path / "stop"
    Identifier(metric="euclidean").fit(g, y).save(path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    loads, mixed, errors = 0, 0, []
    try:
        ready, start = tmp_path / "stop.ready", time.time()
        while not ready.exists() and time.time() < start + 60 and writer.poll() is None:
            time.sleep(0.05)
        end = time.time() + 3.0
        while time.time() < end:
            try:
                ident = Identifier.load(path)
            except Exception as err:  # noqa: BLE001 (every failure counts)
                errors.append(f"{type(err).__name__}: {err}")
                continue
            loads += 1
            second = int(ident.identities_[0]) >= 100  # the state's save
            first_row = ident.index_.vectors[:1].numpy()
            index_second = bool(np.allclose(first_row, -g[:1]))  # the index's save
            mixed += second != index_second
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert int(out.strip()) > 5, "the writer saved too rarely to race"
    assert errors == [] and mixed == 0 and loads > 0, (errors[:3], mixed, loads)
