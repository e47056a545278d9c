#!/usr/bin/env bash
# Build `recsys report` for run folders and take a screenshot of it with headless Chromium.
#
#   bench/screenshot_report.sh OUT.png RUN [RUN ...]
#
# Environment: RECSYS (default .venv/bin/recsys), PYTHON (default .venv/bin/python),
# CHROMIUM (default chromium), WIDTH x HEIGHT of the window (default 1280 x 4000),
# HTML_OUT (also keep the report there), MAX_BYTES (default 1000000: the PNG is reduced
# to a 256-colour palette, then scaled down, until it fits).  Chromium runs offline:
# no network, no first-run, background, component-update or sync traffic.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 OUT.png RUN [RUN ...]" >&2
    exit 2
fi
out=$1
shift
RECSYS=${RECSYS:-.venv/bin/recsys}
PYTHON=${PYTHON:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-chromium}
WIDTH=${WIDTH:-1280}
HEIGHT=${HEIGHT:-4000}
MAX_BYTES=${MAX_BYTES:-1000000}
command -v "$CHROMIUM" >/dev/null || {
    echo "$CHROMIUM not found (Debian/Ubuntu: apt-get install -y chromium)" >&2
    exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$RECSYS" report "$@" --out "$work/report.html"
if [ -n "${HTML_OUT:-}" ]; then
    cp "$work/report.html" "$HTML_OUT"
fi
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$(mktemp -d -p "$work")" \
    --screenshot="$work/shot.png" --window-size="$WIDTH,$HEIGHT" \
    "file://$work/report.html" 2>"$work/chromium.log" || {
    cat "$work/chromium.log" >&2
    exit 1
}
test -s "$work/shot.png" || { cat "$work/chromium.log" >&2; exit 1; }

"$PYTHON" - "$work/shot.png" "$out" "$MAX_BYTES" <<'PY'
import io
import sys
from pathlib import Path

from PIL import Image

src, dst, max_bytes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
image = Image.open(src).convert("RGB")
scale = 1.0
while True:
    size = (round(image.width * scale), round(image.height * scale))
    frame = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    # FASTOCTREE keeps the plots' few saturated colours apart better than median cut.
    palette = frame.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    palette.save(buffer, format="PNG", optimize=True)
    if buffer.tell() <= max_bytes or scale < 0.3:
        break
    scale *= 0.85
dst.parent.mkdir(parents=True, exist_ok=True)
dst.write_bytes(buffer.getvalue())
print(f"wrote {dst}: {size[0]}x{size[1]}, {buffer.tell()} bytes")
PY
