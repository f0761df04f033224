"""``dmlkit recommend train|evaluate|top``: collaborative metric learning from interactions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

recommend_app = typer.Typer(
    help="Recommendation by collaborative metric learning (users and items in one space).",
    no_args_is_help=True,
)

DATA_HELP = ("Interactions: a user,item[,rating,timestamp] CSV/TSV (a header such as "
             "userId,movieId,rating,timestamp is optional), a .inter file, or "
             "'movielens-100k' (from the recbole wheel).")


def _path(data: str) -> Path:
    from dmlkit.data.interactions import movielens_100k_path

    return movielens_100k_path() if data == "movielens-100k" else Path(data)


def _read(data: str, min_rating: float | None) -> Any:
    from dmlkit.data.interactions import read_interactions

    return read_interactions(_path(data), min_rating=min_rating)


#: what to do when the data to split has no timestamps, per command
NO_TIME = {
    "train": "give user,item,rating,timestamp data, or train on every interaction with "
             "--holdout none (then there is nothing to evaluate the model on)",
    "evaluate": "give the data the model was trained on with 'recommend train --holdout "
                "last', with its timestamps",
}


def _split(interactions: Any, holdout: str, command: str = "train") -> tuple[Any, Any]:
    from dmlkit.data.interactions import leave_last_out

    if holdout == "none":
        return interactions, None
    if holdout != "last":
        raise ValueError(f"--holdout must be 'last' or 'none', got {holdout!r}")
    return leave_last_out(interactions, remedy=NO_TIME[command])


def _check_target(target: Path, model_dir: Path, data: str) -> None:
    """Refuse an evaluate --out that would overwrite an input (the --data file, a file
    inside the model directory) or lie inside any other saved dmlkit directory."""
    from dmlkit.cli._outputs import check_output_path

    check_output_path(target, "--out", {"the --data file": _path(data),
                                        "the model directory": model_dir}, what="JSON file")


def _as_text(recs: Any) -> Any:
    """Recommendation lists as strings, padding as ``""``: ids compare with those read from
    a file (always strings) by the key the model matches ids with (a whole float as the
    integer: ``17.0`` is ``"17"``)."""
    import numpy as np

    from dmlkit.apps.recommender_inputs import id_key

    if recs.dtype.kind in "US":
        return recs.astype(str)
    text = np.array([id_key(v) for v in recs.ravel().tolist()], dtype=str).reshape(recs.shape)
    return np.where(recs == -1, "", text)  # (numeric ids pad with -1)


def _known(ids: Any, fitted: Any) -> Any:
    """``(n,)`` bool: whether each id read from a file names one of the model's ``fitted``
    ids, matched by the model's key (``"17"`` names a fitted ``17.0``)."""
    import numpy as np

    from dmlkit.apps.recommender_inputs import id_key

    keys = {id_key(v) for v in fitted.tolist()}
    return np.array([id_key(v) in keys for v in ids.tolist()], dtype=bool)


def _trained_min_rating(model: Any, model_dir: Path, given: float | None) -> float | None:
    """The --min-rating to read evaluation data with: the one ``model`` was trained with
    (when none is given); a different one is refused, as its held-out interactions would
    not be those its training left out."""
    recorded = getattr(model, "min_rating_", None)
    if given is None:
        if recorded is not None:
            typer.echo(f"note: reading --data as {model_dir} was trained: --min-rating "
                       f"{recorded:g}", err=True)
        return recorded
    if recorded is not None and given != recorded:
        raise ValueError(
            f"{model_dir} was trained on ratings >= {recorded:g} (--min-rating {recorded:g}), "
            f"but --min-rating {given:g} was given: the interactions held out would not be "
            "those its training left out; omit --min-rating (the trained value is used) or "
            f"train again with --min-rating {given:g}")
    if recorded is None and model.holdout_ is not None:
        typer.echo(f"warning: {model_dir} records no --min-rating (it was trained on every "
                   f"rating, or saved before dmlkit recorded it): --min-rating {given:g} may "
                   "hold out other interactions than its training left out", err=True)
    return given


#: the option of each recommender parameter a command sets
OPTIONS = {"dim": "--dim", "margin": "--margin", "epochs": "--epochs"}


def _check_model(model: Any) -> None:
    """The recommender's parameter checks, before any data is read, each refusal naming
    the option (``--dim must be ...``) rather than the parameter."""
    from dmlkit.apps.recommender_inputs import check_params

    try:
        check_params(model)
    except ValueError as err:
        name, sep, rest = str(err).partition(" must ")
        if not sep or name not in OPTIONS:
            raise
        raise ValueError(f"{OPTIONS[name]} must {rest}") from None


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1) from None


@recommend_app.command("train")
def train(
    data: str = typer.Argument(..., help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the fitted model."),
    holdout: str = typer.Option("last", "--holdout",
                                help="'last': leave each user's latest interaction out "
                                     "(for evaluate); 'none': train on everything."),
    min_rating: float = typer.Option(None, "--min-rating", help="Keep ratings >= this."),
    dim: int = typer.Option(64, "--dim"),
    margin: float = typer.Option(1.0, "--margin"),
    epochs: int = typer.Option(30, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit a CML recommender and save it (--out: a new or empty directory, or one holding
    an earlier CMLRecommender, which is replaced)."""
    from dmlkit.apps import CMLRecommender
    from dmlkit.apps.persistence import KIT_FORMAT
    from dmlkit.cli._outputs import check_output_dir, check_outside_saved
    from dmlkit.data.interactions import check_min_rating
    from dmlkit.index.io import check_replaceable
    from dmlkit.training.rng import check_seed

    try:  # the destination first: refused after training, the training would be lost
        check_seed(seed, "--seed")  # (the seed rule of every command)
        check_min_rating(min_rating)
        model = CMLRecommender(dim=dim, margin=margin, epochs=epochs, random_state=seed)
        _check_model(model)
        check_output_dir(out)
        check_replaceable(out, KIT_FORMAT, CMLRecommender.__name__)
        check_outside_saved(out)
        train_part, _ = _split(_read(data, min_rating), holdout)
        model.fit(train_part.users, train_part.items, holdout=holdout, min_rating=min_rating,
                  log=lambda line: typer.echo(line, err=True))
        model.save(out)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(err)
    typer.echo(f"trained on {len(train_part)} interactions of {len(model.user_ids_)} users and "
               f"{len(model.item_ids_)} items (final loss {model.history_[-1]:.4f}); saved to "
               f"{out}")


@recommend_app.command("evaluate")
def evaluate(
    model_dir: Path = typer.Argument(..., help="Directory written by 'recommend train'."),
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    min_rating: float = typer.Option(None, "--min-rating",
                                     help="Keep ratings >= this (default: the value the "
                                          "model was trained with)."),
    k: int = typer.Option(10, "--k", "-k", help="Cut-off (at most the catalogue's size: a larger "
                          "one is lowered to it, with a note)."),
    out: Path = typer.Option(None, "--out", "-o", help="JSON file (default MODEL_DIR.json; "
                             "never the --data file or a file inside a saved model)."),
) -> None:
    """Recall@k, NDCG@k and coverage on each user's held-out latest interaction.

    --data is split as 'recommend train --holdout last' split it; a model trained with
    --holdout none saw every interaction, so there is nothing to evaluate it on. Only
    items new to a user are ranked (training items are never recommended back), so a
    held-out item the user already had in training (a repeat) is skipped, with a
    warning, and counted as skipped_repeats; unknown users or items as skipped_unknown.
    """
    from dmlkit.apps import CMLRecommender
    from dmlkit.data.interactions import check_min_rating
    from dmlkit.evaluation import write_json
    from dmlkit.evaluation.recommendation import recommendation_metrics

    resolved = model_dir.resolve()  # MODEL_DIR.json: appended (cml_m0.5 -> cml_m0.5.json)
    target = out or resolved.with_name(resolved.name + ".json")
    try:
        check_min_rating(min_rating)
        _check_k(k)
        _check_target(target, model_dir, data)
        model = CMLRecommender.load(model_dir)
        if model.holdout_ == "none":
            raise ValueError(
                f"{model_dir} was trained with --holdout none: every interaction was used for "
                "training and none was held out, so there is nothing to evaluate it on (a "
                "user's training items are never recommended back); retrain it with "
                "--holdout last to evaluate it")
        min_rating = _trained_min_rating(model, model_dir, min_rating)
        _, test = _split(_read(data, min_rating), "last", "evaluate")
        # as the model matches ids: read ids are strings, fitted ones may be numbers
        known = _known(test.users, model.user_ids_) & _known(test.items, model.item_ids_)
        if not known.any():
            raise ValueError("no held-out interaction has a user and item the model knows")
        users, items = test.users[known], test.items[known]
        repeats = model.fitted_on(users, items)  # (m,) the user had the item in training
        if repeats.all():
            raise ValueError(
                f"all {len(users)} held-out interactions of {data} " + (
                    "repeat an item the user already had in training; only unseen items "
                    "are recommended, so there is no new item to evaluate on"
                    if model.holdout_ == "last" else
                    f"were used to train {model_dir}, so none can be recommended back and "
                    "every metric would be 0; evaluate a model trained with --holdout last "
                    "on this data"))
        if repeats.any():
            typer.echo(f"warning: {int(repeats.sum())} of {len(users)} held-out interactions "
                       "repeat an item the user already had in training; only unseen items "
                       "are recommended, so they could never be hits: skipped (as "
                       "leave-last-out protocols evaluate new items only), reported as "
                       "skipped_repeats", err=True)
            users, items = users[~repeats], items[~repeats]
        n_items = len(model.item_ids_)
        if k > n_items:  # as 'recommend top' does: no list can be longer than the catalogue
            typer.echo(f"note: -k {k} is more than the {n_items} items of the catalogue; "
                       f"evaluating at k={n_items}", err=True)
            k = n_items
        metrics = recommendation_metrics(_as_text(model.recommend(users, k)),
                                         [[i] for i in items], n_items, k, pad="")
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    metrics["skipped_unknown"] = int((~known).sum())
    metrics["skipped_repeats"] = int(repeats.sum())
    write_json(metrics, target)
    for key, value in metrics.items():
        typer.echo(f"{key:16s} {value:.4f}" if isinstance(value, float) else f"{key:16s} {value}")
    typer.echo(f"wrote {target}")


@recommend_app.command("top")
def top(
    model_dir: Path = typer.Argument(..., help="Directory written by 'recommend train'."),
    user: list[str] = typer.Option(..., "--user", "-u", help="User id (repeatable)."),
    k: int = typer.Option(10, "--k", "-k", help="Items per user."),
) -> None:
    """The top-k unseen items of each user, nearest first."""
    from dmlkit.apps import CMLRecommender

    try:
        _check_k(k)
        recs = _as_text(CMLRecommender.load(model_dir).recommend(user, k))
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    for u, row in zip(user, recs, strict=True):
        typer.echo(f"{u}\t" + " ".join(i for i in row if i != ""))  # (padding dropped)


def register(app: typer.Typer) -> None:
    app.add_typer(recommend_app, name="recommend")
