#!/usr/bin/env bash
# Checks everything under deploy/ with the tools scripts/bootstrap.sh --test installs;
# no network, no Docker engine, no cluster, no bard binary. One line per check,
# the failing check's output under it, a closing "N passed, N failed" line;
# exits 1 if any check failed.
#
#   systemd     systemd-analyze verify of the three units (in a scratch root with a stub
#               bard, so the ExecStart check passes only for the path the units
#               name), any warning counts as a failure; the variables the units
#               use have defaults and match bard.env.example; systemd-analyze
#               security --offline exposure at most 2.0
#   kubernetes  kustomization lists every manifest, `kubectl kustomize` renders it,
#               every object validates against the Kubernetes 1.29 and newest
#               schemas bundled by kubernetes-validate (strict), and the objects agree
#               (deploy/checks/kubernetes.py)
#   shell       bash -n and shellcheck on bard.sbatch and deploy's own scripts
#   slurm       bard.sbatch run with fake scontrol/srun/bard (deploy/checks/slurm.sh)
#   hadolint    hadolint on deploy/container/Dockerfile
#   container   the Dockerfile agrees with scripts/bootstrap.sh and the layout the
#               other engines expect (deploy/checks/container.py)
#   layout      a README.md in deploy/ and each engine folder
#
#   deploy/check.sh [CHECK...]    (default: all)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-python3}
# Tools installed from PyPI live in the interpreter's scripts directory.
PATH=$PATH:$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
export PATH PYTHON

scratch=$(mktemp -d "${TMPDIR:-/tmp}/bard-deploy-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

need() {
    local t
    for t in "$@"; do
        [[ -x $(command -v "$t") ]] || { echo "$t not found: run scripts/bootstrap.sh --test"; return 1; }
    done
}

check_systemd() {
    need systemd-analyze || return 1
    local src=deploy/systemd root=$scratch/systemd-root units=(bard-coordinator.service bard-worker@.service bard-shard@.service)
    mkdir -p "$root/etc/systemd/system" "$root/etc/bard" "$root/usr/lib/systemd"
    # The distribution's units (sysinit.target, network-online.target, ...) that
    # ours depend on, as on a real host.
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    ln -s usr/lib "$root/lib"
    cp "$src/bard.env.example" "$root/etc/bard/bard.env"
    local u exe out rc=0
    for u in "${units[@]}"; do
        cp "$src/$u" "$root/etc/systemd/system/"
        # A stub at the path ExecStart names (the real binary is not built here).
        exe=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$src/$u")
        [[ $exe == /* ]] || { echo "$u: ExecStart must be an absolute path"; return 1; }
        mkdir -p "$root$(dirname "$exe")"
        printf '#!/bin/sh\nexit 0\n' >"$root$exe"
        chmod 755 "$root$exe"
    done
    out=$(systemd-analyze verify --root="$root" --man=no --generators=no \
        bard-coordinator.service bard-worker@0.service bard-shard@5601.service \
        "$root/etc/systemd/system/bard-worker@.service" "$root/etc/systemd/system/bard-shard@.service" 2>&1) || rc=1
    # verify exits 0 on unknown keys and unparsable values; they are errors here.
    if [[ -n $out ]]; then echo "${out//$root/}"; rc=1; fi

    # Every variable a unit uses has a default in it; bard.env.example sets only
    # variables the units use.
    local used all_used="" v
    for u in "${units[@]}"; do
        used=$(grep -o "[$]{\?BARD_[A-Z_]*" "$src/$u" | tr -d '{$' | sort -u | tr '\n' ' ')
        all_used+=" $used"
        for v in $used; do
            grep -q "^Environment=$v=" "$src/$u" || { echo "$u uses \$$v but has no Environment=$v= default"; rc=1; }
        done
    done
    while read -r v; do
        [[ " $all_used " == *" $v "* ]] || { echo "bard.env.example sets $v, which no unit uses"; rc=1; }
    done < <(sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$src/bard.env.example")

    local level summary=""
    for u in bard-coordinator.service bard-worker@0.service bard-shard@5601.service; do
        out=$(systemd-analyze security --offline=yes --root="$root" --threshold=20 --no-pager "$u" 2>&1) ||
            { echo "${out//$root/}"; rc=1; continue; }
        level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        summary+=" $u ${level:-?}"
        if [[ -z $level ]] || ! awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'; then
            echo "$u: security exposure ${level:-unknown} above 2.0"; rc=1
        fi
    done
    ((rc == 0)) && echo "${#units[@]} units verified; exposure:$summary"
    return $rc
}

check_kubernetes() {
    need kubectl || return 1
    "$PYTHON" deploy/checks/kubernetes.py deploy/kubernetes
}

check_shell() {
    need shellcheck || return 1
    local f rc=0 files=(deploy/slurm/bard.sbatch deploy/check.sh deploy/checks/slurm.sh)
    for f in "${files[@]}"; do
        bash -n "$f" || rc=1
    done
    shellcheck --shell=bash "${files[@]}" || rc=1
    ((rc == 0)) && echo "${#files[@]} scripts: bash -n and shellcheck clean"
    return $rc
}

check_slurm() {
    need pgrep timeout || return 1
    bash deploy/checks/slurm.sh
}

check_hadolint() {
    need hadolint || return 1
    hadolint --no-color deploy/container/Dockerfile && echo "$(hadolint --version): no findings"
}

check_container() {
    "$PYTHON" deploy/checks/container.py .
}

check_layout() {
    local d rc=0
    for d in deploy deploy/systemd deploy/kubernetes deploy/slurm deploy/container; do
        [[ -s $d/README.md ]] || { echo "$d/README.md missing"; rc=1; }
    done
    ((rc == 0)) && echo "README.md in deploy/ and each engine folder"
    return $rc
}

all=(systemd kubernetes shell slurm hadolint container layout)
checks=("$@")
((${#checks[@]})) || checks=("${all[@]}")
passed=0 failed=0
for c in "${checks[@]}"; do
    if ! declare -F "check_$c" >/dev/null; then
        echo "unknown check $c (known: ${all[*]})" >&2
        exit 2
    fi
    start=$SECONDS
    if out=$("check_$c" 2>&1); then
        passed=$((passed + 1))
        printf 'ok    %-10s %s (%ds)\n' "$c" "$(tail -n 1 <<<"$out")" $((SECONDS - start))
    else
        failed=$((failed + 1))
        printf 'FAIL  %-10s (%ds)\n' "$c" $((SECONDS - start))
        printf '      %s\n' "${out//$'\n'/$'\n'      }"
    fi
done
echo "deploy: $passed passed, $failed failed"
((failed == 0))
