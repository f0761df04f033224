"""``dmlkit verify``, ``dmlkit identify`` and ``dmlkit fewshot``: thin over :mod:`dmlkit.apps`.

Each takes an optional run directory (its model embeds raw inputs; omit it for data that
are embeddings already), labelled data (a ``.npz`` with ``x`` or ``embeddings`` and
``labels``, a ``.npy``, ``heldout`` / ``train`` of the run, or any dataset spec of
``dmlkit embed``), prints its metrics and writes them as JSON.

With a run, the data are read as ``dmlkit embed`` and ``search`` read them (see
:class:`DataReader`). A ``.npz`` may carry ``class_names``: its integer labels then name
them, so files that number their classes apart compare by name, and ``-1`` marks an
unknown identity (allowed among queries only). ``dmlkit verify`` without ``--calibrate``
or ``--pairs`` fits its threshold on half of the identities and tests it on the others.
"""

from __future__ import annotations

import warnings
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


#: the name an unknown identity (label -1) takes when labels are mapped to class names
UNKNOWN = "<unknown>"


def _warned(call: Any, *args: Any) -> Any:
    """``call(*args)``, its warnings printed as ``warning:`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(*args)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    return out


def named_labels(arrays: dict[str, Any], source: str) -> Any:
    """The ``labels`` of a ``.npz`` (``None`` without), as names when it has integer labels
    and ``class_names`` (files number their classes apart: compare by name); ``-1`` stays
    an unknown identity (:data:`UNKNOWN` among names)."""
    import numpy as np

    labels = arrays.get("labels")
    names = arrays.get("class_names")
    if labels is None or names is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        return labels
    names = np.asarray(names).reshape(-1)
    bad = labels[(labels < -1) | (labels >= names.size)]
    if bad.size:
        raise ValueError(f"{source}: its labels index its class_names ({names.size} names), "
                         f"but label {int(bad[0])} is out of range; labels must be in "
                         f"[0, {names.size - 1}], or -1 for an unknown identity")
    unknown = -1 if names.dtype.kind in "iuf" else UNKNOWN
    return np.where(labels < 0, unknown, names[np.clip(labels, 0, None)])


def refuse_unknown(labels: Any, what: str) -> None:
    """Raise a ``ValueError`` when ``labels`` hold the unknown identity (``-1``): items of
    a gallery, a support or a verification set need their identity."""
    import numpy as np

    if labels is None:
        return
    labels = np.asarray(labels)
    unknown = labels == (UNKNOWN if labels.dtype.kind in "USO" else -1)
    if unknown.any():
        raise ValueError(f"{what}: {int(unknown.sum())} items have the unknown label -1; every "
                         "item here needs its identity (unknowns belong among the queries)")


class DataReader:
    """Reads the data options of a command: raw inputs of ``run_dir``'s model when a run
    is given, read as ``dmlkit embed`` and ``search`` read them
    (:mod:`dmlkit.runs.data`, :func:`~dmlkit.runs.queries.prepare_inputs`: ``uint8``
    scaled to [0, 1], flat rows reshaped, other shapes refused, folders read with the
    run's image size and colour, values far outside the training range warned about);
    without a run, the arrays as they are (embeddings or features)."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self._run: Any = None
        self._spec: Any = None

    @property
    def run(self) -> Any:
        if self._run is None:
            from dmlkit.runs import load_run

            self._run = load_run(self.run_dir)
        return self._run

    def _inputs(self, x: Any, source: str) -> Any:
        from dmlkit.runs.queries import prepare_inputs, run_input_spec

        if self._spec is None:
            self._spec = run_input_spec(self.run)
        return _warned(prepare_inputs, x, self._spec, source)

    def read(self, spec: str, option: str) -> tuple[Any, Any, dict[str, Any]]:
        """``(x, labels or None, every array of a .npz)`` of the data ``option`` names."""
        x, labels, arrays = self._read(spec, option)
        if len(x) == 0:
            raise ValueError(f"{option} {spec} holds no items")
        return x, labels, arrays

    def _read(self, spec: str, option: str) -> tuple[Any, Any, dict[str, Any]]:
        from dmlkit.cli._embedding_inputs import check_finite_inputs, refuse_embeddings
        from dmlkit.data.npz import read_arrays

        path, run = Path(spec), self.run_dir is not None
        source = f"{option} {spec}"
        if path.suffix == ".npz" and path.is_file():
            arrays = read_arrays(path)  # (an empty or truncated file: a ValueError naming it)
            key = next((k for k in ("x", "embeddings") if k in arrays), None)
            if key is None:
                raise ValueError(f"{path} needs an 'x' (or 'embeddings') array; it has "
                                 f"{sorted(arrays)}")
            refuse_embeddings(path if run else None)  # (a run's model takes raw inputs)
            check_finite_inputs(arrays[key], path, key)  # (rows numbered as in the file)
            x = self._inputs(arrays[key], source) if run else arrays[key]
            labels = named_labels(arrays, str(path))
            if labels is not None and len(labels) != len(x):
                raise ValueError(f"{path}: {len(x)} items but {len(labels)} labels")
            return x, labels, arrays
        if path.suffix == ".npy" and path.is_file():
            x = read_arrays(path)["x"]
            check_finite_inputs(x, path, "x")
            return (self._inputs(x, source) if run else x), None, {}
        if spec in ("heldout", "train") and not run:
            raise ValueError(f"{option} {spec} names a split of a run: pass RUN_DIR")
        if run:
            from dmlkit.runs.data import SPLITS, run_data

            data = _warned(run_data, self.run, spec)
            names = None if spec in SPLITS else data.class_names
        else:
            from dmlkit.data import load_dataset

            data = load_dataset(spec)
            names = data.class_names
        labels = data.labels.numpy()
        if names is not None and labels.ndim == 1:
            import numpy as np

            labels = np.asarray(names)[labels]  # folders number their classes apart
        return data.x.numpy(), labels, {}


def read_pairs(path: Path) -> Any:
    """``(m, 2)`` or ``(m, 3)`` int array of a CSV of ``i,j[,same]`` rows (header optional:
    a first row that is not all numbers)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: expected rows i,j or i,j,same")

    def numeric(field: str) -> bool:
        try:
            float(field)
        except ValueError:
            return False
        return True

    skip = 0 if all(numeric(v) for v in lines[0].split(",")) else 1
    if skip and len(lines) == 1:
        raise ValueError(f"{path} has a header ({lines[0]!r}) but no pairs")
    try:
        rows = np.loadtxt(lines[skip:], delimiter=",", ndmin=2)
    except ValueError as err:  # (numpy's own advice, usecols, is not this file's fix)
        why = str(err).split("; use `usecols`")[0]
        raise ValueError(f"{path}: expected integer columns i,j or i,j,same ({why})") from None
    if rows.shape[1] not in (2, 3) or not np.all(rows == np.round(rows)):
        raise ValueError(f"{path}: expected integer columns i,j or i,j,same")
    rows = rows.astype(np.int64)
    if (same := np.flatnonzero(rows[:, 0] == rows[:, 1])).size:  # distance 0: always "same"
        typer.echo(f"warning: {path}: {same.size} pair(s) compare an item with itself (row "
                   f"{same[0] + 1} of the pairs: {rows[same[0], 0]},{rows[same[0], 1]}); "
                   "their score is the best possible, which flatters the results: drop "
                   "them", err=True)
    return rows


def split_rows(n: int, fraction: float, seed: int) -> tuple[Any, Any]:
    """Seeded split of ``n`` rows: a random ``fraction`` of them, and the others."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def data_model(run_dir: Path | None, *specs: str | None) -> str | None:
    """The fingerprint of the model that embedded the data ``specs`` (the first ``.npz``
    that records one, as ``dmlkit embed`` writes it), for a kit fitted on them without a
    run (``None``: a run embeds them, and its kit records the run's)."""
    from dmlkit.index.provenance import embeddings_fingerprint

    if run_dir is not None:
        return None
    for spec in specs:
        if spec is not None and Path(spec).suffix == ".npz" and Path(spec).is_file():
            recorded = embeddings_fingerprint(spec)
            if recorded is not None:
                return recorded
    return None


def _check_out(out: Path, run_dir: Path | None, inputs: dict[str, Any], save: Any = None) -> None:
    """Refuse (before any work) an ``--out`` that cannot become a JSON file or would replace
    an input ``{option: spec}``, ``--save`` or a run's file (:mod:`dmlkit.cli._outputs`)."""
    from dmlkit.cli._outputs import check_output_path, existing_inputs

    given = existing_inputs({f"the {k} input": v for k, v in inputs.items()
                             if v not in ("heldout", "train")})  # (not a run's splits)
    check_output_path(out, "--out", {**given, "the --save directory": save},
                      what="JSON file", run_dir=run_dir)


def _print(title: str, metrics: dict[str, Any]) -> None:
    typer.echo(title)
    for key, value in metrics.items():
        if isinstance(value, float):
            ci = metrics.get("ci95", {}).get(key) if isinstance(metrics.get("ci95"), dict) else None
            extra = f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
            typer.echo(f"  {key:24s} {'n/a' if value != value else f'{value:.4f}'}{extra}")
        elif isinstance(value, int) and not isinstance(value, bool):
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
                                      "the threshold on (default: half of the identities of "
                                      "--data; tested on the other half)."),
        target_far: float = typer.Option(None, "--target-far", help="Threshold for this FAR "
                                         "(default: best accuracy)."),
        calibration: str = typer.Option("platt", "--calibration", help="platt or isotonic."),
        metric: str = typer.Option("cosine", "--metric"),
        max_pairs: int = typer.Option(200_000, "--max-pairs"),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates."),
        seed: int = typer.Option(0, "--seed", help="Seed of the pairs drawn, the splits "
                                 "and the bootstrap."),
        out: Path = typer.Option(Path("verify.json"), "--out", "-o"),
        save: Path = typer.Option(None, "--save", help="Also save the fitted Verifier here."),
    ) -> None:
        """Fit a same/different threshold and report EER, TAR@FAR (95% intervals), AUC."""
        import numpy as np

        from dmlkit.apps import Verifier
        from dmlkit.apps.splits import split_identities
        from dmlkit.apps.targets import check_targets
        from dmlkit.index.provenance import check_same_model
        from dmlkit.training.rng import check_seed

        reader = DataReader(run_dir)
        split: dict[str, Any] = {}
        try:
            check_seed(seed, "--seed")  # (the seed rule of every command)
            _check_out(out, run_dir, {"--data": data, "--calibrate": calibrate,
                                      "--pairs": pairs}, save)
            rows = None if pairs is None else read_pairs(pairs)
            x, y, _ = reader.read(data, "--data")
            if rows is None or rows.shape[1] == 2:  # the labels say which pairs are same
                refuse_unknown(y, f"--data {data}")
            v = Verifier(metric=metric, target_far=target_far, calibration=calibration,
                         max_pairs=max_pairs, n_bootstrap=bootstrap, random_state=seed,
                         embedder=None if run_dir is None else str(run_dir))
            if calibrate is not None:
                xc, yc, _ = reader.read(calibrate, "--calibrate")
                check_same_model(data, calibrate, "--data and --calibrate")
                refuse_unknown(yc, f"--calibrate {calibrate}")
                v.fit(xc, yc)
                result = v.evaluate(x, y, pairs=rows)
                split = {"protocol": "calibrate"}
            elif rows is not None:
                fit_rows, eval_rows = split_rows(len(rows), 0.5, seed)
                v.fit(x, y, pairs=rows[fit_rows])
                result = v.evaluate(x, y, pairs=rows[eval_rows])
                split = {"protocol": "pairs"}
            else:
                if y is None:
                    raise ValueError(f"{data} has no labels: pass --pairs with is_same")
                y = check_targets(y, len(x))  # (n,): the check of identify and fewshot
                try:
                    fit_rows, eval_rows = split_identities(y, 0.5, seed, f"--data {data}")
                except ValueError as err:
                    raise ValueError(f"{err} (--calibrate DATA, or --pairs CSV)") from None
                v.fit(x[fit_rows], y[fit_rows])
                result = v.evaluate(x[eval_rows], y[eval_rows])
                split = {"protocol": "identities",
                         "fit_identities": int(np.unique(y[fit_rows]).size),
                         "test_identities": int(np.unique(y[eval_rows]).size)}
            if save is not None:  # (--calibrate and --data: one model, checked above)
                v.save(save, model_sha256=data_model(run_dir, calibrate, data))
        except ERRORS as err:
            raise _fail(str(err)) from None
        result = {"command": "verify", "run_dir": str(run_dir) if run_dir else None,
                  "data": data, "pairs": str(pairs) if pairs else None, **split,
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
        nprobe: int = typer.Option(None, "--nprobe", help="IVF lists searched per query "
                                   "(default: chosen for the gallery)."),
        ef_search: int = typer.Option(None, "--ef-search", help="HNSW search breadth "
                                      "(default: chosen for the gallery)."),
        target_far: float = typer.Option(0.01, "--target-far", help="False-alarm rate of the "
                                         "threshold that rejects unknowns."),
        closed_set: bool = typer.Option(False, "--closed-set", help="Never reject: every "
                                        "query is one of the enrolled identities."),
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
        from dmlkit.index.provenance import check_same_model

        reader = DataReader(run_dir)
        reid = None
        try:
            _check_out(out, run_dir, {"--gallery": gallery, "--query": query}, save)
            xg, yg, ag = reader.read(gallery, "--gallery")
            xq, yq, aq = reader.read(query, "--query")
            check_same_model(gallery, query, "--gallery and --query")
            if yg is None or yq is None:
                raise ValueError("gallery and query need labels (identities)")
            refuse_unknown(yg, f"--gallery {gallery}")
            if not closed_set and np.unique(np.asarray(yg)).size < 2:
                raise ValueError(
                    f"--gallery {gallery} holds one identity: open-set identification needs "
                    "at least two to set the threshold that rejects unknowns (each item is "
                    "scored against the other identities); pass --closed-set to identify "
                    "without rejecting, or enroll more identities")
            far = None if closed_set else target_far
            ident = Identifier(mode=mode, metric=metric, index=index, nprobe=nprobe,
                               ef_search=ef_search, target_far=far,
                               embedder=None if run_dir is None else str(run_dir))
            ident.fit(xg, yg)
            result = ident.evaluate(xq, yq, fars=() if far is None else (far,))
            if far is None:
                result["threshold"] = None  # (-inf: nothing is rejected)
            known = np.isin(yq, yg)
            if known.any():
                zq, zg = ident.embed(xq), ident.embed(xg)
                cams = (None, None)
                if camera_key is not None:
                    if camera_key not in ag or camera_key not in aq:
                        raise ValueError(f"both --gallery and --query need an array "
                                         f"{camera_key!r}")
                    cams = (aq[camera_key][known], ag[camera_key])
                reid = reid_metrics(zq[known], zg, yq[known], yg, *cams, metric=metric,
                                    multi_shot=multi_shot)
            if save is not None:
                ident.save(save, model_sha256=data_model(run_dir, gallery, query))
        except ERRORS as err:
            raise _fail(str(err)) from None
        result = {"command": "identify", "run_dir": str(run_dir) if run_dir else None,
                  "gallery": gallery, "query": query, "gallery_size": len(yg),
                  "open_set": not closed_set, **result,
                  **({} if reid is None else {"map": reid["map"], "reid": reid})}
        _print(f"{'closed' if closed_set else 'open'}-set identification "
               f"({result['num_known']} known, {result['num_unknown']} unknown queries)", result)
        if reid is not None:
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
        seed: int = typer.Option(0, "--seed", help="Seed of the episodes."),
        out: Path = typer.Option(Path("fewshot.json"), "--out", "-o"),
    ) -> None:
        """Classify queries from a support set, or report N-way K-shot episode accuracy."""
        import numpy as np

        from dmlkit.apps import FewShotClassifier
        from dmlkit.apps.few_shot import METHODS
        from dmlkit.cli._fewshot_checks import check_episodes, check_sources, check_ways
        from dmlkit.index.provenance import check_same_model
        from dmlkit.training.rng import check_seed

        embedder = None if run_dir is None else str(run_dir)
        result: dict[str, Any] = {"command": "fewshot",
                                  "run_dir": str(run_dir) if run_dir else None}
        try:
            check_seed(seed, "--seed")  # (the seed rule of every command)
            check_sources(support, query, episodes_data)
            _check_out(out, run_dir, {"--support": support, "--query": query,
                                      "--episodes": episodes_data})
            clf = FewShotClassifier(method=method, metric=metric, embedder=embedder)
            if method not in METHODS:
                raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
            way_list, shot_list = check_ways(ways, shots)  # all read before any runs
            check_episodes(n_episodes, "--n-episodes")
            if episodes_data is not None:
                from dmlkit.apps.embedding import embed_inputs
                from dmlkit.cli._fewshot_checks import check_episode_sizes

                x, y, _ = DataReader(run_dir).read(episodes_data, "--episodes")
                refuse_unknown(y, f"--episodes {episodes_data}")
                check_episode_sizes(y, way_list, shot_list, n_query, episodes_data)
                x = embed_inputs(embedder, x).numpy()  # once for every setting
                clf.set_params(embedder=None)
                for n in way_list:
                    for k in shot_list:
                        r = clf.evaluate_episodes(x, y, n_way=n, k_shot=k, n_query=n_query,
                                                  episodes=n_episodes, seed=seed)
                        result[f"{n}way_{k}shot"] = r
                        ci, e = r["ci95"], n_episodes  # (ci NaN for one episode: no interval)
                        typer.echo(f"{n}-way {k}-shot: {r['accuracy']:.4f} " + (
                            f"± {ci:.4f} (95% CI, {e} episodes)" if ci == ci else "(1 episode)"))
            else:
                reader = DataReader(run_dir)
                xs, ys, _ = reader.read(support, "--support")
                xq, yq, _ = reader.read(query, "--query")
                check_same_model(support, query, "--support and --query")
                if ys is None or yq is None:
                    raise ValueError("--support and --query need labels")
                refuse_unknown(ys, f"--support {support}")
                ys, yq = np.asarray(ys), np.asarray(yq)
                if (ys.dtype.kind in "USO") != (yq.dtype.kind in "USO"):
                    raise ValueError("--support and --query labels must share one type "
                                     "(names or numbers)")
                clf.fit(xs, ys)
                right = clf.predict(xq) == yq
                covered = np.isin(yq, clf.classes_)
                result.update({"support": support, "query": query,
                               "accuracy": float(right.mean()),
                               "num_classes": int(len(clf.classes_)), "num_queries": len(yq)})
                if not covered.all():
                    missing = np.unique(yq[~covered])
                    typer.echo(f"warning: {int((~covered).sum())} queries are of classes the "
                               f"support does not hold ({missing[:5].tolist()}"
                               f"{' ...' if missing.size > 5 else ''}) and count as wrong in "
                               "accuracy; accuracy_covered leaves them out", err=True)
                    result.update({"accuracy_covered": float(right[covered].mean())
                                   if covered.any() else float("nan"),
                                   "num_uncovered": int((~covered).sum())})
                _print("few-shot classification", result)
        except ERRORS as err:
            raise _fail(str(err)) from None
        _write(result, out)
