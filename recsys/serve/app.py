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

Errors are ``{"detail": message}``: 404 unknown user/item (or no semantic ID), 409 the
item exists, 413 a body or list over the limit, 422 invalid input (``k`` outside
``[1, max_k]``, malformed JSON, unknown fields), 501 the run has no content encoder,
503 not loaded yet. See ``recsys.serve.state`` for concurrency and multi-worker adds.
"""

import json
import logging
import os
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from recsys.errors import RecsysError
from recsys.serve.config import ServeConfig
from recsys.serve.content import ItemContentEncoder
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
    InvalidInputError: 422,
    NotSupportedError: 501,
}
ERRORS = {code: {"model": Error} for code in (404, 413, 422)}


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
    )
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, max_body_bytes=config.max_body_bytes
    )
    app.state.loader = loader
    app.state.metrics = metrics

    for exc, code in STATUS.items():

        def handler(request: Request, err: Exception, code: int = code) -> JSONResponse:
            return JSONResponse({"detail": str(err)}, status_code=code)

        app.add_exception_handler(exc, handler)

    # Everything runs on the event loop except the work itself (search, add), which goes
    # to the thread pool in one hop (FAISS releases the GIL there). Sync dependencies or
    # endpoints would cost FastAPI several thread hops per request (dependencies and
    # response serialisation each run in the pool): ~1 ms on a busy machine.
    async def state() -> ServingState:
        if loader.state is None:
            raise HTTPException(503, loader.error or "loading the run")
        # Set, not a callback: a callback gauge is not shared across worker processes.
        metrics.catalogue.set(len(loader.state.snapshot.items))
        return loader.state

    async def k_param(
        k: Annotated[int | None, Query(description="list length (default: the server's)")] = None,
    ) -> int:
        return config.default_k if k is None else k

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
            return JSONResponse(body.model_dump(), status_code=503)
        snap = s.snapshot
        return Ready(
            status="ready",
            index=snap.index.meta.name,
            n_items=len(snap.items),
            n_added=len(snap.items.added),
        )

    @app.get(
        "/v1/users/{user_id:path}/recommendations",
        response_model=UserRecommendations,
        responses=ERRORS,
    )
    async def user_recommendations(user_id: str, k: KDep, s: StateDep) -> UserRecommendations:
        pairs = await run_in_threadpool(s.recommend_user, user_id, k)
        return UserRecommendations(
            user_id=user_id, k=k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.post("/v1/recommendations", response_model=HistoryRecommendations, responses=ERRORS)
    async def history_recommendations(body: HistoryRequest, s: StateDep) -> HistoryRecommendations:
        pairs = await run_in_threadpool(s.recommend_history, body.history, body.k, body.exclude)
        return HistoryRecommendations(
            k=body.k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.get("/v1/items/{item_id:path}/similar", response_model=SimilarItems, responses=ERRORS)
    async def similar_items(item_id: str, k: KDep, s: StateDep) -> SimilarItems:
        pairs = await run_in_threadpool(s.similar, item_id, k)
        return SimilarItems(
            item_id=item_id, k=k, items=_items(pairs), index=s.snapshot.index.meta.name
        )

    @app.get("/v1/items/{item_id:path}/semantic-id", response_model=SemanticId, responses=ERRORS)
    async def semantic_id(item_id: str, s: StateDep) -> SemanticId:
        sid = list(await run_in_threadpool(s.semantic_id, item_id))
        return SemanticId(item_id=item_id, semantic_id=sid, codes=sid[:-1], suffix=sid[-1])

    @app.post(
        "/v1/items",
        response_model=ItemAdded,
        status_code=201,
        responses={**ERRORS, 409: {"model": Error}, 501: {"model": Error}},
    )
    async def add_item(body: ItemContent, s: StateDep) -> ItemAdded:
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


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker builds the app from the env."""
    run_dir = os.environ.get(RUN_ENV)
    if not run_dir:
        raise RecsysError(f"{RUN_ENV} is not set")
    config = ServeConfig.model_validate(json.loads(os.environ.get(CONFIG_ENV, "{}")))
    return create_app(run_dir, config, background=True)
