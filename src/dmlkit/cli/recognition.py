"""``dmlkit verify``, ``dmlkit identify`` and ``dmlkit fewshot``: thin over :mod:`dmlkit.apps`.

Each takes an optional run directory (its model embeds raw inputs; omit it for data that
are embeddings already), labelled data (a ``.npz`` with ``x`` or ``embeddings`` and
``labels``, a ``.npy``, ``heldout`` / ``train`` of the run, or any dataset spec of
``dmlkit embed``), prints its metrics and writes them as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

ERRORS = (FileNotFoundError, FileExistsError, ValueError, TypeError, KeyError, ImportError,
          NotImplementedError)
RUN_ARG = typer.Argument(None, help="Run directory whose model embeds raw inputs (omit: the "
                         "data are embeddings or features already).")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def read_set(spec: str, run_dir: Path | None) -> tuple[Any, Any, dict[str, Any]]:
    """``(x, labels or None, every array of a .npz)`` of a data spec."""

    from dmlkit.data.npz import read_arrays

    path = Path(spec)
    if path.suffix == ".npz" and path.is_file():
        arrays = read_arrays(path)  # (an empty or truncated file: a ValueError naming it)
        key = next((k for k in ("x", "embeddings") if k in arrays), None)
        if key is None:
            raise ValueError(f"{path} needs an 'x' (or 'embeddings') array; it has "
                             f"{sorted(arrays)}")
        if key == "embeddings" and run_dir is not None:
            raise ValueError(f"{path} holds embeddings (array 'embeddings'), which RUN_DIR's "
                             "model would embed again: leave RUN_DIR out to use them as they "
                             "are, or give raw inputs as an 'x' array")
        labels = arrays.get("labels")
        names = arrays.get("class_names")
        if labels is not None and names is not None and labels.dtype.kind in "iu":
            labels = names[labels]  # files number their classes apart: compare by name
        return arrays[key], labels, arrays
    if path.suffix == ".npy" and path.is_file():
        return read_arrays(path)["x"], None, {}
    if spec in ("heldout", "train"):
        if run_dir is None:
            raise ValueError(f"--data {spec} names a split of a run: pass RUN_DIR")
        from dmlkit.runs import build_splits, load_run

        train, heldout = build_splits(load_run(run_dir).config)
        data = heldout if spec == "heldout" else train
    else:
        from dmlkit.data import load_dataset

        data = load_dataset(spec)
    return data.x.numpy(), data.labels.numpy(), {}


def read_pairs(path: Path) -> Any:
    """``(m, 2)`` or ``(m, 3)`` int array of a CSV of ``i,j[,same]`` rows (header optional)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    with open(path) as f:
        first = f.readline().strip().split(",")
    skip = 0 if all(v.strip().lstrip("-").isdigit() for v in first) else 1
    rows = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    if rows.shape[1] not in (2, 3) or not np.all(rows == np.round(rows)):
        raise ValueError(f"{path}: expected integer columns i,j or i,j,same")
    return rows.astype(np.int64)


def split_rows(n: int, labels: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Seeded split of ``n`` rows (stratified by labels when given)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        cut = int(round(fraction * n))
        return np.sort(perm[:cut]), np.sort(perm[cut:])
    first = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        first.append(rows[: int(round(fraction * rows.size))])
    a = np.sort(np.concatenate(first))
    return a, np.setdiff1d(np.arange(n), a)


def _print(title: str, metrics: dict[str, Any]) -> None:
    typer.echo(title)
    for key, value in metrics.items():
        if isinstance(value, float):
            ci = metrics.get("ci95", {}).get(key) if isinstance(metrics.get("ci95"), dict) else None
            extra = f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
            typer.echo(f"  {key:24s} {value:.4f}{extra}")
        elif isinstance(value, int):
            typer.echo(f"  {key:24s} {value}")


def _write(result: dict[str, Any], out: Path) -> None:
    from dmlkit.evaluation import write_json

    write_json(result, out)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        run_dir: Path = RUN_ARG,
        data: str = typer.Option(..., "--data", help="Labelled data to verify on."),
        pairs: Path = typer.Option(None, "--pairs", help="CSV of i,j[,same] rows of --data "
                                   "(default: pairs drawn from the labels)."),
        calibrate: str = typer.Option(None, "--calibrate", help="Separate labelled data to fit "
                                      "the threshold on (default: half of --data)."),
        target_far: float = typer.Option(None, "--target-far", help="Threshold for this FAR "
                                         "(default: best accuracy)."),
        calibration: str = typer.Option("platt", "--calibration", help="platt or isotonic."),
        metric: str = typer.Option("cosine", "--metric"),
        max_pairs: int = typer.Option(200_000, "--max-pairs"),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates."),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("verify.json"), "--out", "-o"),
        save: Path = typer.Option(None, "--save", help="Also save the fitted Verifier here."),
    ) -> None:
        """Fit a same/different threshold and report EER, TAR@FAR (95% intervals), AUC."""
        import numpy as np

        from dmlkit.apps import Verifier

        try:
            x, y, _ = read_set(data, run_dir)
            v = Verifier(metric=metric, target_far=target_far, calibration=calibration,
                         max_pairs=max_pairs, n_bootstrap=bootstrap, random_state=seed,
                         embedder=None if run_dir is None else str(run_dir))
            if calibrate is not None:
                xc, yc, _ = read_set(calibrate, run_dir)
                v.fit(xc, yc)
                result = v.evaluate(x, y, pairs=None if pairs is None else read_pairs(pairs))
            elif pairs is not None:
                rows = read_pairs(pairs)
                fit_rows, eval_rows = split_rows(len(rows), None, 0.5, seed)
                v.fit(x, y, pairs=rows[fit_rows])
                result = v.evaluate(x, y, pairs=rows[eval_rows])
            else:
                if y is None:
                    raise ValueError(f"{data} has no labels: pass --pairs with is_same")
                fit_rows, eval_rows = split_rows(len(y), y, 0.5, seed)
                v.fit(x[fit_rows], y[fit_rows])
                result = v.evaluate(x[eval_rows], np.asarray(y)[eval_rows])
            if save is not None:
                v.save(save)
        except ERRORS as err:
            raise _fail(str(err)) from None
        result = {"command": "verify", "run_dir": str(run_dir) if run_dir else None,
                  "data": data, "pairs": str(pairs) if pairs else None,
                  "fit_pairs": v.n_pairs_, **result}
        _print(f"verification ({result['num_pairs']} pairs, {result['num_same']} same)", result)
        _write(result, out)

    @app.command("identify")
    def identify(
        run_dir: Path = RUN_ARG,
        gallery: str = typer.Option(..., "--gallery", help="Labelled gallery to enroll."),
        query: str = typer.Option(..., "--query", help="Labelled queries; identities not in "
                                  "the gallery are the unknowns."),
        mode: str = typer.Option("nearest", "--mode", help="nearest or prototype."),
        index: str = typer.Option("exact", "--index", help="exact or a faiss factory string."),
        target_far: float = typer.Option(0.01, "--target-far"),
        metric: str = typer.Option("cosine", "--metric"),
        camera_key: str = typer.Option(None, "--camera-key", help="Array of both .npz files "
                                       "with each item's camera: the re-id protocol."),
        multi_shot: str = typer.Option(None, "--multi-shot", help="mean or max: pool queries "
                                       "of one identity and camera."),
        out: Path = typer.Option(Path("identify.json"), "--out", "-o"),
        save: Path = typer.Option(None, "--save", help="Also save the fitted Identifier here."),
    ) -> None:
        """Enroll a gallery, identify queries, reject unknowns: CMC, mAP, DIR@FAR."""
        import numpy as np

        from dmlkit.apps import Identifier
        from dmlkit.apps.identification_metrics import reid_metrics

        try:
            xg, yg, ag = read_set(gallery, run_dir)
            xq, yq, aq = read_set(query, run_dir)
            if yg is None or yq is None:
                raise ValueError("gallery and query need labels (identities)")
            ident = Identifier(mode=mode, metric=metric, index=index, target_far=target_far,
                               embedder=None if run_dir is None else str(run_dir))
            ident.fit(xg, yg)
            result = ident.evaluate(xq, yq, fars=(target_far,))
            zq, zg = ident.embed(xq), ident.embed(xg)
            known = np.isin(yq, yg)
            cams = (None, None)
            if camera_key is not None:
                if camera_key not in ag or camera_key not in aq:
                    raise ValueError(f"both --gallery and --query need an array {camera_key!r}")
                cams = (aq[camera_key][known], ag[camera_key])
            reid = reid_metrics(zq[known], zg, yq[known], yg, *cams, metric=metric,
                                multi_shot=multi_shot)
            if save is not None:
                ident.save(save)
        except ERRORS as err:
            raise _fail(str(err)) from None
        result = {"command": "identify", "run_dir": str(run_dir) if run_dir else None,
                  "gallery": gallery, "query": query, "gallery_size": len(yg), **result,
                  "map": reid["map"], "reid": reid}
        _print(f"open-set identification ({result['num_known']} known, "
               f"{result['num_unknown']} unknown queries)", result)
        _print("item ranking" + (" (re-id protocol)" if camera_key else ""),
               {k: reid[k] for k in ("rank1", "rank5", "map", "num_queries", "num_skipped")})
        _write(result, out)

    @app.command("fewshot")
    def fewshot(
        run_dir: Path = RUN_ARG,
        support: str = typer.Option(None, "--support", help="Labelled support set."),
        query: str = typer.Option(None, "--query", help="Labelled queries of its classes."),
        episodes_data: str = typer.Option(None, "--episodes", help="Labelled data to draw "
                                          "N-way K-shot episodes from instead."),
        ways: str = typer.Option("5", "--way", help="Comma-separated N of the episodes."),
        shots: str = typer.Option("1,5", "--shot", help="Comma-separated K of the episodes."),
        n_episodes: int = typer.Option(600, "--n-episodes"),
        n_query: int = typer.Option(15, "--n-query"),
        method: str = typer.Option("prototype", "--method", help="prototype or knn."),
        metric: str = typer.Option("cosine", "--metric"),
        seed: int = typer.Option(0, "--seed"),
        out: Path = typer.Option(Path("fewshot.json"), "--out", "-o"),
    ) -> None:
        """Classify queries from a support set, or report N-way K-shot episode accuracy."""
        import numpy as np

        from dmlkit.apps import FewShotClassifier
        from dmlkit.apps.few_shot import METHODS

        embedder = None if run_dir is None else str(run_dir)
        result: dict[str, Any] = {"command": "fewshot",
                                  "run_dir": str(run_dir) if run_dir else None}
        try:
            clf = FewShotClassifier(method=method, metric=metric, embedder=embedder)
            if method not in METHODS:
                raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
            try:  # every setting is read before the first is run
                way_list = [int(v) for v in ways.split(",")]
                shot_list = [int(v) for v in shots.split(",")]
            except ValueError:
                raise ValueError(f"--way and --shot take integers separated by commas, got "
                                 f"{ways!r} and {shots!r}") from None
            if episodes_data is not None:
                from dmlkit.apps.embedding import embed_inputs

                x, y, _ = read_set(episodes_data, run_dir)
                if y is None:
                    raise ValueError(f"{episodes_data} has no labels")
                x = embed_inputs(embedder, x).numpy()  # once for every setting
                clf.set_params(embedder=None)
                for n in way_list:
                    for k in shot_list:
                        r = clf.evaluate_episodes(x, y, n_way=n, k_shot=k, n_query=n_query,
                                                  episodes=n_episodes, seed=seed)
                        result[f"{n}way_{k}shot"] = r
                        typer.echo(f"{n}-way {k}-shot: {r['accuracy']:.4f} ± {r['ci95']:.4f} "
                                   f"(95% CI, {n_episodes} episodes)")
            elif support is not None and query is not None:
                xs, ys, _ = read_set(support, run_dir)
                xq, yq, _ = read_set(query, run_dir)
                if ys is None or yq is None:
                    raise ValueError("--support and --query need labels")
                if (np.asarray(ys).dtype.kind in "USO") != (np.asarray(yq).dtype.kind in "USO"):
                    raise ValueError("--support and --query labels must share one type "
                                     "(names or numbers)")
                clf.fit(xs, ys)
                acc = float((clf.predict(xq) == yq).mean())
                result.update({"support": support, "query": query, "accuracy": acc,
                               "num_classes": int(len(clf.classes_)), "num_queries": len(yq)})
                _print("few-shot classification", result)
            else:
                raise ValueError("pass --support and --query, or --episodes DATA")
        except ERRORS as err:
            raise _fail(str(err)) from None
        _write(result, out)
