//! The gRPC status code of a response, read from its headers: a trailers-only response, which
//! is how a server answers a unary call with an error (and how every layer here refuses one).

use http::Response;

/// The gRPC status code in a response's headers, if it has one.
pub fn header_code<B>(response: &Response<B>) -> Option<tonic::Code> {
    let value = response.headers().get("grpc-status")?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse::<i32>().ok().map(tonic::Code::from)
}

/// The status code of a call's outcome as a number: the headers' code for a trailers-only
/// answer, OK for any other answer, UNAVAILABLE when there was no answer at all.
pub fn code_of<B, E>(result: &Result<Response<B>, E>) -> i32 {
    match result {
        Ok(response) => header_code(response).map_or(0, |c| c as i32),
        Err(_) => tonic::Code::Unavailable as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_trailers_only_answers() {
        let refused: Response<()> = tonic::Status::unavailable("x").into_http();
        assert_eq!(header_code(&refused), Some(tonic::Code::Unavailable));
        assert_eq!(code_of::<_, ()>(&Ok(refused)), 14);
        assert_eq!(header_code(&Response::new(())), None);
        assert_eq!(code_of::<_, ()>(&Ok(Response::new(()))), 0);
        assert_eq!(code_of::<(), _>(&Err(())), 14);
    }
}
