"""Damaged IDX files, oversized images, 16-bit PGMs, duplicate and Unicode class names,
and a run whose training folder changed since training."""

from __future__ import annotations

import gzip
import unicodedata
import zlib

import numpy as np
import pytest
import torch

from dmlkit.data.dataset import ArrayDataset

PIL = pytest.importorskip("PIL.Image")


def _idx_bytes() -> bytes:
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    return b"\x00\x00\x08\x03" + np.asarray(x.shape, ">i4").tobytes() + x.tobytes()


def test_truncated_gzip_idx_is_a_value_error_naming_the_file(tmp_path):
    from dmlkit.data.idx import read_idx

    whole = gzip.compress(_idx_bytes() * 50)
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])  # EOFError in gzip
    with pytest.raises(ValueError, match="truncated") as err:
        read_idx(tmp_path / "cut.gz")
    assert "cut.gz" in str(err.value) and "download it again" in str(err.value)
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8b" + b"\xff" * 64)  # gzip magic, garbage
    with pytest.raises(ValueError, match="junk.gz"):
        read_idx(tmp_path / "junk.gz")


def test_image_above_pillows_pixel_limit_is_one_error_naming_it(tmp_path):
    from dmlkit.data.image_folder import folder_color, image_header, load_image_folder

    side = 8
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            PIL.fromarray(np.full((side, side), 9 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    # a valid grey PNG with more pixels than twice Pillow's limit, small on disk
    w, h = 14000, 13000
    limit = PIL.MAX_IMAGE_PIXELS
    assert limit is not None and w * h > 2 * limit
    ihdr = np.asarray([w, h], ">u4").tobytes() + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\x00" * ((w + 1) * h), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return np.asarray([len(data)], ">u4").tobytes() + body + np.asarray(
            [zlib.crc32(body)], ">u4").tobytes()

    huge = tmp_path / "b" / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))
    for call in (lambda: load_image_folder(tmp_path), lambda: image_header(huge),
                 lambda: folder_color([huge])):
        with pytest.raises(ValueError, match="larger than Pillow's limit") as err:
            call()
        assert "huge.png" in str(err.value) and str(2 * limit) in str(err.value)


def test_16_bit_pgm_scales_by_its_declared_depth_not_its_content(tmp_path):
    from dmlkit.data.image_folder import read_image

    a = (np.arange(64).reshape(8, 8) * 3).astype(np.uint16)  # dark: up to 189 of 65535
    (tmp_path / "dark.pgm").write_bytes(b"P5\n8 8\n65535\n" + a.astype(">u2").tobytes())
    PIL.fromarray(a).save(tmp_path / "dark.png")  # I;16
    pgm, png = read_image(tmp_path / "dark.pgm", "auto"), read_image(tmp_path / "dark.png", "auto")
    assert pgm.max() < 0.01
    np.testing.assert_array_equal(pgm, png)
    # maxval 1000: 1000 is white
    b = np.full((2, 2), 1000, np.uint16)
    (tmp_path / "m.pgm").write_bytes(b"P5\n2 2\n1000\n" + b.astype(">u2").tobytes())
    assert read_image(tmp_path / "m.pgm", "auto").min() == 1.0
    g = np.full((2, 2), 200, np.uint8)  # 8-bit images as before
    PIL.fromarray(g).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png", "auto").max() == pytest.approx(200 / 255)


def test_duplicate_npz_class_names_are_refused(tmp_path):
    from dmlkit.data.npz import load_npz

    x, labels = np.zeros((3, 2), np.float32), np.array([0, 1, 2])
    np.savez(tmp_path / "d.npz", x=x, labels=labels, class_names=np.array(["a", "b", "a"]))
    with pytest.raises(ValueError, match="'a' more than once") as err:
        load_npz(tmp_path / "d.npz")
    assert "d.npz" in str(err.value)
    nfd = unicodedata.normalize("NFD", "café")
    np.savez(tmp_path / "u.npz", x=x, labels=labels, class_names=np.array(["café", nfd, "b"]))
    with pytest.raises(ValueError, match="more than once"):
        load_npz(tmp_path / "u.npz")
    np.savez(tmp_path / "ok.npz", x=x, labels=labels, class_names=np.array(["a", "b", "c"]))
    assert load_npz(tmp_path / "ok.npz").class_names == ["a", "b", "c"]


def test_class_names_match_whatever_their_unicode_normal_form():
    from dmlkit.data.splits import class_ids, class_split

    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    data = ArrayDataset(np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]), [nfd, "tea"])
    assert class_ids(data, [nfc, "tea"]) == [0, 1]
    assert data.class_names == [nfd, "tea"]  # kept as stored
    train, _ = class_split(data, [nfc])
    assert train.labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match="no class named 'milk'"):
        class_ids(data, ["milk"])


def _grey_mlp_run(tmp_path):
    from dmlkit.config import Config
    from dmlkit.training.build import build_model, resolve_config

    root = tmp_path / "imgs"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            PIL.fromarray(np.full((8, 8), 20 * i + 60 * (c == "b"), np.uint8)).save(
                root / c / f"{i}.png")
    cfg = Config.from_dict({
        "name": "grey", "data": {"name": "image_folder", "path": str(root)},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]}, "training": {"epochs": 1}})
    resolved = resolve_config(cfg, torch.zeros(1, 8, 8), 3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    resolved.to_yaml(run_dir / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_model(resolved).state_dict(), run_dir / "model.pt")
    return root, run_dir


def test_run_input_spec_keeps_what_the_run_recorded_when_its_folder_changed(tmp_path):
    from dmlkit.runs import load_run
    from dmlkit.runs.queries import check_input_shape, run_color, run_input_spec

    root, run_dir = _grey_mlp_run(tmp_path)
    spec = run_input_spec(load_run(run_dir))
    assert spec.shape == (1, 8, 8) and not spec.changed and spec.high > 0
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    PIL.fromarray(red).save(root / "a" / "red.png")  # one RGB image added since training
    run = load_run(run_dir)
    spec = run_input_spec(run)
    assert spec.shape == (1, 8, 8)  # what the model was built for (in_features 64)
    assert run_color(run, spec) == "grayscale"
    assert check_input_shape((1, 8, 8), spec, "q") == (1, 8, 8)
    with pytest.raises(ValueError, match="changed since training") as err:
        check_input_shape((3, 8, 8), spec, "q")
    assert "3x8x8" in str(err.value) and "1x8x8" in str(err.value)


def test_a_tuple_file_names_the_line_of_an_image_past_the_pixel_limit(tmp_path, monkeypatch):
    """The image header's own refusal (here: past Pillow's limit) keeps the CSV line."""
    import dmlkit.data.image_folder as image_folder
    from dmlkit.data.tuples import _check_image_files

    for name in ("a.png", "big.png"):
        PIL.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name)
    real = image_folder.image_header

    def header(file):  # noqa: ANN001, ANN202
        if str(file).endswith("big.png"):
            raise image_folder.too_large(file, ValueError("(999999999 pixels)"))
        return real(file)

    monkeypatch.setattr(image_folder, "image_header", header)
    files = [str(tmp_path / "a.png"), str(tmp_path / "big.png")]
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: image .*big.png.*Pillow's limit"):
        _check_image_files(files, [2, 3], ["a.png", "big.png"], tmp_path / "pairs.csv",
                           None, "auto")
