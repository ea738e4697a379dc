#!/usr/bin/env bash
# Offline checks of everything vcbackup ships besides the Rust code: Dockerfile,
# Helm values, Kubernetes/AWS/Prometheus manifests, Grafana dashboard.
#
#   scripts/check-manifests.sh
#
# Prints one line per check (ok / FAIL) and exits non-zero if any failed.
# Tools come from a venv at ${VCBACKUP_VENV:-$HOME/.cache/vcbackup/venv}, created and
# reused; promtool comes from Debian's `prometheus` package (installed if missing).
# VCBACKUP_BINARY=path checks a release binary's dynamic section against the runtime
# base image (default: target/release/vcbackup when it exists; this script never builds).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VCBACKUP_VENV:-$HOME/.cache/vcbackup/venv}
K8S_VERSION=1.33.0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

failed=0
ok()   { printf 'ok    %s\n' "$1"; }
bad()  { printf 'FAIL  %s\n' "$1"; failed=1; }
# check NAME CMD...: runs CMD, prints one line, shows CMD's output only on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else bad "$name"; printf '%s\n' "$out" | sed 's/^/      /'; fi
}

# ---- tools ------------------------------------------------------------------
# scripts/setup owns the venv and the Debian packages (promtool); it only checks when all is there.
if ! "$ROOT/scripts/setup" >"$WORK/setup.log" 2>&1; then
    bad "tools: scripts/setup"; sed 's/^/      /' "$WORK/setup.log"; exit 1
fi
ok "tools: scripts/setup (venv $VENV)"
PY="$VENV/bin/python"
if ! command -v promtool >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
        && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >"$WORK/apt.log" 2>&1; then
        ok "tools: promtool installed (Debian prometheus)"
    else
        bad "tools: promtool missing (apt-get install prometheus)"; sed 's/^/      /' "$WORK/apt.log" 2>/dev/null
    fi
fi

# The VirtualClusterTemplate is rendered for real: Go's text/template with sprig,
# as vCluster Platform renders it (Debian's golang-go and sprig, offline).
RENDER="$WORK/render-template"
if ! (cd "$ROOT/scripts/render-template" && GO111MODULE=off GOPATH=/usr/share/gocode \
        GOCACHE="$WORK/gocache" GOFLAGS= go build -o "$RENDER" .) >"$WORK/go.log" 2>&1; then
    bad "tools: build scripts/render-template (golang-go, golang-github-masterminds-sprig-dev)"
    sed 's/^/      /' "$WORK/go.log"
fi
export RENDER

# ---- structure checks and generated inputs for the tools below ----------------
# The Python part checks the fields the docs and the other files rely on, and
# writes into $WORK: rendered template values, container specs wrapped in Pods,
# the PrometheusRule's spec, the dashboard's queries as rules, a list of core objects.
"$PY" - "$ROOT" "$WORK" <<'PYEOF'
import glob, json, os, re, subprocess, sys
import yaml

root, work = sys.argv[1], sys.argv[2]
failed = False

def result(ok, name, detail=""):
    global failed
    print(("ok    " if ok else "FAIL  ") + name)
    if not ok:
        failed = True
        for line in str(detail).splitlines():
            print("      " + line)

def check(name, fn):
    try:
        fn()
        result(True, name)
    except Exception as e:  # noqa: BLE001 - report any failure as a failed check
        result(False, name, f"{type(e).__name__}: {e}")

def rel(p):
    return os.path.relpath(p, root)

def need(cond, msg):
    if not cond:
        raise AssertionError(msg)

def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

# The agent's interface: every env var it reads. Anything else is a typo.
ENV = {f"VCBACKUP_{n}" for n in """NAME DESTINATION SOURCE DATA_DIR ETCD_CACERT ETCD_CERT
    ETCD_KEY RECIPIENTS RECIPIENTS_FILE NO_ENCRYPTION COMPRESSION_LEVEL COMPRESSION_THREADS
    SCHEDULE TIMEZONE JITTER NO_CATCH_UP RETENTION_DAYS MAX_SNAPSHOTS LISTEN SHUTDOWN_TIMEOUT
    BACKUP_ON_SHUTDOWN LOG_FORMAT IDENTITY ABORT_UPLOADS_AFTER HA VCLUSTER_CONFIG NAMESPACE
    CHART_VERSION VERIFY_AFTER_UPLOAD SKIP_UNCHANGED MAX_UNCHANGED_AGE INCREMENTAL_INTERVAL""".split()}
# The release name, which --name falls back to (the chart's own variable name).
ENV.add("VCLUSTER_NAME")
SUBCOMMANDS = {"run", "backup", "list", "prune", "decrypt", "restore", "export", "verify", "fleet"}
METRICS = {"vcbackup_backups_total", "vcbackup_backup_failures_total",
           "vcbackup_last_success_timestamp_seconds", "vcbackup_last_attempt_timestamp_seconds",
           "vcbackup_next_run_timestamp_seconds", "vcbackup_backup_in_progress",
           "vcbackup_backup_duration_seconds", "vcbackup_last_backup_size_bytes",
           "vcbackup_retention_deleted_total", "vcbackup_snapshots_stored", "vcbackup_build_info",
           "vcbackup_schedule_interval_seconds", "vcbackup_verifications_total",
           "vcbackup_last_verify_duration_seconds", "vcbackup_fleet_last_success_timestamp_seconds",
           "vcbackup_fleet_last_verify_timestamp_seconds", "vcbackup_fleet_last_verify_success",
           "vcbackup_fleet_backups", "vcbackup_fleet_bytes", "vcbackup_fleet_last_refresh_timestamp_seconds",
           "vcbackup_fleet_refresh_failures_total", "vcbackup_rpo_seconds",
           "vcbackup_incremental_interval_seconds", "vcbackup_increments_total",
           "vcbackup_increment_bytes_total", "vcbackup_last_increment_timestamp_seconds",
           "vcbackup_full_backups_forced_total", "vcbackup_last_forced_full_backup_timestamp_seconds",
           "vcbackup_pki_expiry_timestamp_seconds"}
PORT = 9464
HARDENED = {"runAsUser": 0, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}

pods = []  # (label, pod manifest) for kubernetes-validate

def check_container(c, label, named_port=True, daemon=True):
    """Fields every vcbackup container must get right."""
    need("vcbackup" in c.get("image", ""), f"{label}: image is not vcbackup")
    args = c.get("args", [])
    need(args and args[0] in SUBCOMMANDS, f"{label}: args[0] {args[:1]} is not a subcommand")
    for e in c.get("env", []):
        need(e["name"] in ENV, f"{label}: unknown env var {e['name']}")
        need(isinstance(e.get("value", ""), str), f"{label}: env {e['name']} value must be a string")
    sc = c.get("securityContext", {})
    for k, v in HARDENED.items():
        need(sc.get(k) == v, f"{label}: securityContext.{k} must be {v}")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities must drop ALL")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    need(mounts.get("data") == "/data", f"{label}: the `data` volume must be mounted at /data")
    need(c.get("resources", {}).get("limits", {}).get("memory"), f"{label}: no memory limit")
    if daemon:
        need(args[0] == "run", f"{label}: the sidecar must run `vcbackup run`")
        names = {e["name"] for e in c.get("env", [])}
        need({"VCBACKUP_DESTINATION", "VCBACKUP_RECIPIENTS"} <= names,
             f"{label}: VCBACKUP_DESTINATION and VCBACKUP_RECIPIENTS are required")
        port = "metrics" if named_port else PORT
        if named_port:
            need({"name": "metrics", "containerPort": PORT, "protocol": "TCP"} in c.get("ports", []),
                 f"{label}: needs port metrics/{PORT}")
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            g = c.get(probe, {}).get("httpGet", {})
            need(g.get("path") == path and g.get("port") == port, f"{label}: {probe} must GET {path} on {port}")

def wrap_pod(label, containers, init=(), volumes=None):
    """A Pod around containers from Helm values, so kubernetes-validate --strict checks them."""
    names = {m["name"] for c in list(containers) + list(init) for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in (volumes or [])}
    for n in names:
        vols.setdefault(n, {"name": n, "emptyDir": {}})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": re.sub(r"[^a-z0-9-]", "-", label.lower())[:60]},
           "spec": {"containers": list(containers) or [{"name": "placeholder", "image": "placeholder"}],
                    "volumes": list(vols.values())}}
    if init:
        pod["spec"]["initContainers"] = list(init)
    pods.append((label, pod))

def check_values(path, values):
    sts = values["controlPlane"]["statefulSet"]
    extra = sts.get("persistence", {}).get("addVolumes", [])
    side, init = sts.get("sidecarContainers", []), sts.get("initContainers", [])
    need(side or init, "no sidecarContainers or initContainers")
    wrap_pod(path, side, init, extra)  # first, so kubernetes-validate sees it even if a check below fails
    for c in side:
        check_container(c, f"{path} sidecar {c.get('name')}")
    for c in init:
        check_container(c, f"{path} initContainer {c.get('name')}", daemon=False)

# -- Chart ranges. Every values file names the vCluster chart versions it is for in one
# header line, `# vcluster chart: >=0.30.0 <0.37.0` (either bound may be left out), and
# is validated against every values schema in helm-values/schema/ inside that range
# (check-jsonschema runs below on schema-inputs.txt). A v0.30+ file whose range ends
# below a schema we have must be rejected by it (k3s.yaml: v0.36 dropped the distro),
# so no range is narrower than the schemas say.
SCHEMAS = {}
for p in glob.glob(os.path.join(root, "helm-values", "schema", "vcluster-values.schema.v*.json")):
    m = re.search(r"\.v(\d+)\.(\d+)\.(\d+)\.json$", p)
    SCHEMAS[tuple(int(x) for x in m.groups())] = p
schema_inputs = []  # (expect accept|reject, schema path, file, label)

def version(s):
    return tuple(int(x) for x in s.split("."))

def chart_range(path):
    """The header's range as (lowest, first version above), from `# vcluster chart: ...`."""
    lines = [l.rstrip("\n") for l in open(path) if l.startswith("# vcluster chart:")]
    need(len(lines) == 1, "needs exactly one header line `# vcluster chart: >=X.Y.Z <X.Y.Z`")
    m = re.fullmatch(r"# vcluster chart: (?:>=(\d+\.\d+\.\d+))? ?(?:<(\d+\.\d+\.\d+))?", lines[0])
    need(m and (m[1] or m[2]), f"unreadable range {lines[0]!r}: expected `# vcluster chart: >=X.Y.Z <X.Y.Z`")
    lo, hi = version(m[1] or "0.0.0"), version(m[2]) if m[2] else None
    need(lo[2] == 0 and (hi is None or (hi[2] == 0 and hi[1] > 0)), f"bounds must be minor versions X.Y.0: {lines[0]!r}")
    need(hi is None or lo < hi, f"empty range {lines[0]!r}")
    return lo, hi

def human(lo, hi):
    """The range as docs/deploy-eks.md writes it: v0.30–v0.35, v0.19 and earlier."""
    first, last = f"v{lo[0]}.{lo[1]}", hi and f"v{hi[0]}.{hi[1] - 1}"
    if not hi:
        return f"{first} and later"
    return f"{last} and earlier" if lo == (0, 0, 0) else f"{first}–{last}"

def claim_schemas(path, label, legacy=False):
    lo, hi = chart_range(path)
    inside = [v for v in sorted(SCHEMAS) if lo <= v and (hi is None or v < hi)]
    need(legacy or inside, f"no schema in helm-values/schema/ inside its range {human(lo, hi)}")
    need(not (legacy and inside), "a legacy file inside a schema's range: validate it, drop the LEGACY mark")
    for v in inside:
        schema_inputs.append(("accept", SCHEMAS[v], path, label))
    for v in sorted(SCHEMAS):
        if not legacy and hi is not None and v >= hi:
            schema_inputs.append(("reject", SCHEMAS[v], path, label))
    deploying = " ".join(open(os.path.join(root, "docs", "deploy-eks.md")).read().split())
    if label.startswith("helm-values/"):
        need(f"`{label}` ({human(lo, hi)}" in deploying,
             f"docs/deploy-eks.md (step 4) must say `{label}` ({human(lo, hi)})")

# -- Helm values for v0.30+ (the schema check itself runs below with check-jsonschema)
for path in sorted(glob.glob(os.path.join(root, "helm-values", "*.yaml"))):
    if os.path.basename(path).startswith("legacy-"):
        continue
    check(f"chart range: {rel(path)}", lambda path=path: claim_schemas(path, rel(path)))
    def f(path=path):
        (values,) = load_all(path)
        check_values(rel(path), values)
        sources = [e["value"] for c in values["controlPlane"]["statefulSet"]["sidecarContainers"]
                   for e in c["env"] if e["name"] == "VCBACKUP_SOURCE"]
        expected = {"sqlite.yaml": "/data/state.db", "k3s.yaml": "/data/server/db/state.db",
                    "embedded-etcd.yaml": "https://127.0.0.1:2379"}.get(os.path.basename(path))
        if expected:
            need(sources == [expected], f"VCBACKUP_SOURCE {sources} != {expected}")
    check(f"fields: {rel(path)}", f)

restore_init = os.path.join(root, "deploy", "restore-init-container.yaml")
check(f"chart range: {rel(restore_init)}", lambda: claim_schemas(restore_init, rel(restore_init)))
def f():
    (values,) = load_all(restore_init)
    check_values(rel(restore_init), values)
    (c,) = values["controlPlane"]["statefulSet"]["initContainers"]
    need(c["args"][:2] == ["restore", "latest"] and "--if-missing" in c["args"], "must be `restore latest --if-missing`")
    need(c["args"][c["args"].index("--to") + 1] == "/data/state.db", "must restore to /data/state.db")
check(f"fields: {rel(restore_init)}", f)

# -- legacy values: only parsed and checked, no schema in helm-values/schema/ applies
for name, want in (("legacy-v0.20-v0.29.yaml", {"version": "v1"}), ("legacy-v0.19.yaml", {"optional": True})):
    path = os.path.join(root, "helm-values", name)
    check(f"chart range: {rel(path)} (legacy)", lambda path=path: claim_schemas(path, rel(path), legacy=True))
    def f(path=path, want=want):
        text = open(path).read()
        need("LEGACY" in text.splitlines()[0], "first line must mark the file as LEGACY")
        (values,) = load_all(path)
        p = values["plugin"]["vcbackup"]
        for k, v in want.items():
            need(p.get(k) == v, f"plugin.vcbackup.{k} must be {v!r}")
        need("ports" not in p, "plugin containers have no ports field")
        need("controlPlane" not in values, "legacy charts have no controlPlane.statefulSet.sidecarContainers")
        container = {k: v for k, v in p.items() if k not in ("version", "optional", "config", "rbac")}
        wrap_pod(rel(path), [dict(container, name="vcbackup")], volumes=values.get("volumes"))
        check_container(p, rel(path), named_port=False)
    check(f"fields: {rel(path)} (legacy)", f)

# -- deploy/: every object, by kind
core = []
seen = {}
for path in sorted(glob.glob(os.path.join(root, "deploy", "*.yaml"))):
    if path.endswith(".test.yaml") or path == restore_init:
        continue
    for doc in load_all(path):
        seen.setdefault(doc.get("kind"), []).append((path, doc))
        group = doc.get("apiVersion", "").rpartition("/")[0]
        if "." not in group or group.endswith(".k8s.io"):
            core.append(path)
with open(os.path.join(work, "core-files.txt"), "w") as f:
    f.write("\n".join(sorted(set(core))) + ("\n" if core else ""))

def only(kind):
    items = seen.get(kind, [])
    need(len(items) == 1, f"expected one {kind}, found {len(items)}")
    return items[0]

def named(kind, name):
    items = [(p, d) for p, d in seen.get(kind, []) if d["metadata"]["name"] == name]
    need(len(items) == 1, f"expected one {kind} named {name}, found {len(items)}")
    return items[0]

def f():
    path, pm = named("PodMonitor", "vcbackup")
    need(pm["apiVersion"] == "monitoring.coreos.com/v1", "apiVersion")
    need(pm["spec"]["selector"]["matchLabels"] == {"app": "vcluster"}, "must select app: vcluster")
    need(pm["spec"].get("namespaceSelector", {}).get("any") is True, "must watch every namespace")
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    need(ep["port"] == "metrics" and ep.get("path", "/metrics") == "/metrics", "must scrape port metrics /metrics")
    rl = ep.get("relabelings", [])
    need({"targetLabel": "job", "replacement": "vcbackup"} in rl, "must set job=vcbackup (the alerts use it)")
    need(any(r.get("targetLabel") == "vcluster" and r.get("sourceLabels") == ["__meta_kubernetes_pod_label_release"] for r in rl),
         "must copy the release label to `vcluster`")
check("fields: deploy/podmonitor.yaml (PodMonitor)", f)

def f():
    path, pia = only("PodIdentityAssociation")
    need(pia["apiVersion"] == "eks.services.k8s.aws/v1alpha1", "apiVersion")
    s = pia["spec"]
    need({"clusterName", "namespace", "serviceAccount", "roleARN"} <= set(s), "clusterName/namespace/serviceAccount/roleARN")
    need(s["serviceAccount"].startswith("vc-"), "serviceAccount must be vc-<release>")
    need(s["roleARN"].startswith("arn:aws:iam::"), "roleARN must be an IAM role ARN")
    need(not s.get("disableSessionTags"), "session tags must stay on (trust policy conditions use them)")
check("fields: deploy/pod-identity-association.yaml (PodIdentityAssociation)", f)

def f():
    path, pr = only("PrometheusRule")
    need(pr["apiVersion"] == "monitoring.coreos.com/v1", "apiVersion")
    rules = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"] if "alert" in r}
    need(set(rules) >= {"VcbackupBackupStale", "VcbackupBackupsFailing", "VcbackupAbsent"}, f"alerts: {sorted(rules)}")
    need("VcbackupFleetBackupStale" in rules and "vcbackup_fleet_last_success_timestamp_seconds" in rules["VcbackupFleetBackupStale"]["expr"],
         "a per-cluster staleness alert on the fleet exporter's gauge")
    stale = rules["VcbackupBackupStale"]["expr"]
    need("vcbackup_last_success_timestamp_seconds" in stale and "2 * vcbackup_schedule_interval_seconds" in stale,
         "stale alert must compare the last success with twice the schedule interval")
    need('result="failure"' in rules["VcbackupBackupsFailing"]["expr"], "failing alert must use result=\"failure\"")
    need("absent(" in rules["VcbackupAbsent"]["expr"] and "up{" in rules["VcbackupAbsent"]["expr"], "absent alert must use up and absent()")
    for name, r in rules.items():
        need(r.get("labels", {}).get("severity") in ("warning", "critical"), f"{name}: severity")
        need(r.get("annotations", {}).get("summary"), f"{name}: summary")
    used = set(re.findall(r"\bvcbackup_[a-z_]+", json.dumps(pr["spec"])))
    need(used <= METRICS, f"unknown metrics: {sorted(used - METRICS)}")
    with open(os.path.join(work, "prometheusrule.rules.yaml"), "w") as out:
        yaml.safe_dump(pr["spec"], out, sort_keys=False)
check("fields: deploy/prometheusrule.yaml (PrometheusRule)", f)

ANNOTATIONS = {
    "vcbackup/s3-url": "s3://bucket-from-annotation/vc",
    "vcbackup/s3-region": "us-west-2",
    "vcbackup/role-arn": "arn:aws:iam::111122223333:role/from-annotation",
    "vcbackup/eks-cluster-name": "eks-from-annotation",
    "vcbackup/timezone": "Europe/Berlin",
    "vcbackup/age-recipients": "age1fromannotation",
}

def render(text, params, annotations, missingkey):
    """The platform's rendering: Go text/template with sprig (scripts/render-template).
    `annotations` is the host Cluster's annotations, or None for a Cluster without any."""
    loft = {"virtualClusterName": "demo", "virtualClusterNamespace": "team-a"}
    if annotations is not None:
        loft["clusterAnnotations"] = annotations
    values = dict(params, loft=loft)
    out = subprocess.run([os.environ["RENDER"], json.dumps(values), missingkey],
                         input=text, capture_output=True, text=True)
    need(out.returncode == 0, f"renders (annotations={annotations is not None}, missingkey={missingkey}): {out.stderr.strip()}")
    return out.stdout

def f():
    path, vct = only("VirtualClusterTemplate")
    need(vct["apiVersion"] == "management.loft.sh/v1", "apiVersion")
    (ver,) = vct["spec"]["versions"]
    tpl = ver["template"]
    chart = str(tpl["helmRelease"]["chart"]["version"])
    need(chart.startswith("0.3"), "chart must be v0.30+ (sidecarContainers)")
    need(version(chart) in SCHEMAS, f"no values schema for its chart {chart} in helm-values/schema/")
    raw = tpl["helmRelease"]["values"] + tpl["spaceTemplate"]["objects"]
    params = {p["variable"] for p in ver.get("parameters", [])}
    used = set(re.findall(r"\.Values\.([A-Za-z0-9_]+)", raw)) - {"loft"}
    need(used <= params, f"undeclared parameters: {sorted(used - params)}")
    defaults = {p["variable"]: p.get("defaultValue") for p in ver.get("parameters", [])}
    # A Cluster with every annotation, one with none, and one with an empty map, under
    # both of text/template's missingkey modes (Helm uses zero).
    for annotations in (ANNOTATIONS, None, {}):
        for missingkey in ("default", "zero"):
            values = yaml.safe_load(render(tpl["helmRelease"]["values"], defaults, annotations, missingkey))
            (pia,) = list(yaml.safe_load_all(render(tpl["spaceTemplate"]["objects"], defaults, annotations, missingkey)))
            env = {e["name"]: e.get("value") for e in values["controlPlane"]["statefulSet"]["sidecarContainers"][0]["env"]}
            need(pia["kind"] == "PodIdentityAssociation" and pia["apiVersion"] == "eks.services.k8s.aws/v1alpha1",
                 "spaceTemplate.objects must create a PodIdentityAssociation")
            need(pia["spec"]["serviceAccount"] == "vc-demo" and pia["spec"]["namespace"] == "team-a",
                 f"association for vc-<virtual cluster> in its namespace: {pia['spec']}")
            if annotations:
                need(env["VCBACKUP_DESTINATION"] == "s3://bucket-from-annotation/vc/team-a?region=us-west-2",
                     f"destination from the annotations: {env['VCBACKUP_DESTINATION']}")
                need(env["VCBACKUP_RECIPIENTS"] == "age1fromannotation" and env["VCBACKUP_TIMEZONE"] == "Europe/Berlin",
                     f"recipients and time zone from the annotations: {env}")
                need(pia["spec"]["clusterName"] == "eks-from-annotation"
                     and pia["spec"]["roleARN"] == "arn:aws:iam::111122223333:role/from-annotation",
                     f"association from the annotations: {pia['spec']}")
                with open(os.path.join(work, "rendered-template-values.yaml"), "w") as out:
                    yaml.safe_dump(values, out, sort_keys=False)
                check_values(f"{rel(path)} values", values)
            else:
                need(env["VCBACKUP_DESTINATION"].startswith("s3://REPLACE_BUCKET/vcluster/team-a?region=")
                     and env["VCBACKUP_TIMEZONE"] == "UTC" and not env["VCBACKUP_RECIPIENTS"],
                     f"defaults without annotations: {env}")
    need("vc-{{ .Values.loft.virtualClusterName }}" in tpl["spaceTemplate"]["objects"], "serviceAccount must be vc-<virtual cluster>")
check("fields: deploy/virtual-cluster-template.yaml (VirtualClusterTemplate, rendered with Go templates + sprig for a Cluster with, without and with empty annotations)", f)
# The rendered values are for the one chart version the template pins.
def f():
    path, vct = only("VirtualClusterTemplate")
    (ver,) = vct["spec"]["versions"]
    schema_inputs.append(("accept", SCHEMAS[version(str(ver["template"]["helmRelease"]["chart"]["version"]))],
                          os.path.join(work, "rendered-template-values.yaml"),
                          "deploy/virtual-cluster-template.yaml (rendered values)"))
check("chart version: deploy/virtual-cluster-template.yaml has a values schema", f)

with open(os.path.join(work, "schema-inputs.txt"), "w") as out:
    out.writelines("\t".join(row) + "\n" for row in schema_inputs)

for kind in sorted(k for k in seen if k not in ("PodMonitor", "PodIdentityAssociation", "PrometheusRule", "VirtualClusterTemplate")):
    if not any(kind in open(p).read() for p in core):
        result(False, f"fields: unchecked kind {kind}", "add a check for it")

def f():
    path, job = only("Job")
    c = job["spec"]["template"]["spec"]["containers"][0]
    check_container(c, rel(path), daemon=False)
    need(c["args"][0] == "restore" and "--identity" in c["args"] and "--to" in c["args"], "restore --to --identity")
    need(job["spec"]["template"]["spec"]["serviceAccountName"].startswith("vc-"), "must use the vc-<release> service account")
check("fields: deploy/restore-job.yaml (Job)", f)

def f():
    path, d = only("Deployment")
    need(d["apiVersion"] == "apps/v1" and d["spec"].get("replicas") == 1, "apps/v1, one replica")
    need(d["metadata"]["namespace"] not in ("default", "team-a"), "must run in the platform team's namespace")
    pod = d["spec"]["template"]["spec"]
    need(not pod["serviceAccountName"].startswith("vc-"), "must not use a vCluster's service account")
    need(d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items(), "selector must match the pod")
    (c,) = pod["containers"]
    need("vcbackup" in c["image"], "image")
    args = c["args"]
    need(args[0] == "fleet" and "--listen" in args, "must run `fleet --listen`")
    port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(port in ports.values(), f"--listen port {port} is not a container port")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    need(env.get("VCBACKUP_DESTINATION", "").startswith("s3://"), "VCBACKUP_DESTINATION")
    need(set(env) <= ENV, f"unknown env vars {sorted(set(env) - ENV)}")
    for probe, path_ in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        need(c[probe]["httpGet"]["path"] == path_, f"{probe} must GET {path_}")
    sc = c.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
         and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"],
         "non-root, read-only root, no escalation, no capabilities")
    need(c.get("resources", {}).get("limits", {}).get("memory"), "no memory limit")
    _, pm = named("PodMonitor", "vcbackup-fleet")
    need(pm["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"], "the PodMonitor must select the exporter")
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    need(ports.get(ep["port"]) == port and ep.get("path", "/metrics") == "/metrics", "must scrape the exporter's port")
    need({"targetLabel": "job", "replacement": "vcbackup-fleet"} in ep.get("relabelings", []), "job=vcbackup-fleet")
check("fields: deploy/fleet-exporter.yaml (Deployment, PodMonitor)", f)

def f():
    path, cj = only("CronJob")
    need(cj["apiVersion"] == "batch/v1", "apiVersion")
    need(cj["metadata"]["namespace"] not in ("default", "team-a") , "must run in the platform team's namespace")
    s = cj["spec"]
    need(s.get("concurrencyPolicy") == "Forbid", "concurrencyPolicy must be Forbid")
    job = s["jobTemplate"]["spec"]
    need(job.get("backoffLimit") == 0, "a failed drill must not be retried away (backoffLimit 0)")
    pod = job["template"]["spec"]
    need(not pod["serviceAccountName"].startswith("vc-"), "must not use a vCluster's service account")
    (c,) = pod["containers"]
    need("vcbackup" in c["image"], "image")
    args = c["args"]
    need(args[:2] == ["verify", "--all-vclusters"], "must run `verify --all-vclusters`")
    identity = args[args.index("--identity") + 1]
    scratch = args[args.index("--scratch-dir") + 1]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    need(env.get("VCBACKUP_DESTINATION", "").startswith("s3://"), "VCBACKUP_DESTINATION")
    need(set(env) <= ENV | {"VCBACKUP_SCRATCH_DIR"}, f"unknown env vars {sorted(set(env) - ENV)}")
    sc = c.get("securityContext", {})
    for k, v in HARDENED.items():
        need(sc.get(k) == v, f"securityContext.{k} must be {v}")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL")
    need(c.get("resources", {}).get("limits", {}).get("memory"), "no memory limit")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    need("data" not in vols and "/data" not in mounts, "a drill never mounts a control plane's data")
    secret = vols[mounts[os.path.dirname(identity)]]
    need("secret" in secret and secret["secret"].get("defaultMode") == 0o400, "identity from a Secret, mode 0400")
    need(vols[mounts[scratch]].get("emptyDir", {}).get("sizeLimit"), "scratch is an emptyDir with a sizeLimit")
check("fields: deploy/verify-cronjob.yaml (CronJob)", f)

# -- IAM documents
def statements(name):
    with open(os.path.join(root, "deploy", name)) as f:
        doc = json.load(f)
    need(doc.get("Version") == "2012-10-17", f"{name}: Version")
    return doc["Statement"]

def f():
    (st,) = statements("iam-trust-policy.json")
    need(st["Principal"] == {"Service": "pods.eks.amazonaws.com"}, "principal pods.eks.amazonaws.com")
    need(sorted(st["Action"]) == ["sts:AssumeRole", "sts:TagSession"], "sts:AssumeRole + sts:TagSession")
check("fields: deploy/iam-trust-policy.json", f)

for name in ("iam-policy.json", "iam-policy-per-namespace.json"):
    def f(name=name):
        sts = statements(name)
        # The sidecar holds no key, so it never runs a full drill: a record
        # claiming one can come only from the verify role (trust model).
        denies = [st for st in sts if st["Effect"] == "Deny"]
        need(len(denies) == 1 and denies[0]["Action"] == "s3:PutObject"
             and denies[0]["Resource"].endswith("/*.verify-*-full-*"),
             "one Deny of s3:PutObject on full drill records (*.verify-*-full-*)")
        sts = [st for st in sts if st["Effect"] != "Deny"]
        acts = {}
        for st in sts:
            need(st["Effect"] == "Allow", "only Allow statements")
            for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]):
                need("*" not in a, f"wildcard action {a}")
                acts[a] = st
            need(st["Resource"] != "*" and "*" not in st["Resource"].split(":::")[1].split("/")[0], "resource must name the bucket")
        need(set(acts) == {"s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:PutObject", "s3:GetObject",
                           "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}, f"actions {sorted(acts)}")
        need("s3:prefix" in json.dumps(acts["s3:ListBucket"].get("Condition", {})), "ListBucket needs a prefix condition")
        for a in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
            need(acts[a]["Resource"].endswith("/*") and "/vcluster/" in acts[a]["Resource"], f"{a} must be scoped to the prefix")
    check(f"fields: deploy/{name}", f)

def f():
    acts = {}
    for st in statements("iam-policy-verify.json"):
        need(st["Effect"] == "Allow", "only Allow statements")
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]):
            acts[a] = st["Resource"]
    need(set(acts) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}, f"actions {sorted(acts)}")
    for a in ("s3:PutObject", "s3:DeleteObject"):
        need(acts[a].endswith("/*.verify-*"), f"{a} only on verify records: {acts[a]}")
check("fields: deploy/iam-policy-verify.json (drills write only their records)", f)

def f():
    (st,) = statements("iam-policy-kms.json")
    need(sorted(st["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"], "kms:GenerateDataKey + kms:Decrypt")
    need("kms:ViaService" in json.dumps(st.get("Condition", {})), "only via S3")
check("fields: deploy/iam-policy-kms.json", f)

def f():
    (st,) = statements("iam-policy-fleet.json")
    need(st["Effect"] == "Allow" and st["Action"] == "s3:ListBucket", "only s3:ListBucket")
    need("s3:prefix" in json.dumps(st.get("Condition", {})), "ListBucket needs a prefix condition")
check("fields: deploy/iam-policy-fleet.json (list only)", f)

# -- Grafana dashboard
def f():
    with open(os.path.join(root, "deploy", "grafana-dashboard.json")) as fh:
        d = json.load(fh)
    need(d.get("uid") and d.get("title") and d.get("panels"), "uid, title, panels")
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    need(all(p.get("targets") for p in d["panels"]), "a panel without queries")
    used = set(re.findall(r"\bvcbackup_[a-z_]+", "\n".join(exprs)))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    need(used <= METRICS, f"unknown metrics: {sorted(used - METRICS)}")
    need({"vcbackup_last_success_timestamp_seconds", "vcbackup_backup_duration_seconds",
          "vcbackup_last_backup_size_bytes", "vcbackup_backup_failures_total"} <= used,
         "must show last success age, durations, sizes and failures")
    # The queries as recording rules, so promtool parses every one of them.
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
    with open(os.path.join(work, "dashboard-queries.rules.yaml"), "w") as out:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, out, sort_keys=False)
check("fields: deploy/grafana-dashboard.json (parses, known metrics)", f)

# -- Dockerfile and .dockerignore
def f():
    text = open(os.path.join(root, "Dockerfile")).read()
    need(re.search(r"^FROM --platform=\$BUILDPLATFORM rust:\$\{RUST_VERSION\}-bookworm AS builder$", text, re.M)
         and 'ARG RUST_VERSION=1.95' in text, "builder rust:1.95-bookworm on the build platform (cross-compiling)")
    need("protobuf-compiler" in text and 'cargo build --release --locked --target "$(cat /target-triple)"' in text,
         "protoc + cargo build --release --locked --target (the triple from TARGETARCH)")
    need(re.search(r"^FROM gcr\.io/distroless/cc-debian12", text, re.M), "runtime distroless cc-debian12")
    need('ENTRYPOINT ["/vcbackup"]' in text and 'CMD ["run"]' in text, "entrypoint/cmd")
    # Architectures are named only in the builder's TARGETARCH mapping and toolchain settings;
    # the final stage is the target platform's, never pinned.
    final = text[text.rindex("\nFROM "):]
    need(not re.search(r"amd64|arm64|aarch64|x86_64|--platform", re.sub(r"#.*", "", final)), "final stage names no architecture")
    for arch, triple in (("amd64", "x86_64-unknown-linux-gnu"), ("arm64", "aarch64-unknown-linux-gnu")):
        env = triple.replace("-", "_")
        need(f"{arch}) echo {triple} >/target-triple" in text and f"CC_{env}=" in text
             and f"CARGO_TARGET_{env.upper()}_LINKER=" in text, f"{arch}: target {triple} with its C compiler and linker")
    # The runtime base's package list (scripts/image-rootfs reads it; scripts/check-image
    # checks the tree it gives against the FROM below it).
    lines = text[:text.rindex("\nFROM ")].splitlines()
    need(lines[-1].startswith("# runtime-packages: "), "the line above the final FROM must be `# runtime-packages: ...`")
    need({"libc6", "libgcc-s1"} <= set(lines[-1].split()[2:]), "runtime-packages: libc6 and libgcc-s1 (the binary needs them)")
    need(not re.search(r"^USER ", text, re.M), "runs as the base image's uid 0 (no USER)")
    ignored = {l.strip() for l in open(os.path.join(root, ".dockerignore")) if l.strip() and not l.startswith("#")}
    need(not ignored & {"src", ".cargo", "Cargo.toml", "Cargo.lock", "*", "**"}, f".dockerignore drops build inputs: {ignored}")
    need("target" in ignored and ".git" in ignored, ".dockerignore must drop target and .git")
check("fields: Dockerfile, .dockerignore", f)

with open(os.path.join(work, "pods.yaml"), "w") as out:
    yaml.safe_dump_all([p for _, p in pods], out, sort_keys=False)
sys.exit(1 if failed else 0)
PYEOF
[[ $? -eq 0 ]] || failed=1

# ---- tools on the files and on what the Python part generated -----------------
# Each values file against each schema of its chart range; schemas above a v0.30+ file's
# range must still reject it (or the range is narrower than it needs to be).
rejects() {
    local out
    if out=$("$VENV/bin/check-jsonschema" --schemafile "$1" "$2" 2>&1); then
        echo "accepted: the schema allows this file, widen its \`# vcluster chart:\` range"; return 1
    fi
    grep -q "Schema validation errors" <<<"$out" || { printf '%s\n' "$out"; return 1; }
}
while IFS=$'\t' read -r expect schema f name; do
    [[ -n $f ]] || continue
    v=${schema##*/vcluster-values.schema.}; v=${v%.json}
    if [[ $expect == accept ]]; then
        check "schema $v: $name" "$VENV/bin/check-jsonschema" --schemafile "$schema" "$f"
    else
        check "schema $v rejects $name (beyond its chart range)" rejects "$schema" "$f"
    fi
done <"$WORK/schema-inputs.txt"

if [[ -s "$WORK/pods.yaml" ]]; then
    check "kubernetes-validate --strict ($K8S_VERSION): sidecar/init containers of every values file, wrapped in Pods" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$WORK/pods.yaml"
fi
while read -r f; do
    [[ -n $f ]] || continue
    check "kubernetes-validate --strict ($K8S_VERSION): ${f#"$ROOT/"}" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$f"
done <"$WORK/core-files.txt"

if command -v promtool >/dev/null 2>&1; then
    if [[ -s "$WORK/prometheusrule.rules.yaml" ]]; then
        check "promtool check rules: deploy/prometheusrule.yaml (spec)" promtool check rules "$WORK/prometheusrule.rules.yaml"
        cp "$ROOT/deploy/prometheusrule.test.yaml" "$WORK/"
        check "promtool test rules: deploy/prometheusrule.test.yaml" bash -c 'cd "$1" && promtool test rules prometheusrule.test.yaml' _ "$WORK"
    fi
    [[ -s "$WORK/dashboard-queries.rules.yaml" ]] &&
        check "promtool: every query in deploy/grafana-dashboard.json parses" promtool check rules "$WORK/dashboard-queries.rules.yaml"
fi

check "hadolint: Dockerfile" "$VENV/bin/hadolint" --config "$ROOT/.hadolint.yaml" "$ROOT/Dockerfile"

# The release binary must need only what distroless/cc-debian12 has: glibc 2.36
# (libc, libm, libdl, librt, libpthread, the loader), libgcc_s and libstdc++.
BIN=${VCBACKUP_BINARY:-$ROOT/target/release/vcbackup}
if [[ -f $BIN ]] && command -v readelf >/dev/null 2>&1; then
    check_binary() {
        local needed bad_libs glibc
        needed=$(readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
        [[ -n $needed ]] || { echo "no NEEDED entries: static binary? (fine) or not ELF"; readelf -h "$1" >/dev/null || return 1; return 0; }
        bad_libs=$(grep -vxE 'libc\.so\.6|libm\.so\.6|libdl\.so\.2|librt\.so\.1|libpthread\.so\.0|libgcc_s\.so\.1|libstdc\+\+\.so\.6|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1' <<<"$needed")
        [[ -z $bad_libs ]] || { echo "not in distroless/cc-debian12: $bad_libs"; return 1; }
        glibc=$(readelf -V "$1" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)
        [[ -z $glibc ]] || printf '%s\n' "$glibc" GLIBC_2.36 | sort -CV || { echo "needs $glibc > GLIBC_2.36"; return 1; }
    }
    check "dynamic section: ${BIN#"$ROOT/"} needs only glibc<=2.36, libgcc_s, libstdc++" check_binary "$BIN"
else
    bad "dynamic section: no binary at ${BIN#"$ROOT/"} (build it, or set VCBACKUP_BINARY)"
fi

if [[ $failed -ne 0 ]]; then echo "check-manifests: FAILED"; exit 1; fi
echo "check-manifests: all checks passed"
