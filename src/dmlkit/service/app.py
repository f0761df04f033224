"""The HTTP service: embed, search, verify, identify and manage items of one index.

Every route but ``/health`` needs an API key (``Authorization: Bearer KEY`` or
``X-API-Key: KEY``), checked from the headers before any of the body is read (without
a key, a request is a 401 whatever its body), and is rate limited per key; that includes
the OpenAPI schema (``GET /openapi.json``), and there is no browsable ``/docs`` page (a
browser cannot send the key). Bodies, batches and responses (rows times ``k`` hits) are
bounded; every bad request is a 4xx with a message (never an echo of a large input) and
the server keeps serving. Bodies are JSON and must say so (``Content-Type:
application/json``; else a 415 that says it). The index and the verifier must belong to
the served model (:mod:`dmlkit.service.provenance`): the service refuses to start
otherwise.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from dmlkit.service.body_limit import BodyLimit
from dmlkit.service.errors import (
    ECHO_CHARS,
    MAX_ROWS_DEPTH,
    TOO_DEEP,
    depth_over,
    echo,
    metadata_problem,
    not_stored,
    unreadable_body,
    validation_detail,
)
from dmlkit.service.limits import check_at_least_one, check_rate, check_threshold
from dmlkit.service.metrics import Metrics
from dmlkit.service.openapi import API_KEY_HEADER, BEARER, refusals
from dmlkit.service.provenance import VerifierScorer, check_index_source
from dmlkit.service.security import DIGEST, UNAUTHORIZED, ApiKeys, KeyGate, RateLimiter
from dmlkit.service.store import DurableIndex


@dataclass
class ServiceConfig:
    """Limits and thresholds of a service instance (``max_results``: most hits, rows
    times ``k``, of one ``/search`` response)."""

    max_body_bytes: int = 8 << 20
    max_batch: int = 1024
    max_k: int = 1000
    max_results: int = 100_000
    rate: float = 50.0
    burst: int = 100
    verify_threshold: float | None = None
    identify_threshold: float | None = None

    def __post_init__(self) -> None:  # a limit that would refuse every request
        for name in ("max_body_bytes", "max_batch", "max_k", "max_results", "burst"):
            check_at_least_one(getattr(self, name), name=name)
        check_rate(self.rate)
        for name in ("verify_threshold", "identify_threshold"):
            check_threshold(getattr(self, name), name=name)


class Batch(BaseModel):
    """Raw ``inputs`` (rows as the run's data, flat or shaped; strings for a text run's
    model) or ``embeddings``. Lists are checked up to their first wrong element
    (``fail_fast``): a huge list of the wrong kind is one error, found at once. A field
    not named here is refused (a misspelt ``labels`` is a 422, never silently dropped)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = None
    embeddings: Annotated[list[list[Any]], Field(fail_fast=True)] | None = None


#: neighbours per query of a search that leaves ``k`` out (the limit, where it is lower)
DEFAULT_K = 5
K_DOC = ("neighbours per query: at most the service's limit (--max-k; 1000 by default); "
         f"left out, {DEFAULT_K} or the limit where it is lower")


class SearchRequest(Batch):
    k: StrictInt = Field(DEFAULT_K, ge=1, description=K_DOC)  # not true, 5.0 or "5"


class ItemsRequest(Batch):
    metadata: list[Any] | None = None
    labels: Annotated[list[StrictInt], Field(fail_fast=True)] | None = None


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Batch
    b: Batch


class IdentifyRequest(Batch):
    pass


def create_app(store: DurableIndex, keys: ApiKeys, embedder: Any = None,
               config: ServiceConfig | None = None, verifier: Any = None) -> FastAPI:
    """The FastAPI application over ``store`` (see :mod:`dmlkit.service`)."""
    cfg = config or ServiceConfig()
    limiter = RateLimiter(cfg.rate, cfg.burst)
    metrics = Metrics()
    app = FastAPI(title="dmlkit", description="Embed, search, verify and identify with a "
                  "learned metric.", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)  # the schema is served below, behind the key
    metric = store.index.metric
    default_k = min(DEFAULT_K, cfg.max_k)
    if embedder is not None and int(embedder.dim) != store.index.dim:
        raise ValueError(f"the model embeds into {embedder.dim} dimensions but the index holds "
                         f"{store.index.dim}-dimensional vectors: build the index with this "
                         f"run (dmlkit index build RUN ...)")
    check_index_source(store.index.info, embedder, f"the index {store.path}")
    scorer = None if verifier is None else VerifierScorer(
        verifier, embedder, store.index.dim, store.index.info.get("model_sha256"))

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.observe(name, response.status_code, time.perf_counter() - start)
        return response

    def auth(request: Request,
             _bearer: HTTPAuthorizationCredentials | None = Depends(BEARER),
             _header: str | None = Depends(API_KEY_HEADER)) -> bytes:
        # (the two security dependencies put the key in the schema; the key and its rate
        # limit were checked from the headers by the KeyGate, before the body was read)
        digest = request.scope.get(DIGEST)
        if digest is None:
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        return digest

    def vectors(batch: Batch, what: str = "") -> np.ndarray:
        """Checked ``(n, dim)`` float32 embeddings of a request (embedding raw inputs)."""
        given = [batch.inputs is not None, batch.embeddings is not None]
        if sum(given) != 1:
            raise HTTPException(422, f"{what}give exactly one of 'inputs' or 'embeddings'")
        rows = batch.inputs if batch.inputs is not None else batch.embeddings
        if not rows:
            raise HTTPException(422, f"{what}empty batch")
        if len(rows) > cfg.max_batch:
            raise HTTPException(413, f"{what}batch of {len(rows)} rows; at most "
                                f"{cfg.max_batch}")
        if batch.inputs is not None and embedder is not None and (
                getattr(embedder, "input_kind", "numeric") == "text"):
            return text_vectors(batch.inputs, what)
        if batch.inputs is not None and any(isinstance(r, str) for r in rows):
            raise HTTPException(422, f"{what}inputs are strings but this service's model "
                                "takes numeric rows" + ("" if embedder is None else
                                f" of {embedder.n_features} values") + "; send a list of rows "
                                "of numbers, or serve a text run")
        field = "inputs" if batch.inputs is not None else "embeddings"
        too_deep = HTTPException(422, f"{what}{field} nest lists more than {MAX_ROWS_DEPTH} "
                                 "levels deep; send rows of numbers (flat, or shaped as the "
                                 "model's input)")
        if _first_depth(rows) > MAX_ROWS_DEPTH:
            raise too_deep
        found, bad = _non_number(rows)
        if found:
            raise HTTPException(422, f"{what}rows must hold numbers only; found "
                                f"{type(bad).__name__} {echo(bad)} (send numbers, not strings "
                                "or booleans)")
        try:
            x = np.asarray(rows, dtype=np.float64)
        except OverflowError:  # a JSON integer of hundreds of digits
            raise HTTPException(422, f"{what}a number is too large for a 64-bit float; send "
                                "numbers of at most about 1e308") from None
        except (ValueError, TypeError, RecursionError):
            if depth_over(rows, MAX_ROWS_DEPTH):  # (a ragged row nested deep)
                raise too_deep from None
            raise HTTPException(422, f"{what}rows must be equal-length numbers") from None
        if not np.isfinite(x).all():
            raise HTTPException(422, f"{what}NaN or infinite values")
        if batch.embeddings is not None and x.ndim != 2:
            raise HTTPException(422, f"{what}embeddings must be rows of numbers, shape (n, "
                                f"{store.index.dim}); got shape {_shape(x.shape)}")
        if batch.embeddings is not None and not np.isfinite(
                (x.astype(np.float32) ** 2).sum(1, dtype=np.float32)).all():
            raise HTTPException(422, f"{what}embedding values too large: their squared norm "
                                "overflows 32-bit floats")
        if batch.inputs is not None and not np.isfinite(x.astype(np.float32)).all():
            raise HTTPException(422, f"{what}input values too large for 32-bit floats")
        x = x.astype(np.float32)
        if batch.embeddings is not None and metric == "cosine":
            zero_rows(x, what, "embeddings", "a cosine index compares directions, and a "
                      "zero-length vector has none; send a nonzero embedding")
        if batch.inputs is not None:
            if embedder is None:
                raise HTTPException(422, f"{what}this service has no model: send embeddings")
            x = model_rows(x, what)
            x = np.asarray(embedded(x, what), dtype=np.float32)
            finite_output(x, what)
        return indexable(x, what)

    def model_rows(x: np.ndarray, what: str) -> np.ndarray:
        """Raw inputs ``(n, *input_shape)`` or flat ``(n, n_features)`` as flat rows;
        any other shape is a 422 naming the shapes the model takes."""
        accepted = _accepted_shapes(embedder)
        if x.shape[1:] in accepted:
            return x.reshape(len(x), -1)
        shapes = [_shape(("n", *s)) for s in accepted]
        takes = (" or ".join(shapes) if len(shapes) < 3
                 else ", ".join(shapes[:-1]) + " or " + shapes[-1])
        got = (f"{x.shape[1]} values per row" if x.ndim == 2
               else f"shape {_shape(('n', *x.shape[1:]))}")
        raise HTTPException(422, f"{what}inputs have {got}; the model takes inputs of shape "
                            f"{takes} (flat rows of {embedder.n_features} values)")

    def embedded(x: Any, what: str) -> Any:
        """The model's embeddings of ``x``; a ``ValueError`` the model raises over these
        inputs is a 422 (any other failure is the server's: a 500)."""
        try:
            return embedder(x)
        except ValueError as err:
            raise HTTPException(422, f"{what}the model refused these inputs: "
                                f"{str(err)[:300]}") from None

    def finite_output(x: np.ndarray, what: str) -> None:
        """A 422 when the model's embeddings are not finite, or on a cosine index have zero
        length (inputs far out of range: a normalized output whose norm overflowed)."""
        if not np.isfinite(x).all():
            raise HTTPException(422, f"{what}the model's embeddings of these inputs contain "
                                "NaN or infinite values; scale the inputs as the run's "
                                "training data")
        if metric == "cosine":  # (elsewhere a zero vector can be a model's true output)
            zero_rows(x, what, "the model's embedding of inputs", "a cosine index compares "
                      "directions; scale the inputs as the run's training data")

    def zero_rows(x: np.ndarray, what: str, name: str, fix: str) -> None:
        """A 422 naming the first all-zero row of ``x`` (a vector with no direction)."""
        zero = ~x.reshape(len(x), -1).any(1)
        if zero.any():
            row = int(np.flatnonzero(zero)[0])
            raise HTTPException(422, f"{what}{name}[{row}] is all zeros (a zero-length "
                                f"vector); {fix}")

    def indexable(x: np.ndarray, what: str) -> np.ndarray:
        """``x`` if its rows have the index's dimension (else a 422)."""
        if x.shape[1] != store.index.dim:
            raise HTTPException(422, f"{what}embeddings have dimension {x.shape[1]}; the index "
                                f"has {store.index.dim}")
        return x

    def text_vectors(texts: list[Any], what: str) -> np.ndarray:
        """Checked ``(n, dim)`` embeddings of ``texts`` by a text embedder."""
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise HTTPException(422, f"{what}this service's model embeds text: 'inputs' must "
                                f"be a list of strings; inputs[{bad}] is "
                                f"{type(texts[bad]).__name__}")
        x = np.asarray(embedded(texts, what), dtype=np.float32)
        finite_output(x, what)
        return indexable(x, what)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "items": store.ntotal, "dim": store.index.dim}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_: bytes = Depends(auth)) -> dict[str, Any]:
        schema = app.openapi()  # (built once, then kept)
        k = schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]
        k["maximum"] = cfg.max_k  # this service's bound; a larger k gets the message below
        k["default"] = default_k
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            for code, answer in operation["responses"].items():
                content = answer.get("content", {})  # refusals are JSON on a text route too
                if code != "200" and "text/plain" in content:
                    content["application/json"] = content.pop("text/plain")
        return schema

    @app.get("/metrics", response_class=PlainTextResponse, responses=refusals())
    def prometheus(_: bytes = Depends(auth)) -> str:
        return metrics.text(store.ntotal)

    @app.post("/embed", responses=refusals(413, 415, 422))
    def embed(req: Batch, _: bytes = Depends(auth)) -> dict[str, Any]:
        if req.inputs is None:
            raise HTTPException(422, "give 'inputs' (raw rows, or strings for a text model) "
                                "to embed")
        return {"embeddings": vectors(req).tolist()}

    @app.post("/search", responses=refusals(413, 415, 422))
    def search(req: SearchRequest, _: bytes = Depends(auth)) -> dict[str, Any]:
        k = req.k if "k" in req.model_fields_set else default_k
        if k > cfg.max_k:
            raise HTTPException(422, f"k={k} is over the limit of {cfg.max_k}")
        rows = req.inputs if req.inputs is not None else req.embeddings
        if rows and len(rows) * k > cfg.max_results:
            raise HTTPException(413, f"{len(rows)} rows times k={k} is "
                                f"{len(rows) * k} hits; one response holds at most "
                                f"{cfg.max_results}: send fewer rows or a smaller k")
        scores, ids, meta = store.search(vectors(req), k)
        results = [[{"id": int(i), "score": float(s), "metadata": m}
                    for s, i, m in zip(srow, irow, mrow, strict=True) if i >= 0]
                   for srow, irow, mrow in zip(scores, ids, meta, strict=True)]
        return {"results": results}

    @app.post("/items", responses=refusals(413, 415, 422, 503))
    def add_items(req: ItemsRequest, _: bytes = Depends(auth)) -> dict[str, Any]:
        x = vectors(req)
        for name, values in (("metadata", req.metadata), ("labels", req.labels)):
            if values is not None and len(values) != len(x):
                raise HTTPException(422, f"{name} has {len(values)} entries for {len(x)} rows")
        if req.labels is not None and any(not 0 <= v < 1 << 63 for v in req.labels):
            raise HTTPException(422, "labels must be non-negative integers below 2**63")
        for i, item in enumerate(req.metadata or ()):  # what a later /search sends back
            if (problem := metadata_problem(item)) is not None:
                raise HTTPException(422, f"metadata[{i}]{problem}")
        try:
            ids = store.add(x, payloads=req.metadata, labels=req.labels)
        except ValueError as err:  # the index refused these items before keeping any
            raise HTTPException(422, str(err)[:2 * ECHO_CHARS]) from None
        except OSError as err:  # the log could not be written: nothing was kept
            raise HTTPException(503, not_stored("these items were not added", err)) from None
        return {"ids": ids.tolist()}

    @app.delete("/items/{item_id}", responses=refusals(404, 409, 422, 503))
    def delete_item(item_id: str, _: bytes = Depends(auth)) -> dict[str, Any]:
        if not re.fullmatch(r"[0-9]{1,19}", item_id) or int(item_id) >= 1 << 63:
            raise HTTPException(422, f"item ids are non-negative integers (as /items "
                                f"returned them), got {item_id[:40]!r}")
        number = int(item_id)
        try:
            deleted = store.delete(number)
        except NotImplementedError as err:  # e.g. an HNSW graph; its record is cut from the log
            raise HTTPException(409, str(err)) from None
        except OSError as err:  # the log could not be written: the item is still there
            raise HTTPException(503, not_stored(f"item {number} was not deleted",
                                                err)) from None
        if not deleted:
            raise HTTPException(404, f"no item with id {number}")
        return {"deleted": number}

    @app.post("/verify", responses=refusals(409, 413, 415, 422))
    def verify(req: VerifyRequest, _: bytes = Depends(auth)) -> dict[str, Any]:
        a, b = vectors(req.a, "a: "), vectors(req.b, "b: ")
        if len(a) != len(b):
            raise HTTPException(422, f"a has {len(a)} rows and b has {len(b)}; pairs are row-wise")
        if scorer is not None:
            scores = scorer.scores(a, b)
            same = scorer.decide(scores)
            threshold = scorer.threshold
        else:
            if cfg.verify_threshold is None:
                raise HTTPException(409, "no verification threshold: start the service with "
                                    "--verify-threshold or --verifier")
            scores = _pair_scores(a, b, metric)
            threshold = float(cfg.verify_threshold)
            same = scores >= threshold
        kind = ("similarity" if metric != "l2" else "negative squared distance") \
            if scorer is None else f"the verifier's {scorer.metric} score (larger: more alike)"
        return {"scores": scores.tolist(), "same": same.tolist(), "threshold": threshold,
                "score": kind}

    @app.post("/identify", responses=refusals(413, 415, 422))
    def identify(req: IdentifyRequest, _: bytes = Depends(auth)) -> dict[str, Any]:
        out = []
        for s, i, label in store.nearest_labelled(vectors(req), max_results=cfg.max_results):
            if i < 0:
                out.append({"known": False, "label": None, "id": None, "score": None})
                continue
            thr = cfg.identify_threshold
            close = thr is None or (s <= thr if metric == "l2" else s >= thr)
            out.append({"known": bool(close), "label": label, "id": int(i), "score": float(s)})
        return {"results": out}

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if not _is_json(ctype) and any(e.get("loc", ())[:1] == ("body",) for e in err.errors()):
            got = f"Content-Type: {ctype[:80]}" if ctype else "no Content-Type"
            return JSONResponse({"detail": "the request body must be JSON, sent with the "
                                 f"header Content-Type: application/json (got {got})"},
                                status_code=415)
        return JSONResponse({"detail": validation_detail(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, err: StarletteHTTPException) -> Any:
        if err.status_code == 400 and isinstance(err.__cause__, RecursionError):
            # (a body nested deeper than the JSON parser follows: not a server error)
            return JSONResponse({"detail": TOO_DEEP}, status_code=422)
        if err.status_code == 400 and isinstance(err.__cause__, ValueError):
            # (bytes that are not UTF-8, an integer of more digits than Python converts)
            return JSONResponse({"detail": unreadable_body(err.__cause__)}, status_code=422)
        return await http_exception_handler(request, err)

    def route_of(scope: dict) -> Any:
        """The route ``scope`` asks for (the path matches; the method may not), or None."""
        return next((r for r in app.router.routes
                     if r.matches(scope)[0] != Match.NONE), None)

    def needs_key(scope: dict) -> bool:
        route = route_of(scope)
        return route is not None and getattr(route, "path", None) != "/health"

    def refused_early(scope: dict, status: int, seconds: float) -> None:
        # (a 401, 429 or 413 the app never saw)
        metrics.observe(getattr(route_of(scope), "path", "unmatched"), status, seconds)

    limited = BodyLimit(app, cfg.max_body_bytes,
                        lambda scope, seconds: refused_early(scope, 413, seconds))
    return KeyGate(limited, keys, limiter, needs_key, refused_early)  # type: ignore[return-value]


NUMBER_TYPES = frozenset({int, float})


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _accepted_shapes(embedder: Any) -> list[tuple[int, ...]]:
    """Per-row input shapes the model takes: its input shape, flat rows, and for one
    channel of images (``(1, H, W)``) also ``(H, W)``, the channel axis left out."""
    flat = (int(embedder.n_features),)
    shape = tuple(int(s) for s in (getattr(embedder, "input_shape", None) or flat))
    out = [shape]
    if len(shape) == 3 and shape[0] == 1:
        out.append(shape[1:])
    if flat not in out:
        out.append(flat)
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def _first_depth(rows: list[Any]) -> int:
    """How deep lists nest along the first element of each level (a batch of flat rows:
    2), counted without recursion and no deeper than one level past the limit."""
    depth, item = 0, rows
    while isinstance(item, list) and depth <= MAX_ROWS_DEPTH:
        depth += 1
        item = item[0] if item else None
    return depth


def _non_number(rows: list[Any]) -> tuple[bool, Any]:
    """``(True, value)`` of the first value inside ``rows`` (nested lists) that is not an
    int or a float (a string, a boolean, ``None``, an object), else ``(False, None)``."""
    stack = list(reversed(rows))
    while stack:
        row = stack.pop()
        if type(row) in NUMBER_TYPES:
            continue
        if not isinstance(row, list):
            return True, row
        kinds = set(map(type, row))
        if kinds <= NUMBER_TYPES:
            continue
        if list in kinds:
            stack.extend(reversed(row))
            continue
        return True, next(v for v in row if type(v) not in NUMBER_TYPES)
    return False, None


def _pair_scores(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    if metric in ("cosine", "ip"):
        return (a * b).sum(1)
    return -((a - b) ** 2).sum(1)


__all__ = ["create_app", "ServiceConfig"]
