"""podrunner: a `helm template` render of helm/shopmesh run the way a kubelet would run it, on one
machine without a container runtime (network and mount namespaces, the securityContext, volumes
with the kubelet's owners and modes, probes, Helm's hook order, upgrade and rollback, cluster DNS,
NetworkPolicies evaluated). README.md says what it emulates and what it cannot.

Cluster (cluster.py) is the entry point; Release (release.py) installs a chart into it."""

from .cluster import Cluster
from .release import HookFailed, Release

__all__ = ["Cluster", "Release", "HookFailed"]
