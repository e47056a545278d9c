"""New items' content as serving receives it, and the run's content encoder.

The encoder format (``RUN/item_encoder/``: its loader registry, :func:`load_item_encoder`,
:func:`content_fields`) lives in :mod:`recsys.item_encoder`, beside the run-folder
format, so that the models that write and register encoders never import serving; it is
re-exported here for serving's callers.
"""

from __future__ import annotations

import pandas as pd

from recsys.errors import DataError
from recsys.item_encoder import (
    EncoderLoader,
    ItemContentEncoder,
    content_fields,
    encoder_dir,
    load_item_encoder,
    register_item_encoder,
)
from recsys.serve.schemas import ItemContent

__all__ = [
    "EncoderLoader",
    "ItemContentEncoder",
    "content_fields",
    "content_frame",
    "encoder_dir",
    "load_item_encoder",
    "register_item_encoder",
]


def content_frame(items: list[ItemContent]) -> pd.DataFrame:
    """One row per item: ``item_id``, ``image_path`` and one column per text / tabular
    field (by field name). A field name used twice, or named like those two, is an error."""
    rows = []
    for item in items:
        row: dict[str, object] = {"item_id": item.item_id, "image_path": item.image_path}
        for name, value in [*item.text.items(), *item.tabular.items()]:
            if name in row:
                raise DataError(f"item {item.item_id!r}: field {name!r} is given twice")
            row[name] = value
        rows.append(row)
    return pd.DataFrame(rows)
