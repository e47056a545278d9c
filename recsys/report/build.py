"""``recsys report``: one self-contained HTML file describing one or more run folders.

Sections (each an element with an ``id``): ``runs``, ``metrics``, ``curves``,
``semantic-ids``, ``projection``, ``examples``.  Plots are PNG images embedded as base64
``data:`` URIs and the styles are inline, so the file opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError
from recsys.io import atomic_write_text
from recsys.report import plots
from recsys.report.data import (
    code_columns,
    item_categories,
    item_codes,
    item_popularity,
    pick_users,
    read_curves,
    user_examples,
)
from recsys.report.inspect import (
    inspect_semantic_ids,
    prefix_groups,
    row_labels,
    row_popularity,
)

SECTIONS = ("runs", "metrics", "curves", "semantic-ids", "projection", "examples")
TEST_COLUMNS = ("ndcg@10", "recall@10", "recall@20", "ndcg@20", "hr@10", "mrr", "coverage@20")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px;
       color: #222; font-size: 15px; line-height: 1.45; max-width: 1400px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 21px; border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 17px; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.note { color: #666; font-style: italic; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0 18px; }
.cols { display: flex; flex-wrap: wrap; gap: 28px; }
.cols > div { flex: 1 1 380px; min-width: 340px; }
ol, ul { margin-top: 2px; padding-left: 26px; } li { margin: 1px 0; }
.hit { color: #0a7d2c; font-weight: bold; }
code { background: #f5f5f5; padding: 0 3px; }
"""


@dataclass
class _Run:
    name: str
    folder: RunFolder
    manifest: dict
    metrics: dict


def _esc(value: object) -> str:
    return html.escape(str(value))


def _img(fig, alt: str) -> str:
    data = base64.b64encode(plots.figure_png(fig)).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _load(paths: Sequence[str | Path]) -> list[_Run]:
    runs, names = [], set()
    for path in paths:
        folder = RunFolder(Path(path))
        manifest = folder.manifest()  # a complete run of a compatible format
        name = folder.root.name
        if name in names:
            name = f"{folder.root.parent.name}/{name}"
        names.add(name)
        runs.append(_Run(name, folder, manifest, folder.metrics()))
    if not runs:
        raise ArtifactError("no run folders given")
    return runs


def _fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _esc(value)


def _runs_section(runs: list[_Run]) -> str:
    rows = []
    for r in runs:
        m = r.manifest
        rows.append(
            f'<tr><td class="name">{_esc(r.name)}</td><td class="name">{_esc(m.get("model"))}</td>'
            f'<td class="name">{_esc(m.get("dataset"))}</td><td class="name">'
            f"{_esc(m.get('split'))}</td><td>{_fmt(m.get('n_users'))}</td>"
            f'<td>{_fmt(m.get("n_items"))}</td><td class="name">{_esc(m.get("created", ""))}</td>'
            f'<td class="name"><code>{_esc(r.folder.root)}</code></td></tr>'
        )
    head = "".join(
        f'<th class="name">{h}</th>' if i in (0, 1, 2, 3, 6, 7) else f"<th>{h}</th>"
        for i, h in enumerate(
            ("run", "model", "dataset", "split", "users", "items", "created", "folder")
        )
    )
    return (
        f'<section id="runs"><h2>Runs</h2><table><tr>{head}</tr>{"".join(rows)}</table></section>'
    )


def _metrics_section(runs: list[_Run]) -> str:
    columns = [("test", c, c) for c in TEST_COLUMNS] + [
        ("valid", "ndcg@10", "ndcg@10"),
        ("training", "epochs", "epochs"),
        ("training", "best_epoch", "best epoch"),
        ("training", "train_seconds", "seconds"),
    ]
    values = [[r.metrics.get(part, {}).get(key) for part, key, _ in columns] for r in runs]
    # Bold the best of each metric only among runs of the same dataset and protocol:
    # numbers of different protocols (loo vs cold-10) are not comparable.
    protocol = [(r.metrics.get("dataset"), r.metrics.get("split")) for r in runs]
    bold = np.zeros((len(runs), len(columns)), dtype=bool)
    for group in set(protocol):
        members = [i for i, p in enumerate(protocol) if p == group]
        if len(members) < 2:
            continue
        for j, (part, _, _) in enumerate(columns):
            col = {i: values[i][j] for i in members if isinstance(values[i][j], int | float)}
            if part != "training" and len(col) > 1:
                top = max(col.values())
                for i, v in col.items():
                    bold[i, j] = v == top
    head = '<th class="name">run</th>' + "".join(
        f"<th>{_esc('' if part == 'training' else part)} {_esc(label)}</th>"
        for part, _, label in columns
    )
    rows = []
    for i, (r, vals) in enumerate(zip(runs, values, strict=True)):
        cells = []
        for j, v in enumerate(vals):
            text = _fmt(v, 1 if columns[j][1] == "train_seconds" else 4)
            cells.append(f"<td><b>{text}</b></td>" if bold[i, j] else f"<td>{text}</td>")
        rows.append(f'<tr><td class="name">{_esc(r.name)}</td>{"".join(cells)}</tr>')
    missing = [r.name for r in runs if "test" not in r.metrics]
    note = _note(f"no test metrics in metrics.json: {', '.join(missing)}") if missing else ""
    if len(set(protocol)) > 1:
        note += _note(
            "these runs use different datasets or protocols ("
            + ", ".join(sorted({f"{d} {s}" for d, s in protocol}))
            + "): compare numbers only within one"
        )
    return (
        '<section id="metrics"><h2>Metrics</h2>'
        "<p>From each run's <code>metrics.json</code> (the best checkpoint). Bold: the best"
        " value of a metric among the runs of the same dataset and protocol. <code>seconds"
        "</code>: training wall time.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}</section>"
    )


def _curves_section(runs: list[_Run]) -> tuple[str, dict]:
    parts, all_curves = [], {}
    for r in runs:
        curves = read_curves(r.folder)
        if curves is None:
            parts.append(
                f"<h3>{_esc(r.name)}</h3>"
                + _note(
                    "no training curves (logs/metrics.csv is absent: this model is not trained"
                    " by gradient descent)"
                )
            )
            continue
        all_curves[r.name] = curves
        parts.append(
            f"<h3>{_esc(r.name)}</h3>"
            + _img(
                plots.plot_curves(
                    curves, best_epoch=r.metrics.get("training", {}).get("best_epoch")
                ),
                f"training curves of {r.name}",
            )
        )
    across = plots.plot_metric_across_runs(all_curves)
    if across is not None:
        parts.insert(0, _img(across, "validation NDCG@10 of every run"))
    intro = (
        "<p>Per epoch, from <code>logs/metrics.csv</code>: training series solid, validation"
        " dashed, the best epoch (metrics.json) dotted; one panel per loss term and per metric"
        " family.</p>"
    )
    return (
        f'<section id="curves"><h2>Training curves</h2>{intro}{"".join(parts)}</section>',
        all_curves,
    )


def _sid_section(runs: list[_Run]) -> str:
    parts = []
    for r in runs:
        if r.folder.semantic_ids("items") is None:
            parts.append(f"<h3>{_esc(r.name)}</h3>" + _note("no semantic IDs in this run"))
            continue
        table, s = inspect_semantic_ids(r.folder, "items")
        codes = table[code_columns(table)]
        sizes = [lv.codebook_size for lv in s.levels]
        text = (
            f"<p>{s.n} items, {len(sizes)} levels, codebook size {'/'.join(map(str, sizes))}"
            f" ({_esc(s.codebook_size_source)}). Before disambiguation <b>{s.n_colliding}</b>"
            f" items ({100 * s.collision_rate:.2f}%) share their codes with another item;"
            f" {s.n_unique_ids} distinct code tuples; at most {s.max_rows_per_id} items per"
            " ID.</p>"
        )
        if s.disagreements:
            text += _note("stats.json disagrees with the codes: " + "; ".join(s.disagreements))
        fig = plots.plot_code_usage(codes.to_numpy(), sizes)
        parts.append(f"<h3>{_esc(r.name)}</h3>{text}{_img(fig, f'code usage of {r.name}')}")
    return f'<section id="semantic-ids"><h2>Semantic IDs: code usage</h2>{"".join(parts)}</section>'


def _projection_section(runs: list[_Run], max_points: int, tsne: bool, seed: int) -> str:
    parts = []
    for r in runs:
        _, items = r.folder.embeddings()
        n = len(items)
        if items.ndim != 2 or items.shape[1] < 2 or n < 3:
            parts.append(
                f"<h3>{_esc(r.name)}</h3>"
                + _note(f"item embeddings of shape {items.shape}: nothing to project in 2-D")
            )
            continue
        rng = np.random.default_rng(seed)
        sample = (
            np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
        )
        codes = item_codes(r.folder)
        categories = item_categories(r.folder)
        if codes is not None:
            values = np.array(
                [f"c0={c}" if c >= 0 else None for c in codes[sample, 0]], dtype=object
            )
            colour, categorical, label = values, True, "first semantic-ID code"
        elif categories is not None:
            colour, categorical = categories[1][sample], True
            label = f"first of {categories[0]}"
        else:
            colour = np.log1p(item_popularity(r.folder)[sample])
            categorical, label = False, "log(1 + training interactions)"
        methods = ["pca", "tsne"] if tsne else ["pca"]
        figs = []
        for method in methods:
            xy, axes = plots.project(items[sample], method, seed)
            title = (
                f"{r.name}: {method.upper() if method == 'pca' else 't-SNE'} of"
                f" {len(sample)} of {n} items"
            )
            figs.append(
                _img(
                    plots.plot_projection(xy, colour, categorical, label, axes, title),
                    f"{method} projection of {r.name}",
                )
            )
        parts.append(f"<h3>{_esc(r.name)}</h3><p>Colour: {_esc(label)}.</p>{''.join(figs)}")
    return (
        '<section id="projection"><h2>Item embeddings in 2-D</h2>'
        f"<p>Items sampled deterministically (seed {seed}, at most {max_points}).</p>"
        f"{''.join(parts)}</section>"
    )


def _list(items: Sequence[str]) -> str:
    """An unordered list of already escaped HTML snippets."""
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _examples_section(runs: list[_Run], n_users: int, k: int, n_prefixes: int) -> str:
    parts = []
    for r in runs:
        block = [f"<h3>{_esc(r.name)}</h3>"]
        if r.folder.semantic_ids("items") is not None:
            table, _ = inspect_semantic_ids(r.folder, "items")
            cols = code_columns(table)
            depth = min(2, len(cols))
            labels = row_labels(r.folder, table, "items")
            popularity = row_popularity(r.folder, table, "items")
            groups = prefix_groups(table[cols].to_numpy(), depth, n_prefixes, popularity)
            cells = []
            for g in groups:
                shown = [_esc(labels[i]) for i in g.rows[:10]]
                if g.size > 10:
                    shown.append(f"<i>… and {g.size - 10} more</i>")
                cells.append(f"<div><b>prefix {g.label}</b> ({g.size} items){_list(shown)}</div>")
            block.append(
                f"<p>Items sharing the most populated {depth}-level prefixes (the most"
                " interacted with first):</p>"
                f'<div class="cols">{"".join(cells)}</div>'
            )
        users = pick_users(r.folder, n_users)
        cands = r.folder.candidates("test")
        scope = " among the test candidates" if cands is not None else ""
        block.append(
            f"<p>Users (evenly spaced over the ids), their train+valid history (most"
            f" recent last) and top-{k}{scope} by <code>users @ items.T</code> with the"
            f' history masked; <span class="hit">bold green</span>: a held-out test'
            " item.</p>"
        )
        cells = []
        for ex in user_examples(r.folder, users, k=k):
            earlier = ex.n_history - len(ex.history)
            hist = ([f"<li><i>… {earlier} earlier</i></li>"] if earlier else []) + [
                f"<li>{_esc(t)}</li>" for t in ex.history
            ]
            recs = [
                f'<li class="hit">{_esc(rec.title)}</li>'
                if rec.held_out
                else f"<li>{_esc(rec.title)}</li>"
                for rec in ex.recommendations
            ]
            cells.append(
                f"<div><b>user {_esc(ex.user_id)}</b> ({ex.n_history} items seen)"
                f"<br>history:<ul>{''.join(hist)}</ul>top-{k}:<ol>{''.join(recs)}</ol></div>"
            )
        block.append(f'<div class="cols">{"".join(cells)}</div>')
        parts.append("".join(block))
    return f'<section id="examples"><h2>Examples</h2>{"".join(parts)}</section>'


def render_report(
    paths: Sequence[str | Path],
    *,
    max_points: int = 5000,
    tsne: bool = False,
    n_users: int = 3,
    k: int = 10,
    n_prefixes: int = 3,
    seed: int = 0,
) -> str:
    """The report's HTML text for the run folders ``paths``."""
    runs = _load(paths)
    curves, _ = _curves_section(runs)
    body = [
        _runs_section(runs),
        _metrics_section(runs),
        curves,
        _sid_section(runs),
        _projection_section(runs, max_points, tsne, seed),
        _examples_section(runs, n_users, k, n_prefixes),
    ]
    title = "recsys report: " + ", ".join(r.name for r in runs)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="note">generated {stamp}</p>'
        + "\n".join(body)
        + "</body></html>\n"
    )


def build_report(paths: Sequence[str | Path], out: str | Path, **options) -> Path:
    """Write :func:`render_report` to ``out`` (atomically) and return its path."""
    text = render_report(paths, **options)
    out = Path(out)
    atomic_write_text(out, text)
    return out
