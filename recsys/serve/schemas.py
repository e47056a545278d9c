"""Request and response bodies of the HTTP API (they make the OpenAPI schema).

Every id is the dataset's original string id, never an internal index.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
)

from recsys.config import StrictModel

# Printable text only: no control characters. (Lone surrogates, which a JSON body can carry
# as "\ud800" escapes, are refused by the JSON parser itself: 422 string_unicode.)
_PRINTABLE = r"[^\x00-\x1f\x7f]"
# "(?![\s\S])" is the end of the text in both Python and ECMA regexes (Python's "$" also
# matches before a final newline). No look-ahead elsewhere: schema-driven generators
# (schemathesis) ignore it, so such rules are stated as "not" clauses instead.
PRINTABLE_PATTERN = rf"^{_PRINTABLE}+(?![\s\S])"
# A new item's id must be reachable as /v1/items/{item_id}/...: no "." or ".." path segment,
# which HTTP clients resolve away before sending (RFC 3986, remove_dot_segments).
DOT_SEGMENT_PATTERN = r"(^|/)\.\.?(/|$)"
RESERVED_FIELDS = ("item_id", "image_path")  # the item's own columns


def _no_dot_segment(item_id: str) -> str:
    if re.search(DOT_SEGMENT_PATTERN, item_id):
        raise ValueError('an item id has no "." or ".." path segment')
    return item_id


Id = Annotated[str, StringConstraints(min_length=1, max_length=512)]
NewItemId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=PRINTABLE_PATTERN),
    AfterValidator(_no_dot_segment),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "pattern": PRINTABLE_PATTERN,
            "not": {"pattern": DOT_SEGMENT_PATTERN},
            "description": 'printable; no "." or ".." path segment',
        }
    ),
]


def _not_reserved(name: str) -> str:
    if name in RESERVED_FIELDS:
        raise ValueError(f"{name!r} names the item's own column, not a content field")
    return name


FieldName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ContentFieldName = Annotated[FieldName, AfterValidator(_not_reserved)]


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

    @classmethod
    def bounded(cls, default_k: int, max_k: int, max_history: int) -> type[HistoryRequest]:
        """This model with one server's limits, so that its schema states them."""
        return create_model(
            "HistoryRequest",
            __base__=cls,
            __doc__=cls.__doc__,
            history=(list[Id], Field(min_length=1, max_length=max_history,
                                     description=cls.model_fields["history"].description)),
            k=(int, Field(default_k, ge=1, le=max_k)),
            exclude=(list[Id], Field([], max_length=max_history,
                                     description=cls.model_fields["exclude"].description)),
        )  # fmt: skip


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


Text = Annotated[str, StringConstraints(max_length=100_000)]
# Keys are content field names (pydantic states their lengths, not the reserved names).
_KEYS = {"propertyNames": {"minLength": 1, "maxLength": 128, "not": {"enum": RESERVED_FIELDS}}}
Tabular = float | int | bool | str | None


class ItemContent(StrictModel):
    """A new item's content, as the run's content encoder expects it."""

    model_config = ConfigDict(regex_engine="python-re")  # Rust's has no look-ahead

    item_id: NewItemId
    text: dict[ContentFieldName, Text | None] = Field({}, json_schema_extra=_KEYS)
    image_path: (
        Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=PRINTABLE_PATTERN)]
        | None
    ) = Field(None, description="a file under the server's image root")
    tabular: dict[ContentFieldName, Tabular] = Field({}, json_schema_extra=_KEYS)

    @classmethod
    def for_fields(
        cls, text: list[str], tabular: list[str], images: bool = True
    ) -> type[ItemContent]:
        """This model with the content fields one run's encoder reads listed in its schema
        (each optional: ``ServingState.add_item`` passes a missing one on as a missing
        value), and ``image_path`` only where the server accepts images (``images``)."""

        def block(name: str, fields: list[str], value_schema: dict) -> Any:
            listed = {f: {**value_schema, "description": "read by this run's encoder"}
                      for f in fields}  # fmt: skip
            kind = cls.model_fields[name].annotation
            extra = {**_KEYS, **({"properties": listed} if listed else {})}
            return (kind, Field(default_factory=dict, json_schema_extra=extra))

        no_images = (None, Field(None, description="this server accepts no images"))
        return create_model(
            "ItemContent",
            __base__=cls,
            __doc__=cls.__doc__,
            text=block("text", text, {"type": ["string", "null"], "maxLength": 100_000}),
            tabular=block("tabular", tabular, {}),
            **({} if images else {"image_path": no_images}),
        )


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
    adds_journal: dict[str, str | int] | None = Field(
        None, description="where added items are kept, and how many corrupt lines were skipped"
    )
    detail: str | None = None


class Error(BaseModel):
    detail: str


class Issue(BaseModel):
    loc: list[str | int] = Field(description='where: ["body", "history", 0], ["query", "k"]')
    msg: str
    type: str


class ValidationErrors(BaseModel):
    """422: what was wrong with the request, one issue per problem."""

    detail: list[Issue]
