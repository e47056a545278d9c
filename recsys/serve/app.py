"""The FastAPI app: ``create_app(RUN)``; ``recsys serve RUN`` runs it under uvicorn.

Routes (all ids are the dataset's original string ids):

==========================================  ===============================================
``GET  /healthz``                           the process is up
``GET  /readyz``                            the run and its index are loaded (else 503)
``GET  /v1/users/{user_id}/recommendations`` top-``k`` for a known user, seen items excluded
``POST /v1/recommendations``                top-``k`` for a history (anonymous / new user)
``GET  /v1/items/{item_id}/similar``        top-``k`` items by dot product, itself excluded
``GET  /v1/items/{item_id}/semantic-id``    the item's semantic ID
``POST /v1/items``                          add an item from its content (content encoder)
``GET  /metrics``                           Prometheus text format
==========================================  ===============================================

Errors are ``{"detail": message}``: 400 a body that is not UTF-8 JSON, 404 unknown
user/item (or no semantic ID), 409 the item exists, 413 a body over ``max_body_bytes``,
501 the run has no content encoder, 503 not loaded yet; 422 (invalid input: ``k`` outside
``[1, max_k]``, a list over ``max_history``, unknown fields, content the encoder rejects)
is ``{"detail": [{"loc", "msg", "type"}, ...]}``. Every bound is in the OpenAPI schema,
which is built per server: its limits, and for ``POST /v1/items`` the content fields the
run's encoder reads. Responses are UTF-8 JSON; text the client sent that UTF-8 cannot
carry (a lone surrogate from a ``\ud800`` escape) comes back escaped, never as a 500.
See ``recsys.serve.state`` for concurrency and durable, multi-worker adds.
"""

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.artifacts import RunFolder
from recsys.errors import RecsysError
from recsys.item_encoder import ItemContentEncoder, content_fields
from recsys.serve.config import ServeConfig
from recsys.serve.metrics import Metrics, ObservabilityMiddleware
from recsys.serve.schemas import (
    Error,
    Health,
    HistoryRecommendations,
    HistoryRequest,
    ItemAdded,
    ItemContent,
    Ready,
    ScoredItem,
    SemanticId,
    SimilarItems,
    UserRecommendations,
    ValidationErrors,
)
from recsys.serve.state import (
    ConflictError,
    InvalidInputError,
    NotSupportedError,
    ServingState,
    TooLargeError,
    UnknownIdError,
)

log = logging.getLogger(__name__)

RUN_ENV, CONFIG_ENV = "RECSYS_SERVE_RUN", "RECSYS_SERVE_CONFIG"
STATUS = {
    UnknownIdError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    NotSupportedError: 501,
}
# Every route may answer these: 413 (body limit, in the middleware), 503 (still loading).
COMMON = {413: {"model": Error}, 503: {"model": Error}}
READ_ERRORS = {**COMMON, 404: {"model": Error}, 422: {"model": ValidationErrors}}
BODY_ERRORS = {**READ_ERRORS, 400: {"model": Error}}


class SafeJSONResponse(JSONResponse):
    """UTF-8 JSON that cannot fail on a lone surrogate echoed from a request: such text is
    written as a ``\\udXXX`` escape (valid JSON) instead of raising (a 500)."""

    def render(self, content: object) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _issues(errors: list[dict]) -> list[dict]:
    """Validation errors as ``{"loc", "msg", "type"}`` (the echoed input is left out:
    a body can be a megabyte, and the client has it)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in jsonable_encoder(errors)
    ]


class _Loader:
    """Loads the serving state once, in the caller's thread or in the background."""

    def __init__(self, load: Callable[[], ServingState]) -> None:
        self._load = load
        self.state: ServingState | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.state = self._load()
        except Exception as err:  # reported by /readyz; the process stays up
            log.exception("loading the run failed")
            self.error = f"{type(err).__name__}: {err}"


def _items(pairs: list[tuple[str, float]]) -> list[ScoredItem]:
    return [ScoredItem(item_id=i, score=s, rank=r) for r, (i, s) in enumerate(pairs, 1)]


def create_app(
    run_dir: str | Path,
    config: ServeConfig | None = None,
    encoder: ItemContentEncoder | None | str = "auto",
    background: bool = False,
) -> FastAPI:
    """The API over one run folder.

    Args:
        run_dir: the run folder (its index under ``RUN/index/<config.index>.faiss``).
        config: settings; defaults to :class:`ServeConfig`.
        encoder: ``"auto"`` loads ``RUN/item_encoder/``; tests inject an encoder here.
        background: load after startup in a thread (``/readyz`` answers 503 meanwhile);
            otherwise load now and raise on a bad run folder.
    """
    config = config or ServeConfig()
    loader = _Loader(lambda: ServingState.load(run_dir, config, encoder))
    metrics = Metrics()
    if not background:
        loader.run()
        if loader.error:
            raise RecsysError(f"cannot serve {run_dir}: {loader.error}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if background:
            threading.Thread(target=loader.run, name="recsys-load", daemon=True).start()
        yield

    app = FastAPI(
        title="recsys",
        summary="Recommendations, similar items and item adds over one trained run",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, max_body_bytes=config.max_body_bytes
    )
    app.state.loader = loader
    app.state.metrics = metrics

    for exc, code in STATUS.items():

        def handler(request: Request, err: Exception, code: int = code) -> JSONResponse:
            return SafeJSONResponse({"detail": str(err)}, status_code=code)

        app.add_exception_handler(exc, handler)

    @app.exception_handler(InvalidInputError)
    async def invalid_input(request: Request, err: InvalidInputError) -> JSONResponse:
        issue = {"loc": list(err.loc), "msg": str(err), "type": "value_error"}
        return SafeJSONResponse({"detail": [issue]}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"detail": _issues(list(err.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return SafeJSONResponse(
            {"detail": err.detail}, status_code=err.status_code, headers=err.headers
        )

    # Everything runs on the event loop except the work itself: searches go to a pool of
    # ``config.concurrent_searches`` threads in one hop (adds to Starlette's), so the loop keeps
    # parsing requests meanwhile. Not FastAPI's 40-thread pool: 32 concurrent searches
    # there contend for the GIL and the BLAS threads, and throughput fell from 858 to 463
    # requests/s with a p99 of 400 ms (bench/load_api.py, 1 worker). Sync dependencies or
    # endpoints would cost several thread hops per request (~1 ms on a busy machine).
    pool = ThreadPoolExecutor(config.concurrent_searches, thread_name_prefix="recsys-search")

    async def work(fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def state() -> ServingState:
        if loader.state is None:
            raise HTTPException(503, loader.error or "loading the run")
        # Set, not a callback: a callback gauge is not shared across worker processes.
        metrics.catalogue.set(len(loader.state.snapshot.items))
        return loader.state

    async def k_param(
        k: Annotated[int, Query(ge=1, le=config.max_k, description="list length")] = (
            config.default_k
        ),
    ) -> int:
        return k

    history_body = HistoryRequest.bounded(config.default_k, config.max_k, config.max_history)
    content_body = ItemContent.for_fields(
        *content_fields(RunFolder(Path(run_dir))), images=config.image_root is not None
    )

    StateDep = Annotated[ServingState, Depends(state)]
    KDep = Annotated[int, Depends(k_param)]

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz():
        s = loader.state
        if s is None:
            status = "failed" if loader.error else "loading"
            body = Ready(status=status, detail=loader.error)
            return SafeJSONResponse(body.model_dump(), status_code=503)
        snap = s.snapshot
        journal = s.journal_status()
        metrics.journal_skipped.set(journal["skipped_lines"] if journal else 0)
        return Ready(
            status="ready",
            index=snap.index.meta.name,
            n_items=len(snap.items),
            n_added=len(snap.items.added),
            adds_journal=journal,
        )

    @app.get(
        "/v1/users/{user_id:path}/recommendations",
        response_model=UserRecommendations,
        responses=READ_ERRORS,
    )
    async def user_recommendations(user_id: str, k: KDep, s: StateDep) -> UserRecommendations:
        pairs = await work(s.recommend_user, user_id, k)
        return UserRecommendations(
            user_id=user_id, k=k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.post(
        "/v1/recommendations", response_model=HistoryRecommendations, responses=BODY_ERRORS
    )
    async def history_recommendations(
        body: Annotated[history_body, Body()],  # type: ignore[valid-type]
        s: StateDep,
    ) -> HistoryRecommendations:
        pairs = await work(s.recommend_history, body.history, body.k, body.exclude)
        return HistoryRecommendations(
            k=body.k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.get(
        "/v1/items/{item_id:path}/similar", response_model=SimilarItems, responses=READ_ERRORS
    )
    async def similar_items(item_id: str, k: KDep, s: StateDep) -> SimilarItems:
        pairs = await work(s.similar, item_id, k)
        return SimilarItems(
            item_id=item_id, k=k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.get(
        "/v1/items/{item_id:path}/semantic-id", response_model=SemanticId, responses=READ_ERRORS
    )
    async def semantic_id(item_id: str, s: StateDep) -> SemanticId:
        sid = list(await work(s.semantic_id, item_id))
        return SemanticId(item_id=item_id, semantic_id=sid, codes=sid[:-1], suffix=sid[-1])

    @app.post(
        "/v1/items",
        response_model=ItemAdded,
        status_code=201,
        responses={**BODY_ERRORS, 409: {"model": Error}, 501: {"model": Error}},
    )
    async def add_item(
        body: Annotated[content_body, Body()],  # type: ignore[valid-type]
        s: StateDep,
    ) -> ItemAdded:
        # Not the search pool: an add encodes content (a text model: up to seconds), and
        # reads must not queue behind it.
        sid, n_items = await run_in_threadpool(s.add_item, body)
        metrics.items_added.inc()
        return ItemAdded(
            item_id=body.item_id, semantic_id=None if sid is None else list(sid), n_items=n_items
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        payload, content_type = metrics.expose()
        return Response(payload, media_type=content_type)

    return app


def limit_blas_threads(config: ServeConfig) -> None:
    """Cap numpy's BLAS threads at ``search_threads`` in a serving process: exact scoring is
    a matrix product, and BLAS threads per concurrent search oversubscribe the cores."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(config.search_threads, user_api="blas")


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker builds the app from the env."""
    run_dir = os.environ.get(RUN_ENV)
    if not run_dir:
        raise RecsysError(f"{RUN_ENV} is not set")
    config = ServeConfig.model_validate(json.loads(os.environ.get(CONFIG_ENV, "{}")))
    limit_blas_threads(config)
    return create_app(run_dir, config, background=True)
