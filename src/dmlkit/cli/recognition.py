"""``dmlkit verify``, ``dmlkit identify`` and ``dmlkit fewshot``: thin over :mod:`dmlkit.apps`.

Each takes an optional run directory (its model embeds raw inputs; omit it for data that
are embeddings already), labelled data (a ``.npz`` with ``x`` or ``embeddings`` and
``labels``, a ``.npy``, ``heldout`` / ``train`` of the run, or any dataset spec of
``dmlkit embed``), prints its metrics and writes them as JSON.

With a run, the data are read as ``dmlkit embed`` and ``search`` read them (see
:class:`DataReader`). A ``.npz`` may carry ``class_names``: its integer labels then name
them, so files that number their classes apart compare by name, and ``-1`` marks an
unknown identity (allowed among queries only). ``--x-key`` and ``--labels-key`` name the
arrays of every ``.npz`` a command reads, as in ``dmlkit evaluate``. ``dmlkit verify``
without ``--calibrate`` or ``--pairs`` fits its threshold on half of the identities and
tests it on the others; with ``--pairs`` alone, on half of the same and half of the
different pairs, tested on the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._npz_keys import labels_key_option, x_key_option
from dmlkit.cli._recognition_data import (
    UNKNOWN,
    DataReader,
    check_labels_alike,
    data_model,
    named_labels,
    read_pairs,
    refuse_unknown,
    split_pairs,
    split_rows,
)
from dmlkit.cli._recognition_options import cli_device, cli_metric, device_option, metric_option

ERRORS = (FileNotFoundError, FileExistsError, ValueError, TypeError, KeyError, ImportError,
          NotImplementedError)
RUN_ARG = typer.Argument(None, help="Run directory whose model embeds raw inputs (omit: the "
                         "data are embeddings or features already).")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


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


def _after_threshold(result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the keys of ``extra`` placed right after its ``threshold``."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key not in extra:
            out[key] = value
        if key == "threshold":
            out.update(extra)
    return {**out, **extra} if "threshold" not in result else out


def _verify_note(split: dict[str, Any], target_far: float | None) -> str:
    """Where ``dmlkit verify``'s threshold was set, beside what it is measured on."""
    goal = ("for the best accuracy" if target_far is None
            else f"for target_far {target_far:g}")
    if split.get("protocol") == "identities":
        where = (f"on pairs of {split['fit_identities']} identities of --data, other than "
                 f"the {split['test_identities']} it is evaluated on", "other identities")
    elif split.get("protocol") == "pairs":
        where = ("on the other half of the --pairs, not on the pairs it is evaluated on",
                 "other pairs")
    else:
        where = ("on pairs of --calibrate, not on the --data it is evaluated on", "other data")
    return (f"the threshold was calibrated {goal} {where[0]}: calibration_far / "
            "calibration_tar are its rates on the calibration pairs, far_at_threshold / "
            "tar_at_threshold its rates on the evaluation pairs (a gap between them is how "
            f"the threshold carries over to {where[1]})")


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
        metric: str = metric_option(),
        x_key: str | None = x_key_option("the .npz --data and --calibrate"),
        labels_key: str | None = labels_key_option("the .npz --data and --calibrate"),
        max_pairs: int = typer.Option(200_000, "--max-pairs"),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap replicates."),
        seed: int = typer.Option(0, "--seed", help="Seed of the pairs drawn, the splits "
                                 "and the bootstrap."),
        out: Path = typer.Option(Path("verify.json"), "--out", "-o"),
        save: Path = typer.Option(None, "--save", help="Also save the fitted Verifier here."),
        device: str = device_option(),
    ) -> None:
        """Fit a same/different threshold and report EER, TAR@FAR (95% intervals), AUC."""
        import numpy as np

        from dmlkit.apps import Verifier
        from dmlkit.apps.splits import split_identities
        from dmlkit.apps.targets import check_targets
        from dmlkit.cli._recognition_options import check_verify_options
        from dmlkit.index.provenance import check_same_model
        from dmlkit.training.rng import check_seed

        split: dict[str, Any] = {}
        try:
            check_seed(seed, "--seed")  # (the seed rule of every command)
            device = cli_device(device, None if run_dir is None else "dmlkit verify")
            reader = DataReader(run_dir, x_key, labels_key, device)
            metric = cli_metric(metric)
            check_verify_options(target_far, calibration, max_pairs, bootstrap)
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
                fit_rows, eval_rows = split_pairs(rows, len(x), y, seed, f"--pairs {pairs}")
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
        except ERRORS as err:  # (the Verifier's max_pairs is --max-pairs here)
            raise _fail(re.sub(r"(?<![\w/.-])max_pairs\b", "--max-pairs", str(err))) from None
        note = _verify_note(split, target_far)
        result = _after_threshold(
            {"command": "verify", "run_dir": str(run_dir) if run_dir else None,
             "data": data, "pairs": str(pairs) if pairs else None, **split,
             "fit_pairs": v.n_pairs_, **result},
            {"target_far": target_far, "calibration_far": v.far_,
             "calibration_tar": v.tar_, "threshold_note": note})
        _print(f"verification ({result['num_pairs']} pairs, {result['num_same']} same)", result)
        typer.echo(f"  note: {note}")
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
        metric: str = metric_option(),
        x_key: str | None = x_key_option("the .npz --gallery and --query"),
        labels_key: str | None = labels_key_option("the .npz --gallery and --query"),
        camera_key: str = typer.Option(None, "--camera-key", help="Array of both .npz files "
                                       "with each item's camera: the re-id protocol."),
        multi_shot: str = typer.Option(None, "--multi-shot", help="mean or max: pool queries "
                                       "of one identity and camera."),
        out: Path = typer.Option(Path("identify.json"), "--out", "-o"),
        save: Path = typer.Option(None, "--save", help="Also save the fitted Identifier here."),
        device: str = device_option(),
    ) -> None:
        """Enroll a gallery, identify queries, reject unknowns: CMC, mAP, DIR@FAR."""
        import numpy as np

        from dmlkit.apps import Identifier
        from dmlkit.apps.identification_metrics import reid_metrics
        from dmlkit.cli._recognition_options import check_identify_options
        from dmlkit.index.provenance import check_same_model

        reid = None
        try:
            device = cli_device(device, None if run_dir is None else "dmlkit identify")
            reader = DataReader(run_dir, x_key, labels_key, device)
            metric = cli_metric(metric)
            check_identify_options(mode, index, nprobe, ef_search,
                                   None if closed_set else target_far, multi_shot)
            _check_out(out, run_dir, {"--gallery": gallery, "--query": query}, save)
            xg, yg, ag = reader.read(gallery, "--gallery")
            xq, yq, aq = reader.read(query, "--query")
            check_same_model(gallery, query, "--gallery and --query")
            if yg is None or yq is None:
                raise ValueError("gallery and query need labels (identities)")
            check_labels_alike((f"--gallery {gallery}", yg, ag), (f"--query {query}", yq, aq))
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
        note = None
        if not closed_set:
            note = (f"the threshold was calibrated for target_far {target_far:g} on the "
                    "--gallery (each item scored against the other enrolled "
                    "identities), not on the unknown identities of --query: calibration_far "
                    "is its false-alarm rate on those gallery impostor scores, "
                    "far_at_threshold its false-alarm rate on the "
                    f"{result['num_unknown']} unknown queries "
                    "(a gap from target_far is how the threshold carries over to identities "
                    "it was not calibrated on)")
        result = {"command": "identify", "run_dir": str(run_dir) if run_dir else None,
                  "gallery": gallery, "query": query, "gallery_size": len(yg),
                  "open_set": not closed_set, **result,
                  **({} if reid is None else {"map": reid["map"], "reid": reid})}
        if note is not None:
            result = _after_threshold(result, {"target_far": target_far,
                                               "calibration_far": ident.calibration_far_,
                                               "threshold_note": note})
        _print(f"{'closed' if closed_set else 'open'}-set identification "
               f"({result['num_known']} known, {result['num_unknown']} unknown queries)", result)
        if note is not None:
            typer.echo(f"  note: {note}")
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
        ways: str = typer.Option(None, "--way", help="Comma-separated N of the episodes "
                                 "(default 5)."),
        shots: str = typer.Option(None, "--shot", help="Comma-separated K of the episodes "
                                  "(default 1,5)."),
        n_episodes: int = typer.Option(None, "--n-episodes", help="Episodes per setting "
                                       "(default 600)."),
        n_query: int = typer.Option(None, "--n-query", help="Queries per class of an "
                                    "episode (default 15)."),
        method: str = typer.Option("prototype", "--method", help="prototype or knn."),
        metric: str = metric_option(),
        x_key: str | None = x_key_option("the .npz --support, --query and --episodes"),
        labels_key: str | None = labels_key_option("the .npz --support, --query and "
                                                    "--episodes"),
        seed: int = typer.Option(0, "--seed", help="Seed of the episodes."),
        out: Path = typer.Option(Path("fewshot.json"), "--out", "-o"),
        device: str = device_option("Device of the run's model: cpu, or cuda with "
                                    "--episodes (--support and --query embed on cpu only)."),
    ) -> None:
        """Classify queries from a support set, or report N-way K-shot episode accuracy."""
        import numpy as np

        from dmlkit.apps import FewShotClassifier
        from dmlkit.apps.few_shot import METHODS
        from dmlkit.cli._fewshot_checks import (
            check_episodes,
            check_sources,
            check_ways,
            episode_settings,
        )
        from dmlkit.index.provenance import check_same_model
        from dmlkit.training.rng import check_seed

        embedder = None if run_dir is None else str(run_dir)
        result: dict[str, Any] = {"command": "fewshot",
                                  "run_dir": str(run_dir) if run_dir else None}
        try:
            check_seed(seed, "--seed")  # (the seed rule of every command)
            check_sources(support, query, episodes_data)
            device = cli_device(device, None if run_dir is None or episodes_data is not None
                                else "dmlkit fewshot --support/--query")
            reader = DataReader(run_dir, x_key, labels_key, device)
            ways, shots, n_episodes, n_query = episode_settings(
                episodes_data, ways, shots, n_episodes, n_query)
            metric = cli_metric(metric)
            _check_out(out, run_dir, {"--support": support, "--query": query,
                                      "--episodes": episodes_data})
            clf = FewShotClassifier(method=method, metric=metric, embedder=embedder)
            if method not in METHODS:
                raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
            way_list, shot_list = check_ways(ways, shots)  # all read before any runs
            check_episodes(n_episodes, "--n-episodes")
            if episodes_data is not None:
                from dmlkit.cli._fewshot_checks import check_episode_sizes

                x, y, _ = reader.read(episodes_data, "--episodes")
                refuse_unknown(y, f"--episodes {episodes_data}")
                check_episode_sizes(y, way_list, shot_list, n_query, episodes_data)
                x = reader.embed(x)  # once for every setting, on --device
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
                xs, ys, a_s = reader.read(support, "--support")
                xq, yq, aq = reader.read(query, "--query")
                check_same_model(support, query, "--support and --query")
                if ys is None or yq is None:
                    raise ValueError("--support and --query need labels")
                check_labels_alike((f"--support {support}", ys, a_s), (f"--query {query}", yq, aq))
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


__all__ = ["UNKNOWN", "DataReader", "data_model", "named_labels", "read_pairs",
           "refuse_unknown", "register", "split_pairs", "split_rows"]
