"""Load through the Services while something happens: `shopmesh bench create-order` in the edge
pod at a fixed rate, every CreateOrder recorded (request id, final code, order id) in a volume of
the pod the runner reads; and the payment pods' served Charges read from their metrics port."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

from .edge import Edge

RETRIES = 2


class Load:
    def __init__(self, edge: Edge, rate: int, seconds: int, name: str) -> None:
        self.record = edge.out / f"{name}.jsonl"
        self.record.unlink(missing_ok=True)
        # --retries: as an edge proxy re-sends a call whose connection was lost (a pod's GOAWAY
        # racing a request), with the same request id, so an order is never made twice.
        argv = edge.bench_argv("create-order", f"--rate={rate}", f"--duration={seconds}s", "--users=20", "--timeout=5s",
                               f"--retries={RETRIES}", "--json", "--quiet", f"--record=/out/{name}.jsonl")
        self.proc = subprocess.Popen(edge.pod.container("edge").exec_argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.seconds = seconds

    def wait(self) -> dict:
        out, err = self.proc.communicate(timeout=self.seconds + 120)
        assert self.proc.returncode == 0, f"bench exited {self.proc.returncode}: {err.strip()[-500:]}"
        report = json.loads(out)
        report["failed"] = sum(n for code, n in report["codes"].items() if code != "OK") + report["not_sent"]
        return report



def acknowledged(edge: Edge) -> list[str]:
    """The order id of every CreateOrder answered OK by every load of the run so far."""
    ids = set()
    for record in edge.out.glob("*.jsonl"):
        for line in record.read_text().splitlines():
            row = json.loads(line)
            if row.get("code") == "OK" and row.get("order_id"):
                ids.add(row["order_id"])
    return sorted(ids)


def summary(report: dict) -> str:
    lat = report.get("latency_ms") or {}
    codes = ", ".join(f"{c} {n}" for c, n in sorted(report["codes"].items()))
    return (f"{report['sent']} CreateOrder at {report['achieved_rate']:.0f}/s, {report['failed']} failed ({codes}), "
            f"{report['retries']} re-sent by the edge, p99 {lat.get('p99', float('nan')):.0f} ms")


def charges_served(ip: str, port: int = 9464) -> int:
    """Charge calls a payment pod has answered, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=3) as r:
        text = r.read().decode()
    return sum(int(float(m.group(1))) for m in re.finditer(r'^rpc_server_call_duration_seconds_count\{[^}]*rpc_method="Charge"[^}]*\} (\S+)$', text, re.M))


