"""Load test of a running ``recsys serve`` on loopback: fixed time, fixed concurrency.

    python bench/load_api.py --run RUN --url http://127.0.0.1:8000 --seconds 20 \\
        --concurrency 8 --k 20

Each of ``--concurrency`` workers sends requests back to back until ``--seconds`` have
passed (or ``--max-requests`` were sent), drawing the endpoint from ``--mix`` and ids
from the run folder (known users, catalogue items, histories of 1-20 items). Prints JSON:
requests, errors (non-2xx or transport failures; 0 expected), throughput and latency
percentiles in milliseconds, overall and per endpoint. Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.artifacts import RunFolder  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        if name not in ("user", "similar", "history"):
            raise SystemExit(f"unknown endpoint {name!r} in --mix (user, similar, history)")
        mix[name] = float(weight or 1)
    return mix


async def worker(client, deadline, budget, mix, users, items, k, rng, out) -> None:
    names, weights = list(mix), list(mix.values())
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        kind = rng.choices(names, weights)[0]
        if kind == "user":
            req = client.build_request(
                "GET", f"/v1/users/{rng.choice(users)}/recommendations", params={"k": k}
            )
        elif kind == "similar":
            req = client.build_request(
                "GET", f"/v1/items/{rng.choice(items)}/similar", params={"k": k}
            )
        else:
            history = rng.sample(items, rng.randint(1, 20))
            req = client.build_request(
                "POST", "/v1/recommendations", json={"history": history, "k": k}
            )
        start = time.perf_counter()
        try:
            resp = await client.send(req)
            ok = 200 <= resp.status_code < 300
            status = str(resp.status_code)
        except httpx.HTTPError as err:
            ok, status = False, type(err).__name__
        out.append((kind, time.perf_counter() - start, ok, status))


def summarise(samples: list[tuple[str, float, bool, str]], seconds: float) -> dict:
    def stats(rows) -> dict:
        lat = np.array([r[1] for r in rows]) * 1e3
        errors = [r[3] for r in rows if not r[2]]
        return {
            "requests": len(rows),
            "errors": len(errors),
            "error_statuses": {s: errors.count(s) for s in sorted(set(errors))},
            "rps": round(len(rows) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p90_ms": round(float(np.percentile(lat, 90)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "max_ms": round(float(lat.max()), 2) if len(lat) else None,
        }

    out = stats(samples)
    out["by_endpoint"] = {
        kind: stats([r for r in samples if r[0] == kind])
        for kind in sorted({r[0] for r in samples})
    }
    return out


async def run_load(args) -> dict:
    run = RunFolder(Path(args.run))
    users = [str(u) for u in run.user_map().ids]
    items = [str(i) for i in run.item_map().ids]
    mix = parse_mix(args.mix)
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=30) as client:
        ready = await client.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"server not ready: {ready.status_code} {ready.text}")
        # Warm-up (not measured): first requests pay for connection setup and lazy imports.
        for _ in range(min(20, args.max_requests)):
            await client.get(f"/v1/users/{users[0]}/recommendations", params={"k": args.k})
        samples: list = []
        budget = [args.max_requests]
        start = time.perf_counter()
        deadline = start + args.seconds
        await asyncio.gather(
            *(
                worker(
                    client,
                    deadline,
                    budget,
                    mix,
                    users,
                    items,
                    args.k,
                    random.Random(args.seed + n),
                    samples,
                )
                for n in range(args.concurrency)
            )
        )
        elapsed = time.perf_counter() - start
        server = (await client.get("/readyz")).json()
    result = {
        "url": args.url,
        "seconds": round(elapsed, 2),
        "concurrency": args.concurrency,
        "k": args.k,
        "mix": mix,
        "index": server.get("index"),
        "n_items": server.get("n_items"),
    }
    result.update(summarise(samples, elapsed))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run folder the server serves (ids)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--mix", default="user:6,similar:3,history:1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    host = urlparse(args.url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load-test {host!r}: loopback only (127.0.0.1)")
    if not 0 < args.seconds <= 600 or not 1 <= args.concurrency <= 256:
        raise SystemExit("--seconds must lie in (0, 600], --concurrency in [1, 256]")
    print(json.dumps(asyncio.run(run_load(args)), indent=2))


if __name__ == "__main__":
    main()
