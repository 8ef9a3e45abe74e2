// Validates custom resources against the committed CRD schemas (schemas/node_modules: a
// node_modules of their own, so their imports across these packages resolve; compiled by
// @kubernetes-models from the operators' API types). Reads a JSON array of objects on stdin and
// prints a JSON array with, per object, [] or its schema errors. Unknown kinds are an error: the
// caller decides which kinds are custom resources. Used by deploy/check/check_chart.py.
import { readFileSync } from "node:fs";

const roots = JSON.parse(readFileSync(new URL("./roots.json", import.meta.url)));
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const root = roots[`${obj.apiVersion} ${obj.kind}`];
  if (!root) {
    results.push([`no committed schema for ${obj.apiVersion} ${obj.kind}`]);
    continue;
  }
  const { validate } = await import(new URL(`./schemas/node_modules/${root}`, import.meta.url));
  const ok = validate(obj);
  results.push(ok ? [] : validate.errors.map((e) => `${e.instancePath || "/"}: ${e.keyword} ${JSON.stringify(e.params)}`));
}
process.stdout.write(JSON.stringify(results));
