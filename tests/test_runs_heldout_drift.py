"""A saved run's own splits rebuilt from an edited config (or changed data) are not the
data it was trained and evaluated on: commands reading them say so; a folder of mixed
image sizes is answered with the run's own image size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_helpers import SMALL_MLP, train_small

from dmlkit.runs import evaluate_run, load_run
from dmlkit.runs.data import run_data

pytestmark = pytest.mark.filterwarnings("default")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small(tmp_path_factory.mktemp("drift"), SMALL_MLP)


def _copy_with(run_dir: Path, dest: Path, **data: object) -> Path:
    """A copy of ``run_dir`` whose config.yaml's data section has ``data`` set."""
    import shutil

    shutil.copytree(run_dir, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["data"].update(data)
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def _drift_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, UserWarning)
        and "differ" in str(w.message)
        and "trained" in str(w.message)
    ]


def test_unedited_run_evaluates_without_a_data_warning(run_dir: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_run(run_dir, out=tmp_path / "e.json")
    assert _drift_warnings(caught) == []
    assert result["data"] == "heldout"


@pytest.mark.parametrize("edit", [{"max_heldout_per_class": 9}, {"seed": 5}])
def test_edited_data_section_warns_that_heldout_is_not_the_runs(
    run_dir: Path, tmp_path: Path, edit: dict
) -> None:
    edited = _copy_with(run_dir, tmp_path / "edited", **edit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_run(edited, out=tmp_path / "e.json")
    found = _drift_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in caught]
    assert str(edited) in found[0]
    assert "held-out" in found[0] and "config.yaml" in found[0]


def test_edited_run_warns_for_its_training_split_too(run_dir: Path, tmp_path: Path) -> None:
    edited = _copy_with(run_dir, tmp_path / "edited", max_per_class=9)
    run = load_run(edited, metrics=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_data(run, "train")
    found = _drift_warnings(caught)
    assert len(found) == 1 and "training" in found[0], found


def test_run_without_checkpoint_says_nothing(run_dir: Path, tmp_path: Path) -> None:
    edited = _copy_with(run_dir, tmp_path / "edited", max_heldout_per_class=9)
    (edited / "checkpoint.pt").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_run(edited, out=tmp_path / "e.json")
    assert _drift_warnings(caught) == []


def test_mixed_image_sizes_hint_uses_the_runs_image_size(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs_mixed"
    for label, size in (("a", 8), ("b", 12)):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((size, size), 40 * i + 10, dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / label / f"{i}.png")
    run = load_run(run_dir, metrics=False)
    with pytest.raises(ValueError) as err:
        run_data(run, str(folder))
    message = str(err.value)
    assert "image_size: 8" in message, message
    assert "image_size: 32" not in message


def test_the_report_of_an_edited_run_warns_too(run_dir: Path, tmp_path: Path) -> None:
    from dmlkit.report import collect

    edited = _copy_with(run_dir, tmp_path / "edited", max_heldout_per_class=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collect(edited, projection="pca")
    assert len(_drift_warnings(caught)) == 1, [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        collect(run_dir, projection="pca")
    assert not _drift_warnings(caught)
