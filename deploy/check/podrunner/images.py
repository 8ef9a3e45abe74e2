"""The image map: what each image of the render runs on this machine, with the parts of the image's
contract a pod depends on (entrypoint, default command, environment, working directory, user,
/etc/passwd, directories the image ships) and the machine's directories it hides.

- the shopmesh image runs the binary built in CI, at /usr/local/bin/shopmesh, as the Dockerfile
  says (distroless nonroot: uid 65532, WORKDIR /home/nonroot);
- the official postgres image runs Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin) behind
  postgres-entrypoint.sh, which follows docker-entrypoint.sh's contract (POSTGRES_USER/PASSWORD/DB,
  /docker-entrypoint-initdb.d, PGDATA in its volume, uid 999);
- the official nats image runs Debian's nats-server (/usr/sbin/nats-server, 2.9 with JetStream),
  whatever its tag says; its entrypoint runs nats-server with the pod's arguments (the image's
  docker-entrypoint.sh does so for arguments that start with `-`, as the chart's do);
- `podrunner/toolbox` is this machine's filesystem as it is (the scenarios' client pods)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PG_BIN = "/usr/lib/postgresql/15/bin"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# This machine's directories no image has.
MASKS = ["/home", "/root", "/tmp", "/var/tmp", "/work", "/opt", "/srv", "/mnt", "/run", "/var/lib/postgresql"]


@dataclass
class Image:
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    files: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> (mode, uid, gid)
    binds: dict[str, str] = field(default_factory=dict)  # path in the image -> file on this machine
    masks: list[str] = field(default_factory=lambda: list(MASKS))


def shopmesh(binary: Path) -> Image:
    return Image(
        entrypoint=["/usr/local/bin/shopmesh"], cmd=["serve", "user"],
        env={"PATH": PATH, "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
             "SHOPMESH_USER_LISTEN": "0.0.0.0:50051", "SHOPMESH_ORDER_LISTEN": "0.0.0.0:50052",
             "SHOPMESH_PAYMENT_LISTEN": "0.0.0.0:50053", "SHOPMESH_METRICS_LISTEN": "0.0.0.0:9464"},
        workdir="/home/nonroot", uid=65532, gid=65532,
        files={"/etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                              "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
               "/etc/group": "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"},
        dirs={"/home/nonroot": (0o700, 65532, 65532), "/tmp": (0o1777, 0, 0)},
        binds={"/usr/local/bin/shopmesh": str(binary)},
    )


def postgres() -> Image:
    return Image(
        entrypoint=["docker-entrypoint.sh"], cmd=["postgres"],
        env={"PATH": f"{PATH}:{PG_BIN}", "PG_MAJOR": "15", "PGDATA": "/var/lib/postgresql/data", "LANG": "C.UTF-8"},
        files={"/etc/passwd": "root:x:0:0:root:/root:/bin/bash\npostgres:x:999:999::/var/lib/postgresql:/bin/bash\n",
               "/etc/group": "root:x:0:\npostgres:x:999:\n"},
        dirs={"/var/lib/postgresql": (0o755, 999, 999), "/var/lib/postgresql/data": (0o777, 999, 999),
              "/var/run/postgresql": (0o3777, 999, 999), "/docker-entrypoint-initdb.d": (0o755, 0, 0),
              "/tmp": (0o1777, 0, 0)},
        binds={"/usr/local/bin/docker-entrypoint.sh": str(HERE / "postgres-entrypoint.sh")},
    )


def nats() -> Image:
    return Image(entrypoint=["/usr/sbin/nats-server"], cmd=["--config", "/etc/nats/nats-server.conf"], env={"PATH": PATH},
                 files={"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "/etc/group": "root:x:0:\n"})


def toolbox() -> Image:
    return Image(entrypoint=[], cmd=["sleep", "infinity"], env={"PATH": PATH}, masks=["/run"], dirs={})


class ImageMap:
    """Image reference -> Image, by repository name (registry and tag do not matter here)."""

    def __init__(self, binary: Path, shopmesh_repository: str = "shopmesh") -> None:
        self.images = {shopmesh_repository.rsplit("/", 1)[-1]: shopmesh(binary), "postgres": postgres(), "nats": nats(), "toolbox": toolbox()}

    def __getitem__(self, ref: str) -> Image:
        """The image of a reference: `registry/path/name:tag` or `name@sha256:…` -> by `name`."""
        repository = ref.split("@", 1)[0]
        last = repository.rsplit("/", 1)[-1]
        name = last.split(":", 1)[0]
        if name not in self.images:
            raise KeyError(f"image {ref!r} is not in the image map ({', '.join(sorted(self.images))})")
        return self.images[name]
