#!/usr/bin/env bash
# One entry point for a fresh machine with only Python >= 3.11 and git:
#   bash run.sh repro   # install into ./.venv (once) and run the main job: `dvc repro` (mini profile)
#   bash run.sh test    # install into ./.venv (once) and run the tests
# Both are idempotent: the install step is skipped while pyproject.toml and requirements/ are unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.12 python3.11 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) TORCH_REQ=requirements/torch-linux-x86_64.txt ;;
  *)            TORCH_REQ=requirements/torch-default.txt ;;
esac

VENV=.venv
STAMP="$VENV/.gramlib-install"
want="$( (cat pyproject.toml "$TORCH_REQ"; "$PY" --version) | cksum)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  echo "installing into $VENV (first run takes a few minutes) ..."
  "$VENV/bin/python" -m pip install --quiet --upgrade pip wheel
  # the torch pair first, then the project constrained to it, so nothing swaps torch behind our back
  "$VENV/bin/python" -m pip install --quiet -r "$TORCH_REQ"
  "$VENV/bin/python" -m pip install --quiet -c "$TORCH_REQ" -e ".[test]"
  "$VENV/bin/python" -c "import torch, torchvision, open_clip, bertopic, hdbscan, umap, dvc, papermill; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  echo "$want" > "$STAMP"
fi

export PATH="$PWD/$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd="${1:-}"; shift || true
case "$cmd" in
  repro) exec dvc repro "$@" ;;
  test)  exec python -m pytest "$@" ;;
  *) echo "usage: bash run.sh {repro|test} [extra args]" >&2; exit 2 ;;
esac
