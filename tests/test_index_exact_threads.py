"""ExactIndex searched from many threads while a writer adds (the service's locking)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dmlkit.index import ExactIndex


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_concurrent_searches_with_a_writer_keep_the_index_exact(metric):
    pytest.importorskip("fastapi", reason="the service's lock lives in dmlkit.service")
    from dmlkit.service.store import RWLock

    rng = np.random.default_rng(0)
    index = ExactIndex(32, metric=metric)
    index.add(rng.normal(size=(300, 32)).astype(np.float32))
    lock = RWLock()
    added: list[tuple[int, np.ndarray]] = []  # (id, vector), appended under the write lock
    errors: list[BaseException] = []
    wrong: list[tuple[int, int]] = []

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(150):
                with lock.read():
                    if added:  # the latest item is its own nearest neighbour, at once
                        i, vec = added[-1]
                        _, ids = index.search(vec[None, :], 1)
                        if int(ids[0, 0]) != i:
                            wrong.append((i, int(ids[0, 0])))
                    index.search(local.normal(size=(2, 32)).astype(np.float32), 3)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    def writer() -> None:
        local = np.random.default_rng(99)
        for _ in range(150):
            vec = local.normal(size=32).astype(np.float32) * 3
            with lock.write():
                (i,) = index.add(vec[None, :])
                added.append((int(i), vec))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not wrong, wrong[:5]
    assert index.ntotal == 450 and index.vectors.shape == (450, 32)
    vecs = np.stack([v for _, v in added])
    _, ids = index.search(vecs, 1)
    assert ids[:, 0].tolist() == [i for i, _ in added]


def test_saving_an_index_whose_rows_and_ids_disagree_is_refused(tmp_path):
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index._data = torch.cat([index.vectors, index.vectors])  # corrupt: rows stored twice
    with pytest.raises(RuntimeError, match="8 stored vector rows for 4 ids"):
        index.save(tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_an_exact_index_copies_and_pickles_with_its_lock():
    import copy
    import pickle

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    for other in (copy.deepcopy(index), pickle.loads(pickle.dumps(index))):
        other.add(np.ones((1, 4), np.float32))
        assert other.search(np.ones((1, 4), np.float32), 1)[1].tolist() == [[4]]
    assert index.ntotal == 4
