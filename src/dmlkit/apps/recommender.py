"""Collaborative metric learning (Hsieh et al., "Collaborative Metric Learning", WWW 2017).

Users and items live in one Euclidean space; a user's recommendations are the nearest
items they have not interacted with. Training pulls each observed (user, item) pair
together and pushes sampled negative items out of a margin:

    L = sum_(u,i) w_ui [m + d(u, i)^2 - min_(k in N_ui) d(u, k)^2]_+  +  lambda_f L_f,

with ``N_ui`` ``n_negatives`` items sampled uniformly among those ``u`` has not seen, and
the WARP-style weight ``w_ui = log(1 + floor(J * M / U))`` (``M`` of the ``U`` sampled
negatives violate the margin, ``J`` items in all), which estimates the positive's rank.
Every embedding is kept in the unit ball (the norm constraint ``||.|| <= max_norm``).
Given item features, an MLP ``f`` is trained to map an item's features onto its
embedding (``L_f = sum_i ||f(x_i) - v_i||^2``), which places cold-start items.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from dmlkit._checks import check_int_param, check_random_state_seed, check_real, is_int
from dmlkit.apps.recommender_inputs import check_not_padding as _check_not_padding
from dmlkit.apps.recommender_inputs import check_params
from dmlkit.apps.recommender_inputs import float_rows as _float_rows
from dmlkit.apps.recommender_inputs import id_key as _id_key
from dmlkit.apps.recommender_inputs import ids as _ids

#: how the interactions given to ``fit`` were split from the full data
#: ("last": each user's latest interaction was held out; "none": nothing was held out)
HOLDOUTS = ("last", "none")


class CMLRecommender(BaseEstimator):
    """Recommend the nearest unseen items in a jointly learned user-item metric space.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    margin : float
        Hinge margin ``m`` on squared distances; must be > 0.
    n_negatives : int
        Negatives ``U`` sampled per positive pair.
    epochs, batch_size, lr : training settings (Adam over the embedding tables).
    schedule : {"constant", "cosine"}
        Learning rate over the steps: constant, or decayed to 0 along a half cosine.
    max_norm : float
        Radius of the ball every embedding is kept in; must be > 0.
    feature_weight : float
        Weight ``lambda_f`` of the feature loss (used when ``fit`` gets item features);
        finite and >= 0.
    feature_hidden : sequence of int
        Hidden widths of the feature MLP.
    random_state : int, numpy.random.RandomState or None
        Seed of the initial embeddings, the negatives and the batch order: an integer
        from 0 to ``2**63 - 1``, or a seed drawn from a RandomState (None: numpy's
        global one), as the other dmlkit estimators take it.
    num_threads : int, optional
        Torch threads while fitting (restored after); the per-batch operations on the
        embedding tables are small, so one thread is fastest, and much faster on a busy
        machine. None keeps torch's setting.

    Ids are strings or integers (also floats); :meth:`recommend` pads a list shorter
    than ``k`` with ``""`` (string item ids) or ``-1`` (numeric ones), as
    :class:`~dmlkit.index.ExactIndex` pads its search, so an item id equal to the padding
    (``""``, ``-1``) is refused by :meth:`fit` and :meth:`add_items`: every real id in a
    list is an item.

    Attributes
    ----------
    user_ids_, item_ids_ : numpy.ndarray
        Known ids, in embedding-row order.
    user_embeddings_, item_embeddings_ : torch.Tensor
        ``(n_users, dim)``, ``(n_items, dim)``.
    holdout_ : {"last", "none"} or None
        What ``fit`` was told was held out of its interactions (None: not stated, also
        for models saved before it was recorded); saved with the model, so an evaluation
        can tell whether anything was left to evaluate on.
    min_rating_ : float or None
        The rating filter ``fit`` was told the interactions were read with (only those
        rated at least this much were kept; None: all, or not stated), saved with the
        model so that an evaluation reads its data the same way.
    """

    def __init__(
        self,
        *,
        dim: int = 64,
        margin: float = 0.5,
        n_negatives: int = 20,
        epochs: int = 30,
        batch_size: int = 512,
        lr: float = 3e-3,
        schedule: str = "cosine",
        max_norm: float = 1.0,
        feature_weight: float = 1.0,
        feature_hidden: Sequence[int] = (256,),
        random_state: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self.dim = dim
        self.margin = margin
        self.n_negatives = n_negatives
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.schedule = schedule
        self.max_norm = max_norm
        self.feature_weight = feature_weight
        self.feature_hidden = feature_hidden
        self.random_state = random_state
        self.num_threads = num_threads

    # -- fitting ------------------------------------------------------------------------
    def fit(self, users: Any, items: Any, item_features: Any = None, *,
            holdout: str | None = None, min_rating: float | None = None,
            log: Callable[[str], None] | None = None) -> CMLRecommender:
        """Learn from observed ``(users[t], items[t])`` pairs (implicit feedback).

        ``item_features`` (optional) is ``(n_items, f)`` in the order of the sorted
        distinct item ids (``np.unique(items)``), or a mapping ``{item_id: features}``.
        ``holdout`` records how these interactions were split from the full data
        (``"last"``: each user's latest interaction was held out for evaluation;
        ``"none"``: they are all of it), kept as ``holdout_`` and saved with the model;
        ``min_rating`` the rating they were filtered at (None: none), kept as
        ``min_rating_``. ``log`` (optional) is called with one progress line per epoch.
        """
        if holdout is not None and holdout not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {HOLDOUTS} or None, got {holdout!r}")
        if min_rating is not None:
            check_real("min_rating", min_rating, -math.inf, math.inf, low_open=True,
                       high_open=True, what="a rating")
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            self._fit(users, items, item_features, log)
        finally:
            torch.set_num_threads(threads)
        self.holdout_ = holdout
        self.min_rating_ = None if min_rating is None else float(min_rating)
        return self

    def _fit(self, users: Any, items: Any, item_features: Any,
             log: Callable[[str], None] | None) -> CMLRecommender:
        users, items = _ids(users, "users"), _ids(items, "items")
        if len(users) != len(items):
            raise ValueError(f"users and items differ in length: {len(users)} != {len(items)}")
        if len(users) == 0:
            raise ValueError("no interactions to fit on")
        _check_not_padding(items, "items")
        check_params(self)
        self.user_ids_, u = np.unique(users, return_inverse=True)
        self.item_ids_, i = np.unique(items, return_inverse=True)
        if len(self.item_ids_) < 2:
            raise ValueError("need at least 2 distinct items to rank")
        feats = self._features(item_features) if item_features is not None else None
        # an integer is the seed itself; None or a RandomState gives one drawn from it
        seed = (int(self.random_state) if is_int(self.random_state)
                else check_random_state_seed(self.random_state))
        gen = torch.Generator().manual_seed(seed)
        n_users, n_items, d = len(self.user_ids_), len(self.item_ids_), int(self.dim)
        user_emb = nn.Embedding(n_users, d)
        item_emb = nn.Embedding(n_items, d)
        with torch.no_grad():
            user_emb.weight.copy_(torch.randn(n_users, d, generator=gen) / d**0.5)
            item_emb.weight.copy_(torch.randn(n_items, d, generator=gen) / d**0.5)
        params = list(user_emb.parameters()) + list(item_emb.parameters())
        self.feature_net_ = None
        if feats is not None:
            torch.manual_seed(seed)
            self.feature_net_ = _mlp(feats.shape[1], d, self.feature_hidden)
            params += list(self.feature_net_.parameters())
        opt = torch.optim.Adam(params, lr=float(self.lr))
        steps = int(self.epochs) * -(-len(u) // int(self.batch_size))
        # "cosine": the rate decays to 0 over all steps (a steadier final model)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps)))
            if self.schedule == "cosine" else (lambda t: 1.0))
        pairs = torch.from_numpy(np.stack([u, i], 1).astype(np.int64))  # (P, 2)
        seen = np.unique(u.astype(np.int64) * n_items + i)  # sorted pair keys
        self.seen_ = seen
        self.history_: list[float] = []
        for epoch in range(int(self.epochs)):
            start = time.perf_counter()
            order = torch.randperm(len(pairs), generator=gen)
            total = 0.0
            for s in range(0, len(pairs), int(self.batch_size)):
                batch = pairs[order[s : s + int(self.batch_size)]]  # (B, 2)
                neg = self._negatives(batch, n_items, seen, gen)  # (B, U)
                loss = self._loss(user_emb, item_emb, batch, neg, n_items)
                if feats is not None:
                    it = batch[:, 1].unique()
                    target = item_emb(it).detach()
                    loss = loss + float(self.feature_weight) * (
                        self.feature_net_(feats[it]) - target).pow(2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():  # the norm constraint
                    _clip(user_emb.weight, float(self.max_norm))
                    _clip(item_emb.weight, float(self.max_norm))
                total += float(loss.detach()) * len(batch)
            self.history_.append(total / len(pairs))
            if log is not None:
                log(f"epoch {epoch + 1}/{self.epochs} loss {self.history_[-1]:.6g} seconds "
                    f"{time.perf_counter() - start:.3g}")
        self.user_embeddings_ = user_emb.weight.detach().clone()
        self.item_embeddings_ = item_emb.weight.detach().clone()
        self._user_index = {_id_key(v): k for k, v in enumerate(self.user_ids_)}
        self._item_index = {_id_key(v): k for k, v in enumerate(self.item_ids_)}
        return self

    def fitted_on(self, users: Any, items: Any) -> np.ndarray:
        """``(n,)`` bool: whether each ``(users[t], items[t])`` was an interaction given to
        ``fit`` (such items are never recommended back to that user). Pairs with a user or
        item the model does not know are False."""
        check_is_fitted(self, "item_embeddings_")
        users, items = _ids(users, "users"), _ids(items, "items")
        if len(users) != len(items):
            raise ValueError(f"users and items differ in length: {len(users)} != {len(items)}")
        u = np.array([self._user_index.get(_id_key(v), -1) for v in users], dtype=np.int64)
        i = np.array([self._item_index.get(_id_key(v), -1) for v in items], dtype=np.int64)
        known = (u >= 0) & (i >= 0)
        out = np.zeros(len(users), dtype=bool)
        if known.any() and len(self.seen_):
            out[known] = _member(u[known] * len(self.item_ids_) + i[known], self.seen_)
        return out

    def _features(self, item_features: Any) -> torch.Tensor:
        if isinstance(item_features, dict):
            by_id = {_id_key(k): v for k, v in item_features.items()}
            missing = [i for i in self.item_ids_.tolist() if _id_key(i) not in by_id]
            if missing:
                raise ValueError(f"item_features lacks {len(missing)} item(s), e.g. {missing[0]!r}")
            item_features = np.stack([np.asarray(by_id[_id_key(i)]) for i in self.item_ids_])
        feats = _float_rows(item_features, "item_features")
        if feats.ndim != 2 or feats.shape[0] != len(self.item_ids_):
            raise ValueError(
                f"item_features must be (n_items={len(self.item_ids_)}, f), got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError("item_features contain NaN or infinity")
        return torch.from_numpy(feats)

    def _negatives(self, batch: torch.Tensor, n_items: int, seen: np.ndarray,
                   gen: torch.Generator) -> torch.Tensor:
        """``(B, U)`` items drawn uniformly; draws that hit a seen pair are redrawn once."""
        neg = torch.randint(n_items, (len(batch), int(self.n_negatives)), generator=gen)
        keys = (batch[:, :1] * n_items + neg).numpy()
        hit = _member(keys, seen)
        if hit.any():
            redraw = torch.randint(n_items, (int(hit.sum()),), generator=gen)
            neg[torch.from_numpy(hit)] = redraw
        return neg

    def _loss(self, user_emb: nn.Embedding, item_emb: nn.Embedding, batch: torch.Tensor,
              neg: torch.Tensor, n_items: int) -> torch.Tensor:
        u = user_emb(batch[:, 0])  # (B, d)
        d_pos = (u - item_emb(batch[:, 1])).pow(2).sum(1)  # (B,)
        d_neg = (u[:, None, :] - item_emb(neg)).pow(2).sum(2)  # (B, U)
        violations = (float(self.margin) + d_pos[:, None] - d_neg) > 0  # (B, U)
        rank = torch.floor(n_items * violations.sum(1).float() / neg.shape[1])  # (B,)
        weight = torch.log1p(rank).detach()
        hinge = (float(self.margin) + d_pos - d_neg.min(1).values).clamp_min(0)  # (B,)
        return (weight * hinge).mean()

    # -- using it -----------------------------------------------------------------------
    def _user_rows(self, users: Any) -> np.ndarray:
        check_is_fitted(self, "item_embeddings_")
        users = _ids(users, "users")
        rows = np.array([self._user_index.get(_id_key(v), -1) for v in users], dtype=np.int64)
        if (rows < 0).any():
            unknown = str(users[rows < 0][0])
            raise ValueError(f"unknown user id {unknown!r}: it was not in the data given to fit")
        return rows

    def scores(self, users: Any) -> np.ndarray:
        """``(n_users, n_items)`` scores (negated squared distances) of every item."""
        rows = self._user_rows(users)
        u = self.user_embeddings_[torch.from_numpy(rows)]
        return (-torch.cdist(u, self.item_embeddings_).pow(2)).numpy()

    def recommend(self, users: Any, k: int = 10, *, exclude_seen: bool = True) -> np.ndarray:
        """``(n_users, k)`` item ids, nearest first, from a :class:`dmlkit.index.ExactIndex`
        over the items; items a user interacted with in ``fit`` are skipped. Ids come
        back as given to ``fit`` (numbers or strings). ``k`` is lowered to the number of
        items; where a user has fewer than ``k`` unseen items the row ends in padding,
        ``""`` (string ids) or ``-1`` (numeric ids), which no item id may equal (``fit``
        refuses it), so ``row[row != pad]`` is the user's list."""
        from dmlkit.index import ExactIndex

        rows = self._user_rows(users)
        n_items = len(self.item_ids_)
        k = min(check_int_param("k", k), n_items)
        index = ExactIndex(int(self.dim), "l2")
        index.add(self.item_embeddings_.numpy(), ids=np.arange(n_items))
        starts = np.searchsorted(self.seen_, rows * n_items)
        ends = np.searchsorted(self.seen_, (rows + 1) * n_items)
        depth = min(n_items, k + (int((ends - starts).max(initial=0)) if exclude_seen else 0))
        _, found = index.search(self.user_embeddings_[torch.from_numpy(rows)].numpy(), depth)
        pad = "" if self.item_ids_.dtype.kind in "US" else -1
        out = np.full((len(rows), k), pad, dtype=self.item_ids_.dtype)
        for r, (row, s, e) in enumerate(zip(rows, starts, ends, strict=False)):
            cand = found[r][found[r] >= 0]
            if exclude_seen:
                cand = cand[~np.isin(cand, self.seen_[s:e] - row * n_items)]
            out[r, : min(k, len(cand))] = self.item_ids_[cand[:k]]
        return out

    def place_items(self, features: Any) -> np.ndarray:
        """Embeddings ``(n, dim)`` of cold-start items from their features: the feature
        network's direction at the known items' median length. (Its output, fitted by
        squared error onto the items' positions, is shrunk toward their mean, so taken
        as it is a new item would lie near every user and top everyone's list.)"""
        check_is_fitted(self, "item_embeddings_")
        if self.feature_net_ is None:
            raise ValueError("cold-start placement needs item_features at fit time")
        x = _float_rows(features, "features")
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError(f"features must be a finite (n, f) array, got shape {x.shape}")
        width = int(self.feature_net_[0].in_features)
        if x.shape[1] != width:
            raise ValueError(f"features must have {width} columns, as the item_features "
                             f"given to fit, got {x.shape[1]}")
        with torch.no_grad():
            z = self.feature_net_(torch.from_numpy(x))  # (n, dim)
            length = self.item_embeddings_.norm(dim=1).median()  # () the items' typical
            norms = z.norm(dim=1, keepdim=True)  # (n, 1)
            z = torch.where(norms > 0, z * (length / norms.clamp_min(1e-12)), z)
            _clip(z, float(self.max_norm))
        return z.numpy()

    def add_items(self, item_ids: Any, features: Any) -> CMLRecommender:
        """Add cold-start items, placed by their features; they become recommendable."""
        item_ids = _ids(item_ids, "item_ids")
        known = [i for i in item_ids if _id_key(i) in self._item_index]
        if known:
            raise ValueError(f"item id {str(known[0])!r} already exists")
        distinct, counts = np.unique(item_ids.astype(str), return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"item id {str(distinct[counts > 1][0])!r} is given "
                             f"{int(counts.max())} times; give each new item once")
        _check_not_padding(item_ids, "item_ids")
        if (item_ids.dtype.kind in "US") != (self.item_ids_.dtype.kind in "US"):
            raise TypeError(f"item ids must share one type with the known ones "
                            f"({self.item_ids_.dtype.kind in 'US' and 'strings' or 'numbers'}),"
                            f" got {item_ids.tolist()[:3]}")
        item_ids = _same_numeric_kind(item_ids, self.item_ids_)
        z = torch.from_numpy(self.place_items(features))
        if len(z) != len(item_ids):
            raise ValueError(f"{len(item_ids)} ids but {len(z)} feature rows")
        if not torch.isfinite(z).all():
            raise ValueError("the feature network places the new items at NaN or infinity "
                             "(it did not learn finite weights): fit the recommender again "
                             "with a finite feature_weight >= 0 before adding items")
        n_old = len(self.item_ids_)
        self.item_ids_ = np.concatenate([self.item_ids_, item_ids])
        self.item_embeddings_ = torch.cat([self.item_embeddings_, z])
        users, items = np.divmod(self.seen_, n_old)  # re-key seen pairs for the new item count
        self.seen_ = users * len(self.item_ids_) + items
        self._item_index = {_id_key(v): k for k, v in enumerate(self.item_ids_)}
        return self

    # -- persistence --------------------------------------------------------------------
    def save(self, path: Any) -> Any:
        """Write the fitted recommender to directory ``path`` (no pickle; checked on load)."""
        from dmlkit.apps.persistence import save_kit

        check_is_fitted(self, "item_embeddings_")
        arrays = {"user_ids": self.user_ids_, "item_ids": self.item_ids_,
                  "user_embeddings": self.user_embeddings_.numpy(),
                  "item_embeddings": self.item_embeddings_.numpy(), "seen": self.seen_}
        if self.feature_net_ is not None:
            for key, value in self.feature_net_.state_dict().items():
                arrays[f"feature_net.{key}"] = value.numpy()
        state = {"history": self.history_,
                 "feature_in": None if self.feature_net_ is None else
                 int(self.feature_net_[0].in_features),
                 "holdout": getattr(self, "holdout_", None),
                 "min_rating": getattr(self, "min_rating_", None)}
        return save_kit(path, self, arrays=arrays, state=state, count=len(self.item_ids_))

    @classmethod
    def load(cls, path: Any) -> CMLRecommender:
        """A recommender saved with :meth:`save`."""
        from dmlkit.apps.persistence import load_kit

        model, state, arrays = load_kit(path, cls)
        model.user_ids_, model.item_ids_ = arrays["user_ids"], arrays["item_ids"]
        model.user_embeddings_ = torch.from_numpy(arrays["user_embeddings"].copy())
        model.item_embeddings_ = torch.from_numpy(arrays["item_embeddings"].copy())
        model.seen_ = arrays["seen"]
        model.history_ = list(state.get("history", []))
        model.holdout_ = state.get("holdout")  # absent from older files: not stated
        if model.holdout_ is not None and model.holdout_ not in HOLDOUTS:
            from dmlkit.index.io import IndexFormatError

            raise IndexFormatError(f"{path}: unknown holdout {model.holdout_!r} (expected one "
                                   f"of {HOLDOUTS} or null)")
        model.min_rating_ = state.get("min_rating")  # absent from older files: not stated
        if model.min_rating_ is not None and (
                isinstance(model.min_rating_, bool)
                or not isinstance(model.min_rating_, (int, float))):
            from dmlkit.index.io import IndexFormatError

            raise IndexFormatError(f"{path}: min_rating must be a number or null, got "
                                   f"{model.min_rating_!r}")
        model.feature_net_ = None
        if state.get("feature_in"):
            net = _mlp(int(state["feature_in"]), int(model.dim), model.feature_hidden)
            net.load_state_dict({k[len("feature_net."):]: torch.from_numpy(v.copy())
                                 for k, v in arrays.items() if k.startswith("feature_net.")})
            model.feature_net_ = net
        model._user_index = {_id_key(v): k for k, v in enumerate(model.user_ids_)}
        model._item_index = {_id_key(v): k for k, v in enumerate(model.item_ids_)}
        return model


def _same_numeric_kind(new: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``new`` float ids as integers where the known ids are integers (``4.0`` is item
    ``4``); a fractional one is refused, as it would turn every id into a float."""
    if known.dtype.kind != "i" or new.dtype.kind != "f":
        return new
    whole = (new == np.round(new)) & (np.abs(new) < 2.0**63)
    if not whole.all():
        raise TypeError(f"item ids must be integers, as the known ones are, got "
                        f"{float(new[~whole][0])!r}: give whole-number ids")
    return new.astype(np.int64)


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def _clip(weight: torch.Tensor, max_norm: float) -> None:
    norms = weight.norm(dim=1, keepdim=True)  # (n, 1)
    weight.mul_(torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), 1.0))


def _mlp(n_in: int, n_out: int, hidden: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


__all__ = ["CMLRecommender", "HOLDOUTS"]
