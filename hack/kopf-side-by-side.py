#!/usr/bin/env python3
"""celery-operator beside the Python (Kopf) operator it replaces, on that operator's own resources.

    hack/kopf-side-by-side.py PYTHON_OPERATOR_CHECKOUT [--apps 100] [--runs 3] [--window 60]

PYTHON_OPERATOR_CHECKOUT is a checkout of github.com/celery/Celery-Kubernetes-Operator (not part
of this repository; nothing of it is copied here). Each run starts a fresh control plane
(hack/control-plane.sh), installs one operator's own CRD, starts that operator, creates APPS
copies of the Python operator's deploy/cr.yaml (each with its own name and appName), and measures:

  - how long until the children of all apps exist (a worker Deployment, a Flower Deployment and a
    Flower Service each), and, from watches opened before, per app the time from the app's
    ADDED event to the last of its children's (p50, p95, max), and from the last app's to the
    last child's: the client's own time to create the apps apart;
  - once no Deployment or pod has changed for 15 s, over WINDOW seconds: the operator's CPU time, its
    API requests on its own resources (celery, deployments, services, and events apart), read from
    the API server's apiserver_request_total with the operator running minus a window with it
    stopped, its threads and its RSS; and its RSS before any app existed.

The runs alternate between the two operators. Everything runs in a network namespace of its own
that has only a loopback interface and whose resolv.conf names 127.0.0.1, where no DNS server
listens: the apps name no broker and their Flower Services exist only as names, so both operators
fail their lookups at once, and no query leaves the machine.

The Kopf operator runs as `kopf run --standalone handlers.py` from a venv made here (kopf 1.36.2,
the version of the issue's measurement, on this machine's Python 3). celery-operator runs as the
binary `cargo build` made (target/debug, as in the issue; --release for target/release), as its
own ServiceAccount with deploy/rbac.yaml's permissions, so the API server's audit log records its
every request: they are printed, by verb and resource, for the time the apps were being created.
--only runs one of the two (to try a change).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import ssl
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETNS = "celery-side-by-side"
KOPF_VERSION = "1.36.2"
# The Python client of the same time: kopf 1.36 finds no token in the newer clients' configuration
# (it logs in as system:anonymous).
KUBERNETES_CLIENT = "26.1.0"
RESOURCES = ("celery", "deployments", "services")
HZ = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def in_namespace():
    """Re-runs this script inside a network namespace with only loopback, unless it is in one."""
    if os.environ.get("SIDE_BY_SIDE_NETNS") == NETNS:
        return
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    os.makedirs(f"/etc/netns/{NETNS}", exist_ok=True)
    with open(f"/etc/netns/{NETNS}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.1\n")
    sh("ip", "netns", "add", NETNS)
    try:
        env = dict(os.environ, SIDE_BY_SIDE_NETNS=NETNS)
        cmd = ["ip", "netns", "exec", NETNS, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
        code = subprocess.run(cmd, env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        shutil.rmtree(f"/etc/netns/{NETNS}", ignore_errors=True)
    sys.exit(code)


def kopf_venv():
    venv = os.path.expanduser(f"~/.cache/celery-operator/kopf-{KOPF_VERSION}-k8s-{KUBERNETES_CLIENT}-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, "bin", "kopf")):
        sh(sys.executable, "-m", "venv", venv)
        sh(python, "-m", "pip", "install", "-q", f"kopf=={KOPF_VERSION}", f"kubernetes=={KUBERNETES_CLIENT}", "requests", "pyyaml")
    return venv


class Cluster:
    def __init__(self, state):
        self.state = state
        sh(os.path.join(ROOT, "hack/control-plane.sh"), "start", state)
        env = {}
        with open(os.path.join(state, "env")) as f:
            for line in f:
                m = re.match(r"(?:export )?(\w+)=(.*)", line.strip())
                if m:
                    env[m.group(1)] = m.group(2).strip("'\"")
        self.kubeconfig = env["KUBECONFIG"]
        self.operator_kubeconfig = env["OPERATOR_KUBECONFIG"]
        self.url = env["KUBE_APISERVER_URL"]
        self.ca = env["KUBE_CA_FILE"]
        with open(self.kubeconfig) as f:
            self.token = re.search(r"token:\s*(\S+)", f.read()).group(1)

    def kubectl(self, *args, stdin=None):
        return sh("kubectl", "--kubeconfig", self.kubeconfig, *args, input=stdin)

    def stop(self):
        subprocess.run([os.path.join(ROOT, "hack/control-plane.sh"), "stop", self.state], capture_output=True)

    def requests(self):
        """apiserver_request_total summed by resource (events apart)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        req = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {self.token}"})
        text = urllib.request.urlopen(req, context=ctx).read().decode()
        sums = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            resource = re.search(r'resource="([^"]*)"', labels)
            if resource and resource.group(1) in RESOURCES + ("events",):
                key = resource.group(1)
                sums[key] = sums.get(key, 0.0) + float(value)
        return sums

    def children(self, ns):
        out = self.kubectl("get", "deployments,services", "-n", ns, "--no-headers", "-o", "name")
        return len([l for l in out.splitlines() if l.strip()])


class Arrivals:
    """When each app and each child was first seen, from watches opened before the apps are
    created (a thread per kind, each time the monotonic clock when the ADDED event arrived), so
    how long an operator takes for one app can be told apart from how long the client takes to
    create all of them."""

    PATHS = {
        "celery": "/apis/celeryproject.org/v1alpha1/namespaces/{ns}/celery",
        "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
        "services": "/api/v1/namespaces/{ns}/services",
    }

    def __init__(self, cluster, ns):
        self.apps, self.children, self.lock = {}, {}, threading.Lock()
        self.threads = [threading.Thread(target=self.follow, args=(cluster, path.format(ns=ns), kind), daemon=True)
                        for kind, path in self.PATHS.items()]
        for t in self.threads:
            t.start()
        time.sleep(1)

    def follow(self, cluster, path, kind):
        ctx = ssl.create_default_context(cafile=cluster.ca)
        req = urllib.request.Request(f"{cluster.url}{path}?watch=1&timeoutSeconds=900",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
        with urllib.request.urlopen(req, context=ctx) as stream:
            for line in stream:
                at = time.monotonic()
                event = json.loads(line)
                if event.get("type") != "ADDED":
                    continue
                meta = event["object"]["metadata"]
                with self.lock:
                    if kind == "celery":
                        self.apps.setdefault(meta["name"], at)
                        continue
                    owners = [o["name"] for o in meta.get("ownerReferences", []) if o.get("kind") == "Celery"]
                    for owner in owners:
                        self.children.setdefault(owner, {}).setdefault(f"{kind}/{meta['name']}", at)

    def latencies(self, per_app):
        """Per app, seconds from its ADDED to the last of its `per_app` children's, and the
        seconds from the last app's ADDED to the last child's."""
        with self.lock:
            done = {app: max(seen.values()) for app, seen in self.children.items() if len(seen) >= per_app}
            per = sorted(done[app] - at for app, at in self.apps.items() if app in done)
            tail = max(done.values()) - max(self.apps.values()) if done and self.apps else float("nan")
        return per, tail


def audited(state):
    """The operator's requests by verb, resource and subresource, from the audit log."""
    counts = {}
    with open(os.path.join(state, "logs", "audit.log")) as f:
        for line in f:
            e = json.loads(line)
            if not e.get("user", {}).get("username", "").endswith(":celery-operator"):
                continue
            o = e.get("objectRef", {})
            key = f'{e["verb"]} {o.get("resource")}{"/" + o["subresource"] if o.get("subresource") else ""}'
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def percentile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def settle(cluster, ns, quiet=15, limit=300):
    """Waits until no Deployment or pod in `ns` has changed for `quiet` seconds (the pods
    scheduled, the Deployments' status written): idle means idle for both operators."""
    started, last, since = time.monotonic(), None, time.monotonic()
    while time.monotonic() - started < limit:
        versions = cluster.kubectl("get", "deployments,pods", "-n", ns, "-o", "jsonpath={..metadata.resourceVersion}")
        if versions != last:
            last, since = versions, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(3)


def proc(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / HZ
    status = open(f"/proc/{pid}/status").read()
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return cpu, threads, rss


def resources(checkout, apps):
    with open(os.path.join(checkout, "deploy/cr.yaml")) as f:
        seed = f.read()
    docs = []
    for i in range(apps):
        doc = seed.replace("name: example-celery-obj", f"name: app-{i}")
        doc = doc.replace("appName: celery-crd-example", f"appName: app-{i}")
        docs.append(doc)
    return "\n---\n".join(docs)


def run_once(which, checkout, args, scratch):
    state = os.path.join(scratch, f"cp-{which}")
    cluster = Cluster(state)
    ns = "side"
    try:
        crd = os.path.join(ROOT, "deploy/crd.yaml") if which == "celery-operator" else os.path.join(checkout, "deploy/crd.yaml")
        cluster.kubectl("apply", "-f", crd)
        cluster.kubectl("wait", "--for=condition=Established", "crd/celery.celeryproject.org", "--timeout=60s")
        cluster.kubectl("create", "namespace", ns)
        log = open(os.path.join(scratch, f"{which}.log"), "w")
        env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
        if which == "celery-operator":
            # As its own ServiceAccount, with the permissions deploy/rbac.yaml grants: the API
            # server's audit log then records its every request (hack/control-plane.sh).
            for f in ("namespace.yaml", "rbac.yaml"):
                cluster.kubectl("apply", "-f", os.path.join(ROOT, "deploy", f))
            binary = os.path.join(ROOT, "target", "release" if args.release else "debug", "celery-operator")
            cmd = [binary, "run", "--kubeconfig", cluster.operator_kubeconfig, "-n", ns, "--leader-elect=false",
                   "--listen", "127.0.0.1:18080", "--policy-dir", os.path.join(ROOT, "target/policies")]
            cwd = ROOT
        else:
            cmd = [os.path.join(args.venv, "bin", "kopf"), "run", "--standalone", "-n", ns, "handlers.py"]
            cwd = checkout
        operator = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(10)
        if operator.poll() is not None:
            log.close()
            tail = open(log.name).read()[-3000:]
            raise RuntimeError(f"{which} exited with {operator.returncode}:\n{tail}")
        _, _, idle_rss = proc(operator.pid)

        arrivals = Arrivals(cluster, ns)
        creating0, (cpu_creating0, _, _) = cluster.requests(), proc(operator.pid)
        started = time.monotonic()
        cluster.kubectl("create", "-n", ns, "-f", "-", stdin=resources(checkout, args.apps))
        submitted = time.monotonic() - started
        while cluster.children(ns) < 3 * args.apps:
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{which}: children of {args.apps} apps not there after 600 s")
            time.sleep(0.5)
        created = time.monotonic() - started
        time.sleep(1)
        per_app, tail = arrivals.latencies(3)
        if len(per_app) != args.apps:
            raise RuntimeError(f"{which}: the watches saw the children of {len(per_app)} apps of {args.apps}")

        settle(cluster, ns)
        creating1, (cpu_creating1, _, _) = cluster.requests(), proc(operator.pid)
        if which == "celery-operator":
            print(f"{which}'s requests from the first app created until settled:", audited(state), file=sys.stderr)
        before, (cpu0, _, _) = cluster.requests(), proc(operator.pid)
        time.sleep(args.window)
        after, (cpu1, threads, rss) = cluster.requests(), proc(operator.pid)
        operator.terminate()
        operator.wait(timeout=30)
        time.sleep(5)
        quiet0 = cluster.requests()
        time.sleep(args.window)
        quiet1 = cluster.requests()
        per_minute = 60.0 / args.window

        def delta(a, b, keys):
            return sum(b.get(k, 0) - a.get(k, 0) for k in keys)

        own = (delta(before, after, RESOURCES) - delta(quiet0, quiet1, RESOURCES)) * per_minute
        events = (delta(before, after, ("events",)) - delta(quiet0, quiet1, ("events",))) * per_minute
        return {
            "operator": which,
            "idle_cpu_s_per_min": (cpu1 - cpu0) * per_minute,
            "api_requests_per_min": own,
            "event_requests_per_min": events,
            "threads": threads,
            "children_created_s": created,
            "resources_created_s": submitted,
            "app_p50_ms": percentile(per_app, 0.5) * 1000,
            "app_p95_ms": percentile(per_app, 0.95) * 1000,
            "app_max_ms": per_app[-1] * 1000,
            "after_last_app_s": tail,
            "creating_cpu_s": cpu_creating1 - cpu_creating0,
            "creating_requests": delta(creating0, creating1, RESOURCES + ("events",)),
            "rss_mib": rss,
            "idle_rss_mib": idle_rss,
        }
    finally:
        cluster.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--release", action="store_true")
    parser.add_argument("--only", choices=("kopf", "celery-operator"), help="run one operator (to try a change)")
    args = parser.parse_args()
    args.checkout = os.path.abspath(args.checkout)
    # What needs the network comes first: inside the namespace there is none.
    args.venv = kopf_venv()
    if os.environ.get("SIDE_BY_SIDE_NETNS") != NETNS:
        if not args.release:
            sh("cargo", "build", "-q", "-p", "celery-operator", cwd=ROOT)
        sh(os.path.join(ROOT, "policies/build.sh"), cwd=ROOT)
    in_namespace()
    results = []
    scratch = os.path.join(ROOT, ".state", "side-by-side")
    os.makedirs(scratch, exist_ok=True)
    if True:
        for run in range(args.runs):
            for which in [args.only] if args.only else ("kopf", "celery-operator"):
                r = run_once(which, args.checkout, args, scratch)
                print(json.dumps(r), flush=True)
                results.append(r)
    rows = [
        ("idle CPU per minute (s)", "idle_cpu_s_per_min", "{:.2f}"),
        ("API requests per minute on its own resources", "api_requests_per_min", "{:.0f}"),
        ("event requests per minute", "event_requests_per_min", "{:.0f}"),
        ("threads", "threads", "{:.0f}"),
        ("children of all apps created (s)", "children_created_s", "{:.1f}"),
        ("of which kubectl creating the apps (s)", "resources_created_s", "{:.1f}"),
        ("one app's children, from its creation: p50 (ms)", "app_p50_ms", "{:.0f}"),
        ("one app's children, from its creation: p95 (ms)", "app_p95_ms", "{:.0f}"),
        ("one app's children, from its creation: max (ms)", "app_max_ms", "{:.0f}"),
        ("last child after the last app was created (s)", "after_last_app_s", "{:.2f}"),
        ("CPU from the first app created until settled (s)", "creating_cpu_s", "{:.1f}"),
        ("requests on celery, Deployments, Services, events meanwhile (everyone's)", "creating_requests", "{:.0f}"),
        (f"RSS with {args.apps} apps (MiB)", "rss_mib", "{:.0f}"),
        ("RSS before any app (MiB)", "idle_rss_mib", "{:.0f}"),
    ]
    print(f"\n| with {args.apps} apps, {args.runs} runs each (min–max) | Kopf operator | celery-operator |")
    print("|---|---|---|")
    for label, key, fmt in rows:
        cells = []
        for which in ("kopf", "celery-operator"):
            values = [r[key] for r in results if r["operator"] == which]
            if not values:
                cells.append("")
                continue
            lo, hi = fmt.format(min(values)), fmt.format(max(values))
            cells.append(lo if lo == hi else f"{lo}–{hi}")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
