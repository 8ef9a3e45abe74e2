//! `shopmesh bench call`: any unary method of any gRPC server, with one request sent as it is on
//! every call. The same generator then drives the mesh and the floors it is compared with
//! (tonic's and grpc-go's hello worlds), so their figures differ only by the server.
//!
//! The request is given either as JSON, encoded through the descriptors of the mesh's own APIs
//! (`prost-reflect`, the same descriptors the servers' reflection serves), or as a file of
//! protobuf bytes, which fits any server's method. The answer's body is not decoded: only its
//! status counts.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Request;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;

use super::Channel;

/// A request body already encoded: what is sent is these bytes, unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded(pub Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded; decoding skips what it is given.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// One method and the request every call sends to it.
#[derive(Debug, Clone)]
pub struct RawCall {
    /// `/package.Service/Method`.
    pub path: PathAndQuery,
    /// The request, encoded.
    pub body: Encoded,
    /// One client per connection to the target.
    pub clients: Vec<Grpc<Channel>>,
}

impl RawCall {
    /// Sends the request on connection `i % connections` and returns the answer's status.
    pub async fn call(&self, i: u64, timeout: std::time::Duration) -> Result<(), tonic::Status> {
        let n = self.clients.len() as u64;
        let mut client = self.clients[usize::try_from(i % n).unwrap_or(0)].clone();
        client.ready().await.map_err(|e| tonic::Status::from_error(e.into()))?;
        let mut request = Request::new(self.body.clone());
        request.set_timeout(timeout);
        // `()` is the empty message: the answer's fields are skipped, not kept.
        let codec = tonic_prost::ProstCodec::<Encoded, ()>::default();
        client.unary(request, self.path.clone(), codec).await.map(drop)
    }
}

/// `/pkg.Service/Method` from `pkg.Service/Method` or `/pkg.Service/Method` (grpcurl's and the
/// HTTP/2 path's spellings), checked for its shape.
pub fn method_path(method: &str) -> Result<PathAndQuery, String> {
    let trimmed = method.trim_start_matches('/');
    let (service, name) = trimmed
        .split_once('/')
        .filter(|(s, m)| s.contains('.') && !s.is_empty() && !m.is_empty() && !m.contains('/'))
        .ok_or_else(|| format!("--method {method:?} is not PACKAGE.SERVICE/METHOD (e.g. shopmesh.user.v1.UserService/GetUser)"))?;
    PathAndQuery::try_from(format!("/{service}/{name}"))
        .map_err(|e| format!("--method {method:?} is not a valid path: {e}"))
}

/// Encodes `json` as the request message of `path`, a method of the mesh's own APIs.
pub fn encode_json(path: &PathAndQuery, json: &str) -> Result<Bytes, String> {
    let pool = DescriptorPool::decode(shopmesh::api::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the mesh's own descriptors do not decode: {e}"))?;
    let (service, name) = path.path().trim_start_matches('/').split_once('/').unwrap_or_default();
    let method = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .ok_or_else(|| {
            format!(
                "--request-json knows the mesh's own methods only, and {service}/{name} is not one; \
                 give the request as protobuf bytes with --request-file"
            )
        })?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(format!("{service}/{name} streams; `call` sends unary calls only"));
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(method.input(), &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| format!("--request-json is not a {}: {e}", method.input().full_name()))?;
    Ok(prost::Message::encode_to_vec(&message).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use shopmesh::api::user::v1::GetUserRequest;

    #[test]
    fn json_is_encoded_as_the_methods_request() {
        let path = method_path("shopmesh.user.v1.UserService/GetUser").expect("path");
        assert_eq!(path.path(), "/shopmesh.user.v1.UserService/GetUser");
        let bytes = encode_json(&path, r#"{"id": "u-1"}"#).expect("encodes");
        assert_eq!(GetUserRequest::decode(bytes).expect("decodes").id, "u-1");
        // What is encoded is what goes on the wire, byte for byte.
        let sent = Encoded(GetUserRequest { id: "u-2".into() }.encode_to_vec().into()).encode_to_vec();
        assert_eq!(GetUserRequest::decode(sent.as_slice()).expect("decodes").id, "u-2");
    }

    #[test]
    fn bad_methods_and_requests_are_refused_with_a_reason() {
        assert!(method_path("GetUser").expect_err("no service").contains("PACKAGE.SERVICE/METHOD"));
        assert!(method_path("/x.Y/").is_err());
        let other = method_path("helloworld.Greeter/SayHello").expect("path");
        assert!(encode_json(&other, "{}").expect_err("not ours").contains("--request-file"));
        let ours = method_path("/shopmesh.user.v1.UserService/GetUser").expect("path");
        assert!(encode_json(&ours, r#"{"nope": 1}"#).expect_err("bad field").contains("GetUserRequest"));
        assert!(encode_json(&ours, r#"{"id": "a"} trailing"#).is_err());
    }
}
