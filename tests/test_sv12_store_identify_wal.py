"""The durable store's nearest-labelled search stays within the service's result limit,
and its write-ahead log drops only a torn last line: a corrupt record with records after
it stops the start and leaves the log as it is."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")


def make_index(path, vectors, labels):
    from dmlkit.index import ExactIndex

    index = ExactIndex(vectors.shape[1])
    index.add(vectors, labels=labels)
    index.save(path)
    return path


def spy_on_searches(store) -> list[tuple[int, int]]:
    """``(rows, k)`` of every search the store's index is asked."""
    calls: list[tuple[int, int]] = []
    search = store.index.search

    def spy(q, k):
        calls.append((len(q), int(k)))
        return search(q, k)

    store.index.search = spy
    return calls


def brute_force_nearest_labelled(x, labels, q, cap):
    """Per query ``(id, label, rank)`` of the nearest labelled item by squared L2 (ids
    are row numbers), or None when its rank among all items is ``cap`` or more."""
    out = []
    for row in q:
        d = ((x.astype(np.float64) - row) ** 2).sum(1)
        order = np.argsort(d, kind="stable")
        ranks = np.flatnonzero(labels[order] >= 0)
        if not ranks.size or ranks[0] >= cap:
            out.append(None)
            continue
        item = int(order[ranks[0]])
        out.append((item, int(labels[item]), float(d[item])))
    return out


@pytest.mark.parametrize("max_results", [100_000, 240, 40])
def test_nearest_labelled_matches_a_brute_force_reference(tmp_path, max_results):
    from dmlkit.service import DurableIndex

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    labels = np.full(300, -1)
    labels[rng.choice(300, 12, replace=False)] = rng.integers(0, 5, 12)
    store = DurableIndex(make_index(tmp_path / "idx", x, labels))
    try:
        q = rng.normal(size=(8, 6)).astype(np.float32)
        got = store.nearest_labelled(q, max_results=max_results)
        want = brute_force_nearest_labelled(x, labels, q, cap=max_results // len(q))
        assert any(w is None for w in want) == (max_results < 1000)  # the cap is reached
        for (score, item, label), expected in zip(got, want, strict=True):
            if expected is None:  # no labelled item within the cap: unknown
                assert (item, label) == (-1, None) and np.isnan(score)
            else:
                assert (item, label) == expected[:2]
                assert score == pytest.approx(expected[2], rel=1e-4, abs=1e-5)
    finally:
        store.close(checkpoint=False)


def test_nearest_labelled_deepens_only_unanswered_rows_and_stops_at_the_result_limit(tmp_path):
    from dmlkit.service import DurableIndex

    rng = np.random.default_rng(4)
    far = np.full((1, 8), 50, np.float32)  # the one labelled item, far from the rest
    x = np.vstack([rng.normal(size=(2000, 8)).astype(np.float32), far])
    labels = np.r_[np.full(2000, -1), 7]
    store = DurableIndex(make_index(tmp_path / "idx", x, labels))
    try:
        calls = spy_on_searches(store)
        q = np.vstack([rng.normal(size=(60, 8)), far + 0.01]).astype(np.float32)
        out = store.nearest_labelled(q, max_results=61 * 100)
        assert out[-1][1:] == (2000, 7)  # the row near the labelled item is answered
        assert all(item == -1 and label is None for _, item, label in out[:-1])
        assert calls[0] == (61, 32)
        assert [rows for rows, _ in calls[1:]] == [60] * (len(calls) - 1)  # unanswered only
        assert max(k for _, k in calls) == 100  # result limit / rows, not the whole index
        assert all(rows * k <= 61 * 100 for rows, k in calls)
    finally:
        store.close(checkpoint=False)


def test_identify_with_the_default_limit_never_searches_the_whole_unlabelled_index(tmp_path):
    from dmlkit.service import DurableIndex

    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(size=(3000, 4)), np.full((1, 4), 40)]).astype(np.float32)
    store = DurableIndex(make_index(tmp_path / "idx", x, np.r_[np.full(3000, -1), 1]))
    try:
        calls = spy_on_searches(store)
        out = store.nearest_labelled(rng.normal(size=(512, 4)).astype(np.float32))
        assert all(item == -1 for _, item, _ in out)  # answered unknown, not searched out
        assert all(rows * k <= 100_000 for rows, k in calls), calls
        single = store.nearest_labelled(x[:1])  # one row may search the whole index
        assert single[0][1:] == (3000, 1)
    finally:
        store.close(checkpoint=False)


# -- the write-ahead log -------------------------------------------------------------------


@pytest.fixture
def logged(tmp_path):
    """An index directory and a log of three adds (ids 10, 11, 12) left by a killed server."""
    from dmlkit.service import DurableIndex

    rng = np.random.default_rng(6)
    path = make_index(
        tmp_path / "idx", rng.normal(size=(10, 4)).astype(np.float32), np.arange(10) % 3
    )
    store = DurableIndex(path)
    for value in (1.0, 2.0, 3.0):
        store.add(np.full((1, 4), value, np.float32), payloads=[value])
    store.close(checkpoint=False)  # the writes stay in the log only
    wal = tmp_path / "idx.wal"
    assert len(wal.read_bytes().splitlines()) == 3
    return path, wal


@pytest.mark.parametrize(
    "tail",
    [
        b'0badc0de {"op":"add","ids":[',  # cut mid-append
        b'0badc0de {"op":"delete","ids":[10]}\n',  # ended, but fails its checksum
    ],
)
def test_a_torn_last_line_is_dropped_and_the_records_before_it_replayed(logged, tail):
    from dmlkit.service import DurableIndex

    path, wal = logged
    good = wal.read_bytes()
    with open(wal, "ab") as f:
        f.write(tail)
    store = DurableIndex(path)
    try:
        assert store.replayed == 3 and store.ntotal == 13
        assert wal.read_bytes() == good + tail  # cut only at the first write
        (item,) = store.add(np.zeros((1, 4), np.float32))
        assert item == 13
        assert wal.read_bytes().startswith(good) and len(wal.read_bytes().splitlines()) == 4
    finally:
        store.close(checkpoint=False)
    again = DurableIndex(path)
    assert again.replayed == 4 and again.ntotal == 14
    again.close(checkpoint=False)


@pytest.mark.parametrize("damage", ["checksum", "cut"])
def test_a_corrupt_record_before_intact_ones_stops_the_start_and_keeps_the_log(logged, damage):
    from dmlkit.service import DurableIndex
    from dmlkit.service.store import CorruptLogError

    path, wal = logged
    lines = wal.read_bytes().splitlines(keepends=True)
    if damage == "checksum":
        lines[1] = lines[1].replace(b"[11]", b"[17]")
    else:  # a line that lost its end, the records after it whole
        lines[1] = lines[1][:20] + b"\n"
    wal.write_bytes(b"".join(lines))
    before = wal.read_bytes()
    with pytest.raises(CorruptLogError) as err:
        DurableIndex(path)
    message = str(err.value)
    assert str(wal) in message and "line 2" in message and "\n" not in message
    assert wal.read_bytes() == before  # nothing cut, nothing appended
    assert not path.with_name("idx.lock").exists()  # the directory is given up
    with pytest.raises(CorruptLogError):  # and refused again, the same way, next time
        DurableIndex(path)
    assert wal.read_bytes() == before


def test_serve_refuses_a_log_with_a_corrupt_middle_record_in_one_line(logged, tmp_path):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    path, wal = logged
    lines = wal.read_bytes().splitlines(keepends=True)
    wal.write_bytes(lines[0] + b"00000000" + lines[1][8:] + lines[2])
    before = {
        name: (tmp_path / name).read_bytes() if (tmp_path / name).is_file() else None
        for name in os.listdir(tmp_path)
    }
    (keys := tmp_path.parent / f"{tmp_path.name}-keys.txt").write_text("k" * 32 + "\n")
    with socket.socket() as taken:  # were the log let through, the server could not listen
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = CliRunner().invoke(
            app,
            [
                "serve",
                "--index",
                str(path),
                "--api-keys-file",
                str(keys),
                "--host",
                "127.0.0.1",
                "--port",
                str(taken.getsockname()[1]),
            ],
        )
    assert res.exit_code == 1
    errors = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert str(wal) in errors[0] and "line 2" in errors[0]
    after = {
        name: (tmp_path / name).read_bytes() if (tmp_path / name).is_file() else None
        for name in os.listdir(tmp_path)
    }
    assert after == before
