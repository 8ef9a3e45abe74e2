"""Scenarios 2 and 3: `helm upgrade` to a release with a new additive migration, then `helm
rollback` across it, both under CreateOrder load through the order Service.

CI builds one binary, so the "new release" is made of what a release changes: values that change
every pod template (a pod annotation: every Deployment rolls per its strategy) and a new migration
of the order database applied before the rollout, by a pre-upgrade hook Job that a post-renderer
adds (what `helm upgrade --post-renderer` may do) after the chart's own migration Job: an additive
`ALTER TABLE … ADD COLUMN` recorded in `_sqlx_migrations` as sqlx's migrator records it. The
rolled pods then run a binary one migration behind its schema, which is exactly what every pod
faces after the rollback: an older binary serving a schema with a newer additive migration.
Rollback re-applies revision 1's manifest (pods roll again); the migration stays. Every
CreateOrder acknowledged OK by any load of the run must still be in the order database."""

from __future__ import annotations

import copy
import subprocess
import time
from typing import Callable

from podrunner import Cluster, Release

from .edge import Edge
from .load import Load, acknowledged, summary

RATE = 100
VERSION = 20990101000000  # later than any migration in services/order/migrations
MIGRATION = "ALTER TABLE orders ADD COLUMN IF NOT EXISTS gift_note TEXT"
SQL = f"""
BEGIN;
{MIGRATION};
INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
SELECT {VERSION}, 'podrunner additive', true, sha384(convert_to($m${MIGRATION}$m$, 'UTF8')), 0
WHERE NOT EXISTS (SELECT FROM _sqlx_migrations WHERE version = {VERSION});
COMMIT;
"""


def migration_hook(release: str, namespace: str, passwords: str) -> Callable[[list[dict]], list[dict]]:
    """A post-renderer adding the pre-upgrade Job that applies the new migration as the order
    role (its password from the `postgresql.existingSecret`, the URL composed as the chart's pods
    compose theirs)."""
    def post_render(objects: list[dict]) -> list[dict]:
        labels = {"app.kubernetes.io/name": "shopmesh", "app.kubernetes.io/instance": release, "app.kubernetes.io/component": "migrate"}
        job = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{release}-podrunner-migration", "namespace": namespace, "labels": labels,
                         "annotations": {"helm.sh/hook": "pre-upgrade", "helm.sh/hook-weight": "10",
                                         "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}},
            "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 120, "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "migrate", "image": "postgres:17.6", "command": ["psql", "-v", "ON_ERROR_STOP=1", "-X", "-d", "$(DATABASE_URL)", "-c", SQL],
                                "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": passwords, "key": "order-password"}}},
                                        {"name": "DATABASE_URL", "value": f"postgres://shopmesh_order:$(PASSWORD)@{release}-postgresql.{namespace}.svc.cluster.local.:5432/shopmesh_order"}],
                                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}}]}}},
        }
        return objects + [job]
    return post_render


def rolled(values: dict, revision: str) -> dict:
    """A pod annotation on each service (not under `defaults`, which the bundled PostgreSQL now
    takes too: a database restart is not what this upgrade is about)."""
    out = copy.deepcopy(values)
    for svc in ("catalog", "order", "payment", "user"):
        out.setdefault("services", {}).setdefault(svc, {}).setdefault("podAnnotations", {})["podrunner/revision"] = revision
    return out


def psql(cluster: Cluster, namespace: str, release: str, db: str, sql: str) -> str:
    pg = cluster.workload("StatefulSet", namespace, f"{release}-postgresql").pods[0]
    done = subprocess.run(pg.mains[0].exec_argv(["psql", "-X", "-At", "-d", db, "-c", sql]), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"psql: {done.stderr.strip()}"
    return done.stdout.strip()


def _ready_or_say_calls(cluster: Cluster, release: Release, load: Load, what: str) -> float:
    """Seconds until the release is Ready; if it never is, the failure also gives the load's figures."""
    try:
        return cluster.wait(what, release.ready, 120)
    except AssertionError as e:
        raise AssertionError(f"{e}\nmeanwhile: {summary(load.wait())}") from None


def upgrade(cluster: Cluster, release: Release, edge: Edge, values: dict) -> str:
    load = Load(edge, RATE, 75, "upgrade")
    time.sleep(5)
    start = time.monotonic()
    release.upgrade(rolled(values, "2"), post_renderer=migration_hook(release.name, release.namespace, values["postgresql"]["existingSecret"]))
    took = _ready_or_say_calls(cluster, release, load, "the upgraded release Ready")
    report = load.wait()
    applied = psql(cluster, release.namespace, release.name, "shopmesh_order", f"SELECT count(*) FROM _sqlx_migrations WHERE version = {VERSION}")
    assert applied == "1", "the new migration is not recorded"
    assert report["failed"] == 0, f"calls failed during the upgrade: {summary(report)}"
    return f"revision {len(release.revisions)}: migration {VERSION} applied by the pre-upgrade hook, rollout Ready {time.monotonic() - start:.0f} s after helm upgrade ({took:.0f} s waiting); {summary(report)}"


def rollback(cluster: Cluster, release: Release, edge: Edge) -> str:
    load = Load(edge, RATE, 60, "rollback")
    time.sleep(5)
    start = time.monotonic()
    release.rollback(1)
    _ready_or_say_calls(cluster, release, load, "the rolled-back release Ready")
    ready = time.monotonic() - start
    report = load.wait()
    ids = acknowledged(edge)
    stored = set(psql(cluster, release.namespace, release.name, "shopmesh_order", "SELECT id FROM orders").split())
    found = len(set(ids) & stored)
    assert report["failed"] == 0, f"calls failed during the rollback: {summary(report)}"
    assert found == len(ids), f"{len(ids) - found} of {len(ids)} acknowledged orders are not in the order database"
    return f"revision {len(release.revisions)} (= 1), every pod Ready {ready:.0f} s after helm rollback; {summary(report)}; {found} of {len(ids)} acknowledged orders in the database, 0 lost"
