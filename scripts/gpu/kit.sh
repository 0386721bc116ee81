#!/usr/bin/env bash
# Build .gpu-kit/ here (no GPU needed): what scripts/gpu/run.sh needs on a lent GPU machine,
# which has Python 3.12 with torch but nothing can be fetched there. Run from the repo root:
#   scripts/gpu/kit.sh        (about a minute, plus mint-s's CPU build, ~4 min, if not built yet)
# then, through the device tool: command "bash scripts/gpu/run.sh", carry [".gpu-kit"].
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.gpu-kit
PY=.venv/bin/python
test -x "$PY" || { echo "run 'make install' first" >&2; exit 1; }
rm -rf "$KIT/wheels" && mkdir -p "$KIT/wheels" "$KIT/bases"

# Versions as this checkout's virtualenv has them (the suite passes on exactly these);
# torch, tokenizers, safetensors, numpy, huggingface_hub (1.x there: transformers takes
# it) and the rest come from the GPU machine's image (its list: the device tool's KINDS.md).
wanted=(django asgiref sqlparse dj-database-url plotly narwhals django-htmx whitenoise
        celery kombu billiard vine amqp click click-didyoumean click-plugins click-repl
        prompt_toolkit wcwidth tzlocal redis transformers peft regex)
pins=()
for name in "${wanted[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  test -n "$version" || { echo "$name is not installed in .venv" >&2; exit 1; }
  pins+=("$name==$version")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/wheels" "${pins[@]}"

# mint-s, pretrained here once (the same recipe gives the same weights), so the GPU's
# minutes go to measuring rather than building.
var=${MINT_VAR_DIR:-var}
if [ ! -d "$var/bases/mint-s" ]; then
  MINT_VAR_DIR="$var" "$PY" manage.py migrate -v0
  MINT_VAR_DIR="$var" "$PY" manage.py build_base_family --sizes mint-s
fi
rm -rf "$KIT/bases/mint-s" && cp -r "$var/bases/mint-s" "$KIT/bases/"
du -sh "$KIT"/* "$KIT"  # .gitignore keeps it out of commits; the device tool carries it
