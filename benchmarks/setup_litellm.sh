#!/usr/bin/env bash
# Creates the LiteLLM proxy virtual environment that benchmarks/overhead.py compares Thrifty against.
# It lives apart from Thrifty's own venv so neither project's pins affect the other.
# Usage: bash benchmarks/setup_litellm.sh [VERSION|latest]
# The default is the version benchmarks/results/overhead.json was measured with.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LITELLM_VENV:-$repo_root/.bench/litellm-venv}"
version="${1:-1.108.7}"
spec="litellm[proxy]==$version"
if [[ "$version" == "latest" ]]; then
    spec="litellm[proxy]"
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "$spec"
# LiteLLM's own production requirements (its Docker image) pin uvloop "for much better performance under
# load", but `pip install 'litellm[proxy]'` does not pull it in; install it so LiteLLM runs as it does in
# production. httptools is not in those requirements, so uvicorn parses HTTP with h11, as in LiteLLM's image.
"$venv/bin/python" -m pip install --quiet uvloop
"$venv/bin/python" -m pip show litellm | grep -E '^(Name|Version):'
