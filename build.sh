#!/usr/bin/env bash
# Entry point for everything: ./build.sh demo | test | check | lint | compile | images [--push REGISTRY] | setup
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${RECPIPE_VENV:-.venv}"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

log() { printf '\033[1m[build.sh]\033[0m %s\n' "$*" >&2; }

# pip, quiet, without the machine-specific "Location ... is ignored" find-links noise.
pipq() {
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -vE "^WARNING: Location '|WheelFile|^\s*!!\s*$|^\s*$|BuildBackendWarning|\*{20}|editable|auxiliary|build/__editable__|careful to not remove|import/use your package|corresp\(" || true; } >&2
  return "${PIPESTATUS[0]}"
}

setup() {
  if [ ! -x "$PY" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 required, got " + sys.version' \
      || { log "set PYTHON to a Python 3.11 interpreter"; exit 2; }
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall pinned dependencies only when the pins change.
  local stamp="$VENV/.recpipe-deps-$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing pinned dependencies (torch CPU first, then requirements*.txt)"
    pipq --upgrade pip "setuptools==84.2.1" wheel
    # The exact torch pin takes the CPU wheel; any other spec pulls CUDA packages.
    pipq "$(grep -E '^torch==' requirements.txt)"
    pipq -r requirements.txt -r requirements-dev.txt
    rm -f "$VENV"/.recpipe-deps-*
    touch "$stamp"
  fi
  # The package itself: an editable install whose link tree maps the top-level folders
  # (components/, pipelines/, serving/, validation/) into `recpipe.*`. Cheap; always redone
  # so new files are picked up.
  pipq --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
  "$PY" -c 'import recpipe.pipelines.training, recpipe.serving.server' \
    || { log "recpipe failed to import after install"; exit 1; }
}

# Debian packages the tests use: Prometheus (and promtool) for the rollout's PromQL against
# real series, Chromium to open every HTML report offline as a person would. Installed
# where apt-get works (root, as in CI); elsewhere the tests that need them skip and say why.
DEBIAN_PACKAGES=(prometheus chromium)
debian_packages() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "not installing ${missing[*]} (needs root and apt-get): the tests that use them skip"
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 \
    || log "apt-get could not install ${missing[*]}: the tests that use them skip"
}

cmd_demo() {
  setup
  log "running the main job: built-in data -> kfp.local pipeline -> KServe model server"
  "$VENV/bin/recpipe" demo --output "${DEMO_OUTPUT:-demo-output}" "$@"
}

# The fast tests wait more than they compute (servers starting, timeouts under test), so
# 4 workers beat 2 cores' worth; a module's tests stay on one worker (its module-scoped
# servers start once). PARALLEL= runs them in one process.
PARALLEL="${PARALLEL--n 4 --dist loadscope}"

lint() {
  log "ruff"
  "$VENV/bin/ruff" check .
  log "mypy"
  "$VENV/bin/mypy" --config-file pyproject.toml -p recpipe
  log "import contracts (lint-imports)"
  "$VENV/bin/lint-imports"
}

# The fast gate: lint, types, import contracts and every test not marked slow (< 2 min).
cmd_check() {
  setup
  debian_packages
  lint
  log "pytest (not slow)"
  "$VENV/bin/pytest" -q -m "not slow" $PARALLEL "$@"
}

# Everything (what CI runs: .ci/run): every test in parallel but the slow ones with latency
# budgets (model servers, infra validation inside whole pipelines, canary analyses: marked
# `serial` by tests/conftest.py), which then run one at a time, so that no latency bound
# measures its neighbours' load. --durations prints where the time went.
cmd_test() {
  setup
  debian_packages
  lint
  log "pytest (all but the latency-bound slow tests, in parallel)"
  "$VENV/bin/pytest" -q -m "not serial" $PARALLEL --durations=15 "$@"
  log "pytest (slow tests with latency budgets, one at a time)"
  "$VENV/bin/pytest" -q -m serial --durations=15 "$@" || [ $? -eq 5 ]  # 5: none selected
}

cmd_compile() {
  setup
  "$VENV/bin/recpipe" compile --output "${1:-compiled}"
}

cmd_images() {
  local push=""
  if [ "${1:-}" = "--push" ]; then push="${2:?--push needs a registry}"; fi
  if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers here (docker info failed): cannot build images."
    log "Run ./build.sh images on a machine with Docker; nothing else depends on it."
    exit 3
  fi
  setup
  local registry="${push:-${RECPIPE_IMAGE_REGISTRY:-ghcr.io/recpipe}}"
  local tag
  tag="$("$PY" -c 'from recpipe.core.images import build_settings; print(build_settings().tag)')"
  log "building images $registry/recpipe-{components,trainer,predictor}:$tag"
  local version
  version="$("$PY" -c 'from recpipe.core.images import build_settings; print(build_settings().code_version)')"
  docker build -f components/Dockerfile --build-arg RECPIPE_CODE_VERSION="$version" \
    -t "$registry/recpipe-components:$tag" .
  docker build -f components/Dockerfile --build-arg RECPIPE_CODE_VERSION="$version" \
    --build-arg TORCH_INDEX_URL= -t "$registry/recpipe-trainer:$tag" .
  docker build -f serving/Dockerfile --build-arg RECPIPE_CODE_VERSION="$version" \
    -t "$registry/recpipe-predictor:$tag" .
  if [ -n "$push" ]; then
    for image in components trainer predictor; do docker push "$registry/recpipe-$image:$tag"; done
  fi
}

case "${1:-}" in
  setup) setup ;;
  demo) shift; cmd_demo "$@" ;;
  test) shift; cmd_test "$@" ;;
  check) shift; cmd_check "$@" ;;
  lint) setup; lint ;;  # ruff, mypy, import contracts: CI's first gate (.github/workflows)
  compile) shift; cmd_compile "$@" ;;
  images) shift; cmd_images "$@" ;;
  *) echo "usage: ./build.sh {demo|test|check|lint|compile|images [--push REGISTRY]|setup}" >&2; exit 2 ;;
esac
