"""Request and response bodies of the HTTP API (they make the OpenAPI schema).

Every id is the dataset's original string id, never an internal index.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from recsys.config import StrictModel

Id = Annotated[str, StringConstraints(min_length=1, max_length=512)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="inner product of the query and item vectors")
    rank: int = Field(description="1-based")


class UserRecommendations(BaseModel):
    user_id: str
    k: int
    items: list[ScoredItem]
    index: str


class HistoryRequest(StrictModel):
    """An anonymous or new user: recommendations from the items they interacted with."""

    history: list[Id] = Field(
        min_length=1,
        description="item ids, oldest first: models with a next-item block or recency"
        " weights (RUN/history_query/) weigh the latest most; others take the mean",
    )
    k: int = Field(20, ge=1)
    exclude: list[Id] = Field([], description="item ids never to return (unknown ids ignored)")


class HistoryRecommendations(BaseModel):
    k: int
    items: list[ScoredItem]
    index: str


class SimilarItems(BaseModel):
    item_id: str
    k: int
    items: list[ScoredItem]
    index: str


class SemanticId(BaseModel):
    item_id: str
    semantic_id: list[int] = Field(description="codes c0..c{L-1}, then the suffix")
    codes: list[int]
    suffix: int


class ItemContent(StrictModel):
    """A new item's content, as the run's content encoder expects it."""

    item_id: Id
    text: dict[FieldName, Annotated[str, StringConstraints(max_length=100_000)]] = {}
    image_path: str | None = Field(None, description="a file under the server's image root")
    tabular: dict[FieldName, float | int | bool | str | None] = {}


class ItemAdded(BaseModel):
    item_id: str
    semantic_id: list[int] | None
    n_items: int = Field(description="catalogue size after the add")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    index: str | None = None
    n_items: int | None = None
    n_added: int | None = None
    detail: str | None = None


class Error(BaseModel):
    detail: str
