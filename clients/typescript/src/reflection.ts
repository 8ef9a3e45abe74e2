// A minimal gRPC server reflection client (grpc.reflection.v1, what grpcurl uses), built from a
// hand-written descriptor so that it needs no generated code: it lists a server's services and
// turns a service's descriptors, as the server sends them, into a DescService that Connect can
// call. The smoke test uses it to reach services it has no generated code for (the catalog).
import {
  create,
  createFileRegistry,
  fromBinary,
  fromJson,
  toJson,
  type DescFile,
  type DescMessage,
  type DescService,
  type JsonValue,
} from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_any,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_wrappers,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { createClient, type Transport } from "@connectrpc/connect";

const PKG = "grpc.reflection.v1";

function field(name: string, number: number, type: Type, extra: Record<string, unknown> = {}) {
  const jsonName = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  return { name, number, type, jsonName, label: Label.OPTIONAL, ...extra };
}
const str = Type.STRING;
const msg = (n: string) => ({ typeName: `.${PKG}.${n}` });

// The subset of grpc/reflection/v1/reflection.proto used here; unknown fields are skipped.
const reflectionFile = create(FileDescriptorProtoSchema, {
  name: "shopmesh-smoke/grpc_reflection_v1_subset.proto",
  package: PKG,
  syntax: "proto3",
  messageType: [
    {
      name: "ServerReflectionRequest",
      field: [
        field("host", 1, str),
        field("file_by_filename", 3, str, { oneofIndex: 0 }),
        field("file_containing_symbol", 4, str, { oneofIndex: 0 }),
        field("list_services", 7, str, { oneofIndex: 0 }),
      ],
      oneofDecl: [{ name: "message_request" }],
    },
    {
      name: "ServerReflectionResponse",
      field: [
        field("file_descriptor_response", 4, Type.MESSAGE, { ...msg("FileDescriptorResponse"), oneofIndex: 0 }),
        field("list_services_response", 6, Type.MESSAGE, { ...msg("ListServiceResponse"), oneofIndex: 0 }),
        field("error_response", 7, Type.MESSAGE, { ...msg("ErrorResponse"), oneofIndex: 0 }),
      ],
      oneofDecl: [{ name: "message_response" }],
    },
    { name: "FileDescriptorResponse", field: [field("file_descriptor_proto", 1, Type.BYTES, { label: Label.REPEATED })] },
    { name: "ListServiceResponse", field: [field("service", 1, Type.MESSAGE, { ...msg("ServiceResponse"), label: Label.REPEATED })] },
    { name: "ServiceResponse", field: [field("name", 1, str)] },
    { name: "ErrorResponse", field: [field("error_code", 1, Type.INT32), field("error_message", 2, str)] },
  ],
  service: [
    {
      name: "ServerReflection",
      method: [
        {
          name: "ServerReflectionInfo",
          inputType: `.${PKG}.ServerReflectionRequest`,
          outputType: `.${PKG}.ServerReflectionResponse`,
          clientStreaming: true,
          serverStreaming: true,
        },
      ],
    },
  ],
});
const registry = createFileRegistry(reflectionFile, () => undefined);
const RequestSchema = registry.getMessage(`${PKG}.ServerReflectionRequest`)!;
const ResponseSchema = registry.getMessage(`${PKG}.ServerReflectionResponse`)!;
const ServerReflection = registry.getService(`${PKG}.ServerReflection`)!;

// Well-known types come with @bufbuild/protobuf; a server need not send them.
const WELL_KNOWN = new Map<string, DescFile>(
  [
    file_google_protobuf_any,
    file_google_protobuf_duration,
    file_google_protobuf_empty,
    file_google_protobuf_field_mask,
    file_google_protobuf_struct,
    file_google_protobuf_timestamp,
    file_google_protobuf_wrappers,
  ].map((f) => [f.proto.name, f]),
);

interface ReflectionResponse {
  fileDescriptorResponse?: { fileDescriptorProto?: string[] };
  listServicesResponse?: { service?: { name: string }[] };
  errorResponse?: { errorCode?: number; errorMessage?: string };
}

/** Sends one reflection request (a one-message bidi stream) and returns the JSON of the answer. */
async function ask(transport: Transport, request: JsonValue): Promise<ReflectionResponse> {
  const client = createClient(ServerReflection, transport) as unknown as {
    serverReflectionInfo(requests: AsyncIterable<unknown>, options?: { timeoutMs?: number }): AsyncIterable<unknown>;
  };
  async function* one() {
    yield fromJson(RequestSchema, request);
  }
  for await (const response of client.serverReflectionInfo(one(), { timeoutMs: 10_000 })) {
    const json = toJson(ResponseSchema as DescMessage, response as never) as ReflectionResponse;
    if (json.errorResponse) {
      throw new Error(`reflection: ${json.errorResponse.errorMessage} (${json.errorResponse.errorCode})`);
    }
    return json;
  }
  throw new Error("reflection: the server closed the stream without an answer");
}

/** The fully-qualified names of the services a server lists through reflection. */
export async function listServices(transport: Transport): Promise<string[]> {
  const res = await ask(transport, { listServices: "" });
  return (res.listServicesResponse?.service ?? []).map((s) => s.name);
}

function decode(res: ReflectionResponse): FileDescriptorProto[] {
  return (res.fileDescriptorResponse?.fileDescriptorProto ?? []).map((b64) =>
    fromBinary(FileDescriptorProtoSchema, Buffer.from(b64, "base64")),
  );
}

/**
 * The descriptor of `service` as the server describes it, or undefined when the server does not
 * list it. Files it imports are asked for by name unless they are well-known types.
 */
export async function reflectService(transport: Transport, service: string): Promise<DescService | undefined> {
  if (!(await listServices(transport)).includes(service)) return undefined;
  const files = new Map<string, FileDescriptorProto>();
  for (const f of decode(await ask(transport, { fileContainingSymbol: service }))) files.set(f.name, f);
  for (let pending = [...files.values()]; pending.length > 0; ) {
    const next: FileDescriptorProto[] = [];
    for (const dep of pending.flatMap((f) => f.dependency)) {
      if (files.has(dep) || WELL_KNOWN.has(dep)) continue;
      for (const f of decode(await ask(transport, { fileByFilename: dep }))) {
        if (!files.has(f.name)) {
          files.set(f.name, f);
          next.push(f);
        }
      }
    }
    pending = next;
  }
  const pkg = service.slice(0, service.lastIndexOf("."));
  const name = service.slice(pkg.length + 1);
  const main = [...files.values()].find((f) => f.package === pkg && f.service.some((s) => s.name === name));
  if (!main) throw new Error(`reflection: no file for ${service} among ${[...files.keys()].join(", ")}`);
  const reg = createFileRegistry(main, (dep) => files.get(dep) ?? WELL_KNOWN.get(dep));
  return reg.getService(service);
}

/** Calls unary `method` of a reflected service with a request in proto JSON; returns the JSON answer. */
export async function callJson(
  transport: Transport,
  service: DescService,
  method: string,
  request: JsonValue,
): Promise<JsonValue> {
  const m = service.methods.find((x) => x.name === method);
  if (!m || m.methodKind !== "unary") throw new Error(`${service.typeName} has no unary method ${method}`);
  const client = createClient(service, transport) as unknown as Record<
    string,
    (req: unknown, options?: { timeoutMs?: number }) => Promise<unknown>
  >;
  const response = await client[m.localName](fromJson(m.input, request), { timeoutMs: 10_000 });
  return toJson(m.output, response as never);
}
