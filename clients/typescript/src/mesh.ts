// Starts the `shopmesh` binary the way a user runs it (no subcommand: every service), on free
// loopback ports with SQLite files in a temporary directory, and reads the addresses it prints.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export interface Mesh {
  /** Address per service as printed in the banner, e.g. user -> 127.0.0.1:41234. */
  addrs: Map<string, string>;
  /** Fully-qualified gRPC service per banner name, e.g. user -> shopmesh.user.v1.UserService. */
  services: Map<string, string>;
  /** Sends SIGTERM and resolves with the exit code (the mesh drains and exits 0). */
  stop(): Promise<number | null>;
}

// A banner line: "  order    127.0.0.1:50052   shopmesh.order.v1.OrderService".
const BANNER_LINE = /^\s+([a-z]+)\s+(\d+\.\d+\.\d+\.\d+:\d+)\s+(\S+)/;

export async function startMesh(binary: string): Promise<Mesh> {
  // Every service the binary has: each has --<svc>-listen and --<svc>-database-url in --help.
  // Asking the binary instead of listing user/order/payment here gives a new service (the
  // catalog) a free port and its own database too.
  const help = execFileSync(binary, ["--help"], { encoding: "utf8" });
  // Once each: a flag's help may name another service's flag (the read URL names the primary's).
  const names = [...new Set([...help.matchAll(/--([a-z]+)-database-url\b/g)].map((m) => m[1]))]
    .filter((n) => help.includes(`--${n}-listen`));
  if (names.length === 0) throw new Error(`${binary} --help lists no --<service>-database-url flags`);
  const data = mkdtempSync(join(tmpdir(), "shopmesh-ts-"));
  const args = names.flatMap((n) => [`--${n}-listen=127.0.0.1:0`, `--${n}-database-url=sqlite://${data}/${n}.db`]);
  // The admin port too, so nothing here needs a fixed port.
  if (/--metrics-listen\b/.test(help)) args.push("--metrics-listen=127.0.0.1:0");

  const proc: ChildProcess = spawn(binary, args, {
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  const addrs = new Map<string, string>();
  const services = new Map<string, string>();
  // Not a timing assertion: only a guard so a binary that hangs before its banner cannot hang CI.
  const guard = setTimeout(() => proc.kill("SIGKILL"), 60_000);
  const lines = createInterface({ input: proc.stdout! });
  for await (const line of lines) {
    const m = BANNER_LINE.exec(line);
    if (m && names.includes(m[1])) {
      addrs.set(m[1], m[2]);
      services.set(m[1], m[3]);
    }
    if (/Ctrl-C stops/.test(line)) break;
  }
  clearTimeout(guard);
  proc.stdout!.resume(); // keep draining so the mesh never blocks on a full pipe
  const missing = names.filter((n) => !addrs.has(n));
  if (missing.length > 0) {
    proc.kill("SIGKILL");
    throw new Error(`shopmesh did not print an address for ${missing.join(", ")}`);
  }
  return {
    addrs,
    services,
    async stop() {
      proc.kill("SIGTERM");
      const code = await exited;
      rmSync(data, { recursive: true, force: true });
      return code;
    },
  };
}
