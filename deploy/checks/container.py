#!/usr/bin/env python3
"""What hadolint cannot know about deploy/container/Dockerfile (run by deploy/check.sh).

- Two stages: a swift:6.3-bookworm build stage and a debian:bookworm-slim runtime.
- The build stage apt-installs every package of scripts/bootstrap.sh's APT_PACKAGES
  (so the image builds the way the project is built here) and builds with
  `swift build -c release --static-swift-stdlib`.
- The runtime stage installs libopenblas0, libzmq5 and ca-certificates, runs as a
  numeric non-root USER, has ENTRYPOINT ["bard"], EXPOSE 5555 9464, VOLUME /var/lib/bard.
- Every COPY source of the build stage that is a path exists in the repository, and
  Dockerfile.dockerignore does not exclude what the build needs.

Usage: container.py REPO_ROOT   Prints one line per problem; exits 1 if any.
"""
import fnmatch
import json
import os
import re
import shlex
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
dockerfile = os.path.join(root, "deploy/container/Dockerfile")
problems = []


def instructions(path):
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out, cur = [], ""
    with open(path) as f:
        for line in f:
            s = line.rstrip("\n")
            if not cur and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if cur and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def bootstrap_apt_packages():
    with open(os.path.join(root, "scripts/bootstrap.sh")) as f:
        m = re.search(r"^APT_PACKAGES=\(([^)]*)\)", f.read(), re.M)
    if not m:
        problems.append("scripts/bootstrap.sh has no APT_PACKAGES=(...) line")
        return []
    return m.group(1).split()


def apt_installed(runs):
    pkgs = set()
    for run in runs:
        for m in re.finditer(r"apt-get install ([^&;|]*)", run):
            pkgs.update(w for w in m.group(1).split() if not w.startswith("-"))
    return pkgs


stages = []
for word, rest in instructions(dockerfile):
    if word == "FROM":
        stages.append({"from": rest, "items": []})
    elif stages:
        stages[-1]["items"].append((word, rest))

if len(stages) != 2:
    problems.append(f"expected 2 stages (build, runtime), found {len(stages)}")
else:
    build, runtime = stages
    if not re.fullmatch(r"swift:6\.3-bookworm AS build", build["from"], re.I):
        problems.append(f"build stage is FROM {build['from']}, expected swift:6.3-bookworm AS build")
    if runtime["from"] != "debian:bookworm-slim":
        problems.append(f"runtime stage is FROM {runtime['from']}, expected debian:bookworm-slim")

    build_runs = [r for w, r in build["items"] if w == "RUN"]
    missing = [p for p in bootstrap_apt_packages() if p not in apt_installed(build_runs)]
    if missing:
        problems.append(f"build stage does not install scripts/bootstrap.sh's {' '.join(missing)}")
    if not any("swift build -c release --static-swift-stdlib" in r for r in build_runs):
        problems.append("build stage does not run swift build -c release --static-swift-stdlib")

    rt = runtime["items"]
    missing = {"libopenblas0", "libzmq5", "ca-certificates"} - apt_installed(r for w, r in rt if w == "RUN")
    if missing:
        problems.append(f"runtime stage does not install {' '.join(sorted(missing))}")
    users = [r for w, r in rt if w == "USER"]
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
        problems.append("runtime stage must end as a numeric non-root USER (Kubernetes runAsNonRoot checks it)")
    entry = [r for w, r in rt if w == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["bard"]:
        problems.append('ENTRYPOINT must be ["bard"]')
    exposed = {p for w, r in rt if w == "EXPOSE" for p in r.split()}
    if not {"5555", "9464"} <= exposed:
        problems.append("EXPOSE must list 5555 and 9464")
    if not any(w == "VOLUME" and "/var/lib/bard" in r for w, r in rt):
        problems.append("VOLUME /var/lib/bard missing")

    # COPY sources from the context must exist and survive the .dockerignore.
    ignore_path = dockerfile + ".dockerignore"
    patterns = []
    if os.path.exists(ignore_path):
        with open(ignore_path) as f:
            patterns = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    else:
        problems.append("deploy/container/Dockerfile.dockerignore missing")
    needed = ["Package.swift", "Sources", "scripts/get-corpus.sh"]
    for w, r in build["items"]:
        if w == "COPY" and not r.startswith("--from"):
            *srcs, _dest = shlex.split(r)
            for s in srcs:
                if s != "." and not os.path.exists(os.path.join(root, s)):
                    problems.append(f"COPY source {s} does not exist")
    for path in needed:
        for pat in patterns:
            if fnmatch.fnmatch(path, pat) or path.startswith(pat.rstrip("/") + "/"):
                problems.append(f"Dockerfile.dockerignore pattern {pat!r} excludes {path}, which the build needs")

for p in problems:
    print(p)
if not problems:
    print("2 stages consistent with scripts/bootstrap.sh (" + " ".join(bootstrap_apt_packages()) + ")")
sys.exit(1 if problems else 0)
