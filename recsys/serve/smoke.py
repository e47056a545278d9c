"""Query every endpoint of a running ``recsys serve`` once and print the answers.

    python -m recsys.serve.smoke --run RUN --url http://127.0.0.1:8000

Ids come from the run folder: its most active user, a history of three of the most
interacted-with items, and a new item whose content copies the most popular item's
fields (the ones the run's encoder reads) under a fresh id: its semantic ID and its
nearest catalogue items show an item with no interactions being placed. Exits 1 when an
endpoint answers anything but 2xx (``/v1/items`` may answer 501 for a run without a
content encoder, and the semantic-ID route 404 for a run without semantic IDs: both are
reported and allowed). Standard library only, so it runs anywhere the run folder is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from recsys.artifacts import RunFolder
from recsys.item_encoder import content_fields


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def _value(value: Any) -> Any:
    """A catalogue cell as a JSON content value (lists joined as multi-valued strings)."""
    if isinstance(value, list | tuple | np.ndarray):
        return "|".join(str(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def new_item(run: RunFolder, popular: str) -> dict[str, Any]:
    """A new item: the popular item's content fields under a fresh id and title."""
    text_fields, tabular_fields = content_fields(run)
    items = run.items()
    row: dict[str, Any] = {}
    if items is not None and "item_id" in items.columns:
        match = items[items["item_id"].astype(str) == popular]
        row = match.iloc[0].to_dict() if len(match) else {}
    body: dict[str, Any] = {"item_id": f"new-{time.time_ns()}", "text": {}, "tabular": {}}
    for field in text_fields:
        body["text"][field] = _value(row.get(field)) if field in row else None
    for field in tabular_fields:
        body["tabular"][field] = _value(row.get(field)) if field in row else None
    if "title" in body["text"] and isinstance(body["text"]["title"], str):
        body["text"]["title"] += " (a new item)"
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run folder the server serves")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args(argv)
    run = RunFolder(Path(args.run))
    frame = run.interactions()
    user_ids, item_ids = run.user_map().ids, run.item_map().ids
    user = str(user_ids[frame["user_idx"].value_counts().index[0]])
    popular = [str(item_ids[i]) for i in frame["item_idx"].value_counts().index[:3]]
    base, k = args.url.rstrip("/"), args.k
    quote = urllib.parse.quote
    item = new_item(run, popular[0])
    checks: list[tuple[str, str, Any, set[int]]] = [
        ("GET", "/healthz", None, set()),
        ("GET", "/readyz", None, set()),
        ("GET", f"/v1/users/{quote(user, safe='')}/recommendations?k={k}", None, set()),
        ("POST", "/v1/recommendations", {"history": popular, "k": k}, set()),
        ("GET", f"/v1/items/{quote(popular[0], safe='/')}/similar?k={k}", None, set()),
        ("GET", f"/v1/items/{quote(popular[0], safe='/')}/semantic-id", None, {404}),
        ("POST", "/v1/items", item, {501}),
        ("GET", f"/v1/items/{quote(item['item_id'], safe='/')}/similar?k={k}", None, {404}),
        ("GET", "/metrics", None, set()),
        ("GET", "/openapi.json", None, set()),
    ]
    failed = 0
    for method, path, body, allowed in checks:
        status, answer = call(base + path, method, body)
        ok = 200 <= status < 300 or status in allowed
        failed += not ok
        print(f"{'ok ' if ok else 'BAD'} {status} {method} {path}")
        if body is not None:
            print(f"      body: {json.dumps(body)[:300]}")
        if path == "/metrics":
            answer = f"{len(answer.splitlines())} lines of Prometheus text"
        elif path == "/openapi.json" and isinstance(answer, dict):
            answer = f"OpenAPI {answer.get('openapi')}: {sorted(answer.get('paths', {}))}"
        print(f"      {json.dumps(answer)[:400] if not isinstance(answer, str) else answer}")
    print(f"{len(checks) - failed} of {len(checks)} endpoints answered as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
