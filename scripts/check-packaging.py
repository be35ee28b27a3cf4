#!/usr/bin/env python3
"""Packaging checks that `make test` runs (`make check-packaging`):

* the chart lints (Helm v4 engine, strict) and renders under several sets of values;
* every rendered object is valid against the Kubernetes schemas (oldest and newest supported
  versions, strict: unknown fields are errors);
* the operator's pod is hardened and probed, and its RBAC is exactly what the operator calls,
  cluster-wide or one Role per watched namespace, never more, plus leader election's Lease
  in the release namespace only;
* the CRD the chart installs is crds/simpsonmodel.yaml, kept on uninstall;
* the example SimpsonModels validate against the CRD's openAPIV3Schema with the API server's
  strict field validation, and broken copies of them are rejected;
* hadolint passes on the Dockerfile, which has the three targets, each running as non-root.

Run with the tools venv that scripts/setup-test.sh makes: .deps/tools/bin/python.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
import sys
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "face2simpson"
CRD_FILE = ROOT / "crds" / "simpsonmodel.yaml"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
RELEASE, NAMESPACE = "f2s", "face2simpson-system"

# Every (API group, resource, verb) the operator uses, read off its API calls (controller.rs,
# main.rs, kube-runtime's watcher and event recorder); docs/operator.md explains each one, and
# the mock-API scenarios in operator/tests/scenarios.rs assert those calls. Least privilege means
# the rendered RBAC grants exactly this set: no `get` where only list/watch/patch are used.
OPERATOR_CALLS = {
    # get: the raw status of a model the operator cannot deserialize (Degraded=InvalidSpec).
    ("face2simpson.io", "simpsonmodels", v) for v in ("get", "list", "watch")
} | {
    ("face2simpson.io", "simpsonmodels/status", "patch")
} | {
    # get: after a 409 on create, the existing Job is read to learn its real state and owner.
    ("batch", "jobs", v) for v in ("get", "list", "watch", "create", "delete")
} | {
    # get: an existing <name>-inference is checked to be the model's own before an apply.
    # delete: a Deployment made before the uid label is replaced (its selector is immutable).
    ("apps", "deployments", v) for v in ("get", "list", "watch", "create", "patch", "delete")
} | {
    # The ReplicaSets such a Deployment leaves behind (orphaned), deleted once the new one serves.
    ("apps", "replicasets", v) for v in ("list", "delete")
} | {
    ("", "services", v) for v in ("get", "list", "watch", "create", "patch")
} | {("", "secrets", "get")} | {
    # spec.inference.autoscaling: server-side apply (may create), deleted when unset.
    (g, r, v)
    for g, r in (("autoscaling", "horizontalpodautoscalers"), ("policy", "poddisruptionbudgets"))
    for v in ("get", "create", "patch", "delete")
} | {
    ("events.k8s.io", "events", v) for v in ("create", "patch")
}

# Leader election, in the release namespace only (operator/src/leader.rs): read and renew the
# release's Lease (get/update pinned to its name), create it the first time, and record the
# LeaderElection event on it. No patch, list or watch: the elector reads and PUTs.
LEADER_ELECTION_CALLS = {
    ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")
} | {
    ("events.k8s.io", "events", v) for v in ("create", "patch")
}

# Value sets the chart must render correctly.
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "logFormat": "text",
        "crds": {"install": False},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "image": {"repository": "registry.example.com/f2s/operator", "tag": "1.2.3"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node-role", "operator": "In", "values": ["ops"]}]}]}}},
    },
    "existing-service-account": {
        "serviceAccount": {"create": False, "name": "ops-operator"},
        "crds": {"keep": False},
    },
    "no-leader-election": {
        "leaderElection": {"enabled": False},
        "replicas": 1,
        "watchNamespaces": ["team-a"],
    },
    "admission-allow-lists": {
        "admissionPolicy": {"allowedServiceAccounts": ["trainer-irsa", "reader"],
                            "allowedImagePrefixes": ["registry.example.com/f2s/"]},
        "watchNamespaces": ["team-a"],
    },
    "no-admission-policy": {
        "admissionPolicy": {"enabled": False},
    },
    "three-replicas-fast-failover": {
        "replicas": 3,
        "leaderElection": {"leaseDuration": "8s", "renewDeadline": "5s", "retryPeriod": "1s"},
    },
}


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(values: dict[str, Any], release: str = RELEASE) -> tuple[list[dict[str, Any]], str]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values=values, name=release, namespace=NAMESPACE, is_install=True)
    notes = "".join(v for k, v in out.items() if k.endswith("NOTES.txt"))
    objects = [d for k, v in sorted(out.items()) if not k.endswith(".txt") for d in docs_of(v)]
    return objects, notes


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule.get("apiGroups", [])
        for r in rule.get("resources", [])
        for v in rule.get("verbs", [])
    }


def check_lint(c: Checks) -> None:
    for name, values in SCENARIOS.items():
        report = helm.lint(CHART, values=values, strict=True, namespace=NAMESPACE)
        # Severity 1 is informational ("icon is recommended"); 2 and 3 are warnings and errors.
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        c.check(not bad, f"helm lint ({name}): {bad}")
    # The values schema must reject a typo instead of ignoring it, and the chart must refuse
    # several replicas without leader election, and a duration the operator cannot parse.
    for bad in ({"watchNamespace": "typo"},
                {"leaderElection": {"enabled": False}},
                {"leaderElection": {"leaseDuration": "15"}},
                {"leaderElection": {"leaderElect": True}}):
        try:
            render(bad)
            c.check(False, f"the chart rendered with {bad}")
        except helm.HelmError:
            c.passed += 1


def check_edge_values(c: Checks) -> None:
    """Values that trip templates: the longest release name Helm allows, labels that collide with
    the selector, strings YAML would read as other types."""
    release = "r" * 53
    values = {
        "podLabels": {"app.kubernetes.io/name": "other", "team": "ml"},
        "podAnnotations": {"example.com/note": "yes"},
        "priorityClassName": "true",
        "watchNamespaces": ["123", "team-a"],
        "imagePullSecrets": [{"name": "regcred"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "metrics": {"service": {"annotations": {"prometheus.io/scrape": "true"}}},
    }
    objects, _ = render(values, release)
    check_kubernetes_schemas(c, "edge-values", objects)
    for obj in objects:
        name = obj["metadata"]["name"]
        c.check(len(name) <= 63, f"edge-values: {obj['kind']} name {name!r} is {len(name)} > 63 characters")
        ns = obj["metadata"].get("namespace", NAMESPACE)
        c.check(isinstance(ns, str), f"edge-values: {obj['kind']} namespace {ns!r} is not a string")
    (deploy,) = of_kind(objects, "Deployment")
    pod = deploy["spec"]["template"]
    c.check(all(pod["metadata"]["labels"].get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items()),
            "edge-values: podLabels overrode a selector label")
    c.check(pod["metadata"]["labels"].get("team") == "ml", "edge-values: podLabels dropped")
    c.check(pod["spec"].get("priorityClassName") == "true", "edge-values: priorityClassName is not a string")


def check_kubernetes_schemas(c: Checks, name: str, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a Kubernetes API; checked against the Service below
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                c.passed += 1
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                c.failures.append(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {e}")


def check_hardening(c: Checks, name: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    (deploy,) = of_kind(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    c.check(psc.get("runAsNonRoot") is True, f"{name}: pod lacks runAsNonRoot")
    c.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod lacks seccomp RuntimeDefault")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        c.check(not pod.get(key), f"{name}: pod sets {key}")
    election = values.get("leaderElection", {})
    if election.get("enabled", True):
        # Standbys are ready, so a rolling update brings a new one up before stopping an old one.
        c.check(deploy["spec"]["replicas"] == values.get("replicas", 2)
                and deploy["spec"]["strategy"]["type"] == "RollingUpdate",
                f"{name}: with leader election want {values.get('replicas', 2)} RollingUpdate replicas")
    else:
        c.check(deploy["spec"]["replicas"] <= 1 and deploy["spec"]["strategy"]["type"] == "Recreate",
                f"{name}: without leader election the operator must be one Recreate replica")
    several = election.get("enabled", True) and values.get("replicas", 2) > 1
    selector = deploy["spec"]["selector"]["matchLabels"]
    pdbs = of_kind(objects, "PodDisruptionBudget")
    # Several replicas: a drain never evicts leader and standby together, and they spread.
    c.check(len(pdbs) == (1 if several else 0), f"{name}: {len(pdbs)} PodDisruptionBudgets for the operator")
    for pdb in pdbs:
        c.check(pdb["spec"].get("maxUnavailable") == 1 and pdb["spec"]["selector"]["matchLabels"] == selector,
                f"{name}: the PodDisruptionBudget does not keep one operator replica up")
    if values.get("affinity"):
        c.check(pod.get("affinity") == values["affinity"], f"{name}: affinity not passed through")
    elif several:
        terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution", [])
        c.check(any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
                    and t["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector for t in terms),
                f"{name}: replicas do not prefer different nodes")
    for ctr in pod["containers"]:
        sc = ctr.get("securityContext", {})
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{name}: {ctr['name']} root filesystem writable")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{name}: {ctr['name']} allows privilege escalation")
        c.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: {ctr['name']} keeps capabilities")
        c.check(not sc.get("privileged"), f"{name}: {ctr['name']} is privileged")
        res = ctr.get("resources", {})
        c.check("memory" in res.get("limits", {}) and "cpu" in res.get("requests", {}),
                f"{name}: {ctr['name']} lacks a memory limit or a CPU request")
        ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
        c.check(ports.get("admin") == values.get("metrics", {}).get("port", 9090), f"{name}: admin port {ports}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = ctr.get(probe, {}).get("httpGet", {})
            c.check(get.get("path") == path and get.get("port") == "admin", f"{name}: {probe} is {get}")
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        want_ns = ",".join(values.get("watchNamespaces", [])) or None
        c.check(env.get("WATCH_NAMESPACE") == want_ns, f"{name}: WATCH_NAMESPACE={env.get('WATCH_NAMESPACE')}")
        c.check(env.get("LOG_FORMAT") == values.get("logFormat", "json"), f"{name}: LOG_FORMAT={env.get('LOG_FORMAT')}")
        fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in ctr.get("env", [])}
        c.check(fields.get("POD_NAME") == "metadata.name", f"{name}: POD_NAME is not the pod's name")
        enabled = election.get("enabled", True)
        c.check(env.get("LEADER_ELECT") == str(enabled).lower(), f"{name}: LEADER_ELECT={env.get('LEADER_ELECT')}")
        if enabled:
            c.check(fields.get("POD_NAMESPACE") == "metadata.namespace", f"{name}: the Lease is not in the pod's namespace")
            c.check(env.get("LEADER_ELECT_LEASE_NAME") == f"{RELEASE}-face2simpson-operator",
                    f"{name}: LEADER_ELECT_LEASE_NAME={env.get('LEADER_ELECT_LEASE_NAME')}")
            for key, var, default in (("leaseDuration", "LEADER_ELECT_LEASE_DURATION", "15s"),
                                      ("renewDeadline", "LEADER_ELECT_RENEW_DEADLINE", "10s"),
                                      ("retryPeriod", "LEADER_ELECT_RETRY_PERIOD", "2s")):
                c.check(env.get(var) == election.get(key, default), f"{name}: {var}={env.get(var)}")
        image = values.get("image", {})
        if "tag" in image:
            c.check(ctr["image"] == f"{image['repository']}:{image['tag']}", f"{name}: image {ctr['image']}")
    for key in ("nodeSelector", "tolerations"):
        if key in values:
            c.check(pod.get(key) == values[key], f"{name}: {key} not passed through")
    if "resources" in values:
        c.check(pod["containers"][0]["resources"] == values["resources"], f"{name}: resources not passed through")


def check_rbac(c: Checks, name: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    sa_name = values.get("serviceAccount", {}).get("name") or f"{RELEASE}-face2simpson-operator"
    sas = of_kind(objects, "ServiceAccount")
    if values.get("serviceAccount", {}).get("create", True):
        c.check([s["metadata"]["name"] for s in sas] == [sa_name], f"{name}: service accounts {sas}")
    else:
        c.check(not sas, f"{name}: made a ServiceAccount although serviceAccount.create is false")
    (deploy,) = of_kind(objects, "Deployment")
    c.check(deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa_name, f"{name}: pod runs as another account")

    # The leader-election Role is checked on its own: it lives in the release namespace whatever
    # the operator watches.
    lease_name = f"{RELEASE}-face2simpson-operator"
    election_roles = [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    election_bindings = [b for b in of_kind(objects, "RoleBinding") if b["metadata"]["name"].endswith("-leader-election")]
    if values.get("leaderElection", {}).get("enabled", True):
        c.check(len(election_roles) == 1 and len(election_bindings) == 1,
                f"{name}: want one leader-election Role and RoleBinding, got {len(election_roles)}, {len(election_bindings)}")
        for role in election_roles:
            c.check(role["metadata"]["namespace"] == NAMESPACE, f"{name}: the leader-election Role is not in the release namespace")
            c.check(grants(role["rules"]) == LEADER_ELECTION_CALLS,
                    f"{name}: leader-election Role grants {sorted(grants(role['rules']) ^ LEADER_ELECTION_CALLS)} wrongly")
            for rule in role["rules"]:
                # get and update pinned to the release's Lease; create cannot be pinned.
                if {"get", "update"} & set(rule["verbs"]) and rule["resources"] == ["leases"]:
                    c.check(rule.get("resourceNames") == [lease_name], f"{name}: Lease rule not pinned to {lease_name}: {rule}")
        for b in election_bindings:
            c.check(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                     "name": election_roles[0]["metadata"]["name"] if election_roles else None}
                    and b["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
                    and b["metadata"]["namespace"] == NAMESPACE,
                    f"{name}: leader-election RoleBinding {b['metadata']} binds the wrong subject or role")
    else:
        c.check(not election_roles and not election_bindings, f"{name}: leader-election RBAC without leader election")

    # The <release>-edit/-view ClusterRoles are for people (aggregated into edit/admin/view),
    # bound by nobody here and granting the operator nothing.
    user_roles = [r for r in of_kind(objects, "ClusterRole")
                  if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"].get("labels", {}))]
    check_user_roles(c, name, user_roles)
    roles = [r for r in of_kind(objects, "ClusterRole") if r not in user_roles] + [
        r for r in of_kind(objects, "Role") if r not in election_roles]
    bindings = of_kind(objects, "ClusterRoleBinding") + [b for b in of_kind(objects, "RoleBinding") if b not in election_bindings]
    namespaces = values.get("watchNamespaces", [])
    if namespaces:
        c.check(all(r in user_roles for r in of_kind(objects, "ClusterRole")) and not of_kind(objects, "ClusterRoleBinding"),
                f"{name}: namespaced install grants the operator cluster-wide rights")
        c.check(sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces),
                f"{name}: Roles in {[r['metadata'].get('namespace') for r in roles]}, want {namespaces}")
    else:
        c.check(len(roles) == 1 and roles[0]["kind"] == "ClusterRole", f"{name}: want one ClusterRole, got {len(roles)} roles")
    for role in roles:
        rules = role.get("rules", [])
        c.check(not any("*" in (r.get(k) or []) for r in rules for k in ("apiGroups", "resources", "verbs")),
                f"{name}: {role['kind']} uses a wildcard")
        c.check(not any(r.get("resourceNames") == [] for r in rules), f"{name}: empty resourceNames")
        got = grants(rules)
        c.check(got == OPERATOR_CALLS,
                f"{name}: {role['kind']} grants {sorted(got - OPERATOR_CALLS)} beyond and lacks {sorted(OPERATOR_CALLS - got)}")
    c.check(len(bindings) == len(roles), f"{name}: {len(bindings)} bindings for {len(roles)} roles")
    for b in bindings:
        subject_ok = b["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
        ref_ok = any(r["kind"] == b["roleRef"]["kind"] and r["metadata"]["name"] == b["roleRef"]["name"]
                     and r["metadata"].get("namespace") == b["metadata"].get("namespace") for r in roles)
        c.check(subject_ok and ref_ok, f"{name}: {b['kind']} {b['metadata']} binds the wrong subject or role")

    # deploy/operator.yaml (the kubectl path) must grant the same.
    (plain,) = [d for d in docs_of((ROOT / "deploy" / "operator.yaml").read_text()) if d["kind"] == "ClusterRole"]
    c.check(grants(plain["rules"]) == OPERATOR_CALLS, "deploy/operator.yaml's ClusterRole differs from the chart's rules")


USER_EDIT = {("face2simpson.io", "simpsonmodels", v)
             for v in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")} | {
    ("face2simpson.io", "simpsonmodels/status", v) for v in ("get", "list", "watch")}
USER_VIEW = {("face2simpson.io", r, v) for r in ("simpsonmodels", "simpsonmodels/status") for v in ("get", "list", "watch")}


def check_user_roles(c: Checks, name: str, roles: list[dict[str, Any]]) -> None:
    by_name = {r["metadata"]["name"]: r for r in roles}
    c.check(sorted(by_name) == [f"{RELEASE}-edit", f"{RELEASE}-view"], f"{name}: user ClusterRoles {sorted(by_name)}")
    for suffix, grants_want, labels in (("edit", USER_EDIT, ("aggregate-to-edit", "aggregate-to-admin")),
                                        ("view", USER_VIEW, ("aggregate-to-view",))):
        role = by_name.get(f"{RELEASE}-{suffix}")
        if role is None:
            continue
        got = grants(role["rules"])
        c.check(got == grants_want, f"{name}: {suffix} role grants {sorted(got ^ grants_want)} wrongly")
        for label in labels:
            c.check(role["metadata"]["labels"].get(f"rbac.authorization.k8s.io/{label}") == "true",
                    f"{name}: {suffix} role lacks {label}")


def check_admission(c: Checks, name: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    policies = of_kind(objects, "ValidatingAdmissionPolicy")
    bindings = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    if not values.get("admissionPolicy", {}).get("enabled", True):
        c.check(not policies and not bindings, f"{name}: an admission policy although it is disabled")
        return
    c.check(len(policies) == 1 and len(bindings) == 1, f"{name}: want one policy and one binding")
    if len(policies) != 1 or len(bindings) != 1:
        return
    (policy,), (binding,) = policies, bindings
    c.check(binding["spec"]["policyName"] == policy["metadata"]["name"], f"{name}: the binding names another policy")
    c.check(binding["spec"]["validationActions"] == ["Deny"], f"{name}: the policy does not deny")
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    c.check(rules == [{"apiGroups": ["face2simpson.io"], "apiVersions": ["*"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["simpsonmodels"]}],
            f"{name}: the policy matches {rules}")
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    for needle in ("hostPath", "serviceAccountName", "image.startsWith"):
        for workload in ("training", "inference"):
            c.check(needle in expressions and f"object.spec.{workload}" in expressions,
                    f"{name}: no {needle} check for {workload}")
    accounts = values.get("admissionPolicy", {}).get("allowedServiceAccounts", [])
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    c.check(json.loads(variables["accounts"]) == accounts, f"{name}: accounts {variables['accounts']} != {accounts}")
    namespaces = values.get("watchNamespaces", [])
    selector = binding["spec"].get("matchResources", {}).get("namespaceSelector")
    if namespaces:
        c.check(selector == {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                   "values": namespaces}]},
                f"{name}: the binding covers {selector}, want the watched namespaces")
    else:
        c.check(selector is None, f"{name}: the binding is limited to {selector}, want every namespace")


def check_metrics(c: Checks, name: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    (deploy,) = of_kind(objects, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    (svc,) = of_kind(objects, "Service")
    c.check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
            f"{name}: the metrics Service selects no operator pod")
    c.check([p["targetPort"] for p in svc["spec"]["ports"]] == ["admin"], f"{name}: metrics Service port")
    monitors = of_kind(objects, "ServiceMonitor")
    enabled = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    c.check(len(monitors) == (1 if enabled else 0), f"{name}: {len(monitors)} ServiceMonitors, enabled={enabled}")
    for m in monitors:
        sel = m["spec"]["selector"]["matchLabels"]
        c.check(all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items()),
                f"{name}: the ServiceMonitor selects no Service")
        c.check({e["port"] for e in m["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]},
                f"{name}: ServiceMonitor endpoint port is not a Service port")
        for k, v in values["metrics"]["serviceMonitor"].get("labels", {}).items():
            c.check(m["metadata"]["labels"].get(k) == v, f"{name}: ServiceMonitor label {k} missing")


def check_crd(c: Checks, name: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    crds = of_kind(objects, "CustomResourceDefinition")
    install = values.get("crds", {}).get("install", True)
    c.check(len(crds) == (1 if install else 0), f"{name}: {len(crds)} CRDs rendered, crds.install={install}")
    source = yaml.safe_load(CRD_FILE.read_text())
    for crd in crds:
        c.check(crd["spec"] == source["spec"], f"{name}: the chart's CRD differs from crds/simpsonmodel.yaml")
        keep = crd["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"
        c.check(keep == values.get("crds", {}).get("keep", True), f"{name}: resource-policy keep is {keep}")
    copy_in_chart = CHART / "files" / "simpsonmodel.crd.yaml"
    c.check(copy_in_chart.read_text() == CRD_FILE.read_text(),
            f"{copy_in_chart.relative_to(ROOT)} differs from crds/simpsonmodel.yaml: run `make crds`")


def strict_schema(schema: Any) -> Any:
    """The API server's strict field validation (kubectl's default): unknown fields are errors
    unless the schema preserves them."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        # OpenAPI 3.0 (the CRD's dialect) writes an exclusive bound as a boolean beside
        # minimum/maximum; draft 7, which checks the examples, wants the bound itself.
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(out.get(flag), bool):
                if out.pop(flag) and bound in out:
                    out[flag] = out.pop(bound)
        return out
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    return schema


def check_examples(c: Checks) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    versions = {f"{group}/{v['name']}": strict_schema(v["schema"]["openAPIV3Schema"]) for v in crd["spec"]["versions"]}

    def validate_sm(obj: dict[str, Any]) -> list[str]:
        schema = versions.get(obj.get("apiVersion"))
        if schema is None:
            return [f"apiVersion {obj.get('apiVersion')} is not served by the CRD"]
        # The API server checks metadata itself; the CRD schema covers the rest.
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
        name = obj.get("metadata", {}).get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            errors.append(f"metadata.name {name!r} is not a DNS label")
        return errors

    models = 0
    files = sorted((ROOT / "examples").glob("*.yaml"))
    c.check(len(files) >= 3, f"want at least three examples, found {[f.name for f in files]}")
    for path in files:
        for obj in docs_of(path.read_text()):
            where = f"examples/{path.name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            if obj.get("kind") == kind:
                models += 1
                errors = validate_sm(obj)
                c.check(not errors, f"{where}: {errors}")
                secret = obj["spec"].get("storageSecretRef", {}).get("name")
                if secret:
                    # The Secret it names is in the file, or the file says how to create it.
                    text = path.read_text()
                    in_file = [d for d in docs_of(text)
                               if d.get("kind") == "Secret" and d["metadata"]["name"] == secret]
                    c.check(len(in_file) == 1 or f"create secret generic {secret}" in text,
                            f"{where}: nothing in the file makes the Secret {secret} it names")
                # The validator must bite: broken copies are rejected.
                for label, breaks in MUTATIONS.items():
                    broken = copy.deepcopy(obj)
                    breaks(broken)
                    c.check(bool(validate_sm(broken)), f"{where}: a copy with {label} was accepted")
            else:
                for version in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(obj, version, strict=True)
                        c.passed += 1
                    except kubernetes_validate.ValidationError as e:
                        c.failures.append(f"{where}: invalid for {version}: {e}")
    c.check(models >= 3, f"want SimpsonModels in at least three examples, found {models}")


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def go(o: dict[str, Any]) -> None:
        for p in path[:-1]:
            o = o[p]
        o.pop(path[-1], None)
    return go


def _set(value: Any, *path: str) -> Callable[[dict[str, Any]], None]:
    def go(o: dict[str, Any]) -> None:
        for p in path[:-1]:
            o = o.setdefault(p, {})
        o[path[-1]] = value
    return go


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no storageUri": _drop("spec", "storageUri"),
    "no training image": _drop("spec", "training", "image"),
    "epochs as a word": _set("fifteen", "spec", "training", "epochs"),
    "a misspelt field": _set(3, "spec", "training", "epoch"),
    "an unknown top-level spec field": _set(True, "spec", "gpu"),
    "an unserved version": _set("face2simpson.io/v9", "apiVersion"),
    "a significance level of 0": _set(0, "spec", "promotion", "minSignificance"),
    "a class recall drop above 1": _set(1.5, "spec", "promotion", "maxClassRecallDrop"),
}


def check_dockerfile(c: Checks) -> None:
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    for f in ("Dockerfile", "images/rust.Containerfile"):
        r = subprocess.run([str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), f],
                           cwd=ROOT, capture_output=True, text=True)
        c.check(r.returncode == 0, f"hadolint {f}:\n{r.stdout}{r.stderr}")
    text = (ROOT / "Dockerfile").read_text()
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(1) or f"#{len(stages)}"
            stages[current] = []
        elif current:
            stages[current].append(line)
    for target in ("operator", "inference", "trainer"):
        c.check(target in stages, f"Dockerfile has no '{target}' target")
        users = [l.split()[1] for l in stages.get(target, []) if l.startswith("USER ")]
        c.check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), f"Dockerfile: {target} runs as root")
    builds = [l for l in text.replace("\\\n", " ").splitlines() if "cargo build" in l]
    c.check(bool(builds) and all("--locked" in b for b in builds), "Dockerfile: every cargo build needs --locked")


def main() -> int:
    c = Checks()
    check_lint(c)
    for name, values in SCENARIOS.items():
        objects, notes = render(values)
        c.check(bool(notes.strip()), f"{name}: NOTES.txt rendered empty")
        # A cluster-wide install can read every Secret: NOTES.txt says so, loudly, and only then.
        cluster_wide = values.get("rbac", {}).get("create", True) and not values.get("watchNamespaces")
        c.check(("read every Secret" in notes) == bool(cluster_wide),
                f"{name}: NOTES.txt must warn about cluster-wide Secret reads exactly when the RBAC is cluster-wide")
        check_kubernetes_schemas(c, name, objects)
        check_rbac(c, name, objects, values)
        check_admission(c, name, objects, values)
        check_metrics(c, name, objects, values)
        check_crd(c, name, objects, values)
        kinds = sorted(o["kind"] for o in objects)
        print(f"chart [{name}]: {len(objects)} objects ({', '.join(kinds)})")
    check_edge_values(c)
    check_examples(c)
    check_dockerfile(c)
    for failure in c.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print(f"packaging checks: {c.passed} passed, {len(c.failures)} failed "
          f"(Helm {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)})")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
