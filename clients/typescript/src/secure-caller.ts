// A caller of another team against the mesh's secure default, with the TypeScript client
// generated from proto/ (src/gen) and Connect over HTTP/2: mutual TLS with its mesh certificate,
// a deadline on every call, the google.rpc details of errors, and calls spread over every address
// of the user service. Connect has no client-side balancer or service config: the example rotates
// over one transport per address; a caller that retries should do so (UNAVAILABLE only) for just the methods that
// clients/grpc-service-config.json gives a retryPolicy. Configured by the SHOPMESH_* variables of
// clients/secure/README.md; run by scripts/check-secure-clients (node dist/secure-caller.js).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { CatalogService } from "./gen/shopmesh/catalog/v1/catalog_pb.js";
import { OrderService, OrderState } from "./gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "./gen/shopmesh/payment/v1/payment_pb.js";
import { UserService } from "./gen/shopmesh/user/v1/user_pb.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const tls = {
  ca: readFileSync(env("SHOPMESH_CA")),
  cert: readFileSync(env("SHOPMESH_CERT")),
  key: readFileSync(env("SHOPMESH_KEY")),
  servername: env("SHOPMESH_SERVER_NAME"),
};
const options = { timeoutMs: 5000 }; // every call's deadline, sent as grpc-timeout

/** One transport per address, used in turn (round robin). */
function transport(addresses: string): Transport {
  const all = addresses.split(",").map((addr) =>
    createGrpcTransport({ baseUrl: `https://${addr}`, nodeOptions: tls }),
  );
  let next = 0;
  const pick = () => all[next++ % all.length];
  return {
    unary: (...args: Parameters<Transport["unary"]>) => pick().unary(...args),
    stream: (...args: Parameters<Transport["stream"]>) => pick().stream(...args),
  } as Transport;
}

/** The google.rpc details of an error: "field <name>" per BadRequest field violation,
 * "precondition <kind>" per PreconditionFailure violation (decoded from the wire format: both
 * messages are lists of violations whose first field is the name or kind). */
function details(err: unknown): [Code, string[]] {
  const e = ConnectError.from(err);
  const found: string[] = [];
  for (const d of e.details) {
    if (!("type" in d)) continue;
    const what = { "google.rpc.BadRequest": "field", "google.rpc.PreconditionFailure": "precondition" }[d.type];
    if (!what) continue;
    const outer = new BinaryReader(d.value);
    while (outer.pos < outer.len) {
      outer.tag(); // field 1: the repeated violations
      const violation = new BinaryReader(outer.bytes());
      while (violation.pos < violation.len) {
        const [field, wireType] = violation.tag();
        if (field === 1) found.push(`${what} ${violation.string()}`);
        else violation.skip(wireType);
      }
    }
  }
  return [e.code, found];
}

async function refused(call: Promise<unknown>): Promise<[Code, string[]]> {
  try {
    await call;
  } catch (err) {
    return details(err);
  }
  throw new Error("the call succeeded");
}

const users = createClient(UserService, transport(env("SHOPMESH_USER_ADDRS")));
const products = createClient(CatalogService, transport(env("SHOPMESH_CATALOG_ADDR")));
const orders = createClient(OrderService, transport(env("SHOPMESH_ORDER_ADDR")));
const payments = createClient(PaymentService, transport(env("SHOPMESH_PAYMENT_ADDR")));
const run = randomUUID().slice(0, 8);
const usd = (amountMinor: bigint) => ({ currencyCode: "USD", amountMinor });

const user = await users.createUser({ email: `ts-${run}@example.com`, displayName: "TS caller", requestId: `ts-user-${run}` }, options);
for (let i = 0; i < 20; i++) assert.equal((await users.getUser({ id: user.id }, options)).id, user.id);
const sku = `TS-${run.toUpperCase()}`;
await products.createProduct({ product: { sku, displayName: "TS example", active: true, unitPrice: usd(1250n) } }, options);
const order = await orders.createOrder({ userId: user.id, requestId: `ts-order-${run}`, lineItems: [{ sku, quantity: 2 }] }, options);
assert.equal(order.state, OrderState.PAID);

const [badCode, bad] = await refused(users.createUser({ email: "not-an-email" }, options));
assert.equal(badCode, Code.InvalidArgument);
assert.ok(bad.includes("field email"), `${bad}`);
const [staleCode, stale] = await refused(
  orders.createOrder({ userId: user.id, requestId: `ts-stale-${run}`, lineItems: [{ sku, quantity: 1, unitPrice: usd(999n) }] }, options),
);
assert.deepEqual([staleCode, stale], [Code.FailedPrecondition, ["precondition PRICE_CHANGED"]]);
const [deniedCode] = await refused(payments.getPayment({ id: order.paymentId }, options));
assert.equal(deniedCode, Code.PermissionDenied, "the policy admits this caller to users, the catalog and orders only");
console.log(`typescript secure caller: order ${order.id} PAID over mTLS; BadRequest(email), PRICE_CHANGED, PERMISSION_DENIED on payments`);
