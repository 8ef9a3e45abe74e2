//! Bearer tokens for callers outside the mesh: `authorization: Bearer <JWT>`, verified against
//! the issuer's JSON Web Key Set. A valid token's `sub` becomes the request's [`Subject`], which
//! handlers use for object-level access; a token that is present but invalid is answered
//! UNAUTHENTICATED, whoever sends it.
//!
//! Which calls must carry a token is [`TokenRequirement`]: by default those without a mesh
//! [`PeerIdentity`] (services calling each other are identified by their mTLS certificates),
//! and always those of an edge: a workload the authorization policy names as acting for end
//! users (`edges`), such as the ingress presenting its certificate for every internet request.
//! Health and reflection never need one: probes and tooling carry no tokens.
//!
//! The layer decides every API call's [`Principal`], which handlers scope their answers by:
//! a verified token is that [`Principal::User`]; a mesh identity that is no edge, calling
//! without a token, is [`Principal::Mesh`]; no token and no identity where tokens are optional
//! is [`Principal::Anonymous`]. With tokens off, every caller the server admitted is the mesh
//! (mutual TLS identifies them, or nothing is authenticated at all).
//!
//! Algorithm confusion is closed by construction: a key is chosen by the token's `kid` alone,
//! and a token verifies only with an algorithm that is on the allow-list, of the key's own
//! type, and the key's `alg` when the JWKS names one. `alg: none` is not an algorithm the
//! decoder knows, so such a token never parses.
//!
//! A token may live at most `--jwt-max-lifetime` (`exp - iat`), so one minted for a century
//! is refused. The check needs `iat`: with a maximum set, a token without one is refused
//! rather than judged by `exp - now`, which a token could pass for a day and then, reissued
//! by a compromised client, again; an `iat` later than now (beyond the leeway) is refused too.
//!
//! A client sends the same token on every call until it expires, and checking its signature
//! (RS256: tens of microseconds) cost more than the rest of a call. Tokens that verified are
//! remembered by their SHA-256 for at most [`VERIFIED_TTL`], and never past their `exp` (plus
//! the leeway): a repeat costs a hash and a lookup. Only the exact token verified matches, so
//! a changed byte anywhere (a forged signature, another claim) is verified in full; a token
//! that failed is never remembered as valid. The key set is fixed for the process's life, so
//! nothing a remembered token relied on can change.
//!
//! Forged tokens must not buy CPU either: a token that failed is remembered as failed for
//! [`REFUSED_TTL`] (a repeat is refused for a hash and a lookup), and signature checks of tokens
//! not seen lately are rate-limited per caller (its mesh identity, else its IP address;
//! `--jwt-new-tokens-per-second`), answered RESOURCE_EXHAUSTED with pushback past it. This
//! layer runs before a request message is read, so a caller that has not proved who it is
//! holds no buffer.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use http::{Request, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};
use tower::{Layer, Service};

use crate::mesh::Error;
use crate::mesh::config::{JwtConfig, TokenRequirement};
use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::{CallerKey, PeerIdentity, Principal, Subject};
use crate::mesh::security::authz::Policy;

/// Longest `sub` accepted; user ids are UUIDs, and a subject also keys the rate limiter.
const MAX_SUBJECT_LEN: usize = 256;

/// How long a verified token is remembered at most (its `exp` may end it sooner).
pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// How many verified tokens are remembered at most (32 bytes of key and a subject each).
const VERIFIED_CAPACITY: u64 = 10_000;

/// How long a token that failed is refused without being checked again. Short: a token that
/// failed only for the clock (`nbf`, `iat` ahead) may pass a little later.
pub const REFUSED_TTL: Duration = Duration::from_secs(30);

/// How many failed tokens are remembered at most (32 bytes each).
const REFUSED_CAPACITY: u64 = 10_000;

/// New-token checks between two sweeps of the per-caller limiter's idle entries.
const SWEEP_EVERY: u32 = 4096;

/// A token that verified: its subject, and until when (seconds since 1970) it stays valid.
#[derive(Clone)]
struct Verified {
    sub: Arc<str>,
    valid_until: u64,
}

/// One verification key from the JWKS, with the algorithms it may verify.
struct Key {
    decoding: DecodingKey,
    /// Allow-list ∩ the key's type ∩ the key's own `alg`, each with its claim checks.
    validations: Vec<(Algorithm, Validation)>,
}

/// Verifies bearer tokens against a fixed key set, issuer and audience.
pub struct Verifier {
    keys: HashMap<String, Key>,
    require: TokenRequirement,
    /// The longest `exp - iat` accepted, in seconds; `None`: no maximum.
    max_lifetime: Option<u64>,
    /// Clock skew allowed on `iat`, in seconds.
    leeway: u64,
    /// Tokens that verified lately, by their SHA-256.
    verified: mini_moka::sync::Cache<[u8; 32], Verified>,
    /// Tokens that failed lately, by their SHA-256.
    refused: mini_moka::sync::Cache<[u8; 32], ()>,
    /// Signature checks per caller; `None`: unbounded.
    new_tokens: Option<DefaultKeyedRateLimiter<CallerKey>>,
    /// New-token checks since the limiter was last swept.
    since_sweep: AtomicU32,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier").field("kids", &kids).field("require", &self.require).finish()
    }
}

/// The claims read from a verified token; the standard ones are checked by the decoder.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: Option<u64>,
}

impl Verifier {
    /// The verifier `config` describes, or `None` when bearer tokens are off (no JWKS).
    ///
    /// # Errors
    /// When the JWKS cannot be read or parsed, names no usable key, or the issuer or audience
    /// is missing.
    pub fn from_config(config: &JwtConfig) -> Result<Option<Self>, Error> {
        let Some(path) = &config.jwt_jwks else { return Ok(None) };
        let jwks = read_jwks(path)?;
        Self::new(&jwks, config).map(Some)
    }

    /// A verifier over the keys of `jwks`, with `config`'s issuer, audience, algorithms and
    /// leeway.
    ///
    /// # Errors
    /// When no key is usable, a key has no `kid` or a duplicate one, or the issuer or
    /// audience is missing.
    pub fn new(jwks: &JwkSet, config: &JwtConfig) -> Result<Self, Error> {
        let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience) else {
            return Err(Error::Config("bearer tokens need --jwt-issuer and --jwt-audience".into()));
        };
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty()).ok_or_else(|| {
                Error::Config("every key in the JWKS needs a kid: tokens choose their key by it".into())
            })?;
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
                && !config.jwt_algorithms.iter().any(|a| is_hmac(*a))
            {
                // A shared secret in a public key set is a mistake; never let it verify.
                tracing::warn!(%kid, "JWKS holds a symmetric key but no HS* algorithm is allowed; ignored");
                continue;
            }
            let decoding = DecodingKey::from_jwk(jwk)
                .map_err(|e| Error::Config(format!("JWKS key {kid:?} is not usable: {e}")))?;
            let own_alg = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
            let validations: Vec<_> = config
                .jwt_algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == decoding.family() && own_alg.is_none_or(|own| own == *a))
                .map(|a| (a, validation(a, issuer, audience, config)))
                .collect();
            if validations.is_empty() {
                tracing::warn!(%kid, "no allowed algorithm fits this JWKS key; ignored");
                continue;
            }
            if keys.insert(kid.clone(), Key { decoding, validations }).is_some() {
                return Err(Error::Config(format!("JWKS has two keys with kid {kid:?}")));
            }
        }
        if keys.is_empty() {
            return Err(Error::Config("the JWKS has no key usable with --jwt-algorithms".into()));
        }
        let max_lifetime = Some(config.jwt_max_lifetime.as_secs()).filter(|s| *s > 0);
        let verified = mini_moka::sync::Cache::builder()
            .max_capacity(VERIFIED_CAPACITY)
            .time_to_live(VERIFIED_TTL)
            .build();
        let refused = mini_moka::sync::Cache::builder()
            .max_capacity(REFUSED_CAPACITY)
            .time_to_live(REFUSED_TTL)
            .build();
        Ok(Self {
            keys,
            require: config.jwt_require,
            max_lifetime,
            leeway: config.jwt_leeway.as_secs(),
            verified,
            refused,
            new_tokens: new_token_limiter(config.jwt_new_tokens_per_second),
            since_sweep: AtomicU32::new(0),
        })
    }

    /// Whether `caller` may have one more token not seen lately checked; `Err` is the wait
    /// until it may.
    fn admit_new_token(&self, caller: &CallerKey) -> Result<(), Duration> {
        let Some(limiter) = &self.new_tokens else { return Ok(()) };
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) >= SWEEP_EVERY {
            // Callers idle long enough for their bucket to refill hold nothing worth keeping.
            self.since_sweep.store(0, Ordering::Relaxed);
            limiter.retain_recent();
        }
        limiter.check_key(caller).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// What is remembered of `token` (by its SHA-256 `digest`): its subject if it verified
    /// lately and is still valid, an error if it failed lately; `None` if it must be checked.
    fn remembered(&self, digest: &[u8; 32]) -> Option<Result<Arc<str>, String>> {
        if let Some(hit) = self.verified.get(digest) {
            if jsonwebtoken::get_current_timestamp() <= hit.valid_until {
                return Some(Ok(hit.sub));
            }
            // Expired since: verified in full, which says so.
            self.verified.invalidate(digest);
            return None;
        }
        self.refused.contains_key(digest).then(|| Err("refused lately".to_owned()))
    }

    /// Checks `token` in full and remembers the outcome under `digest`.
    fn verify_new(&self, token: &str, digest: [u8; 32]) -> Result<Arc<str>, String> {
        match self.verify_signed(token) {
            Ok((sub, exp)) => {
                let valid_until = exp.saturating_add(self.leeway);
                self.verified.insert(digest, Verified { sub: sub.clone(), valid_until });
                Ok(sub)
            }
            Err(why) => {
                self.refused.insert(digest, ());
                Err(why)
            }
        }
    }

    /// The subject of `token` if it is signed by a known key with an allowed algorithm and its
    /// issuer, audience and validity period check out.
    ///
    /// # Errors
    /// Why the token was rejected, for logs only.
    pub fn verify(&self, token: &str) -> Result<Arc<str>, String> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.remembered(&digest) {
            Some(known) => known,
            None => self.verify_new(token, digest),
        }
    }

    /// [`Verifier::verify`] without the memory: the subject and `exp` of a token that checks out.
    fn verify_signed(&self, token: &str) -> Result<(Arc<str>, u64), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        let kid = header.kid.as_deref().ok_or("no kid")?;
        let key = self.keys.get(kid).ok_or_else(|| format!("unknown kid {kid:?}"))?;
        let (_, validation) = key
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or_else(|| format!("algorithm {:?} not allowed for kid {kid:?}", header.alg))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, validation).map_err(|e| e.to_string())?;
        if let Some(max) = self.max_lifetime {
            let iat = data.claims.iat.ok_or("no iat, and a maximum lifetime is set")?;
            let now = jsonwebtoken::get_current_timestamp();
            if iat > now.saturating_add(self.leeway) {
                return Err(format!("iat {iat} is in the future"));
            }
            let lifetime = data.claims.exp.saturating_sub(iat);
            if lifetime > max {
                return Err(format!("lifetime {lifetime}s over the maximum of {max}s"));
            }
        }
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
            return Err("unusable sub".into());
        }
        Ok((sub.into(), data.claims.exp))
    }
}

/// The per-caller bound on signature checks: `per_second` on average, twice that at once; `None`
/// for 0 (or less): unbounded.
fn new_token_limiter(per_second: f64) -> Option<DefaultKeyedRateLimiter<CallerKey>> {
    if !per_second.is_finite() || per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    // Saturating float-to-int conversion: any rate beyond u32 is as good as unbounded.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = NonZeroU32::new((per_second * 2.0).ceil() as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map(|q| RateLimiter::keyed(q.allow_burst(burst)))
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The claim checks for tokens signed with `alg`: `exp`, `sub`, `iss` and `aud` required,
/// `nbf` checked when present, both times with the configured leeway.
fn validation(alg: Algorithm, issuer: &str, audience: &str, config: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = config.jwt_leeway.as_secs();
    v
}

fn read_jwks(path: &Path) -> Result<JwkSet, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read the JWKS file {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{} is not a JSON Web Key Set: {e}", path.display())))
}

/// The token of an `authorization: Bearer <token>` header (the scheme is case-insensitive);
/// `Ok(None)` without the header, `Err` for any other shape or for several such headers.
fn bearer_token<B>(request: &Request<B>) -> Result<Option<&str>, &'static str> {
    let mut values = request.headers().get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("several authorization headers");
    }
    let value = value.to_str().map_err(|_| "authorization is not ASCII")?;
    let (scheme, token) = value.split_once(' ').ok_or("authorization is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("authorization is not `Bearer <token>`");
    }
    Ok(Some(token.trim()))
}

/// Checks bearer tokens and sets each API call's [`Principal`] (see the module docs).
#[derive(Debug, Clone)]
pub struct BearerAuthLayer {
    verifier: Option<Arc<Verifier>>,
    policy: Option<Arc<Policy>>,
}

impl BearerAuthLayer {
    /// Checks tokens with `verifier` (`None`: tokens off, every admitted caller is the mesh),
    /// requiring them of the edges `policy` names.
    pub fn new(verifier: Option<Arc<Verifier>>, policy: Option<Arc<Policy>>) -> Self {
        Self { verifier, policy }
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth { inner, layer: self.clone() }
    }
}

/// See [`BearerAuthLayer`].
#[derive(Debug, Clone)]
pub struct BearerAuth<S> {
    inner: S,
    layer: BearerAuthLayer,
}

/// Why a call was refused here: what the caller is told, and a line for the logs.
struct Rejected {
    refusal: Refusal,
    why: String,
}

impl Rejected {
    fn token(why: impl Into<String>) -> Self {
        Self { refusal: Refusal::BadToken, why: why.into() }
    }
}

impl BearerAuthLayer {
    /// Whom `request` acts for, or why it is refused.
    fn principal<B>(&self, request: &Request<B>) -> Result<Principal, Rejected> {
        let Some(verifier) = &self.verifier else { return Ok(Principal::Mesh) };
        let peer = request.extensions().get::<PeerIdentity>();
        match bearer_token(request).map_err(Rejected::token)? {
            Some(token) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let sub = match verifier.remembered(&digest) {
                    Some(known) => known,
                    None => {
                        verifier.admit_new_token(&CallerKey::of(request)).map_err(|retry_after| {
                            Rejected {
                                refusal: Refusal::TooManyNewTokens { retry_after },
                                why: "over this caller's signature checks".into(),
                            }
                        })?;
                        verifier.verify_new(token, digest)
                    }
                }
                .map_err(Rejected::token)?;
                Ok(Principal::User(sub))
            }
            None => match peer {
                Some(PeerIdentity(id)) if self.policy.as_ref().is_some_and(|p| p.is_edge(id)) => {
                    Err(Rejected {
                        refusal: Refusal::EdgeWithoutToken,
                        why: format!("{id} is an edge and sent no token"),
                    })
                }
                Some(_) => Ok(Principal::Mesh),
                None => match verifier.require {
                    TokenRequirement::Never => Ok(Principal::Anonymous),
                    TokenRequirement::Unidentified => Err(Rejected::token("no token and no mesh identity")),
                },
            },
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Who a call acts for is only ever what this layer decided, never what came along.
        let extensions = request.extensions_mut();
        extensions.remove::<Subject>();
        extensions.remove::<Principal>();
        if Method::of(&request).infrastructure {
            return ResponseFuture::inner(self.inner.call(request));
        }
        match self.layer.principal(&request) {
            Ok(principal) => {
                if let Principal::User(sub) = &principal {
                    request.extensions_mut().insert(Subject(sub.clone()));
                }
                request.extensions_mut().insert(principal);
                ResponseFuture::inner(self.inner.call(request))
            }
            Err(Rejected { refusal, why }) => {
                // Debug, not info: a flood of forged tokens must not become a flood of logs.
                tracing::debug!(path = request.uri().path(), reason = %why, "call refused: not authenticated");
                let reason = match refusal {
                    Refusal::TooManyNewTokens { .. } => "new_tokens",
                    Refusal::EdgeWithoutToken => "edge_without_token",
                    _ => "token",
                };
                metrics::counter!("shopmesh_server_unauthenticated_total", "reason" => reason).increment(1);
                ResponseFuture::refuse(&refusal)
            }
        }
    }
}

/// The response of a [`BearerAuth`] service: handed on, or answered at once.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody>;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: &[&str]) -> Request<()> {
        let mut r = Request::builder().uri("/shopmesh.user.v1.UserService/GetUser");
        for a in auth {
            r = r.header("authorization", *a);
        }
        r.body(()).expect("request")
    }

    #[test]
    fn only_one_bearer_header_is_a_token() {
        assert_eq!(bearer_token(&request(&[])), Ok(None));
        assert_eq!(bearer_token(&request(&["Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token(&request(&["bearer  abc "])), Ok(Some("abc")));
        assert!(bearer_token(&request(&["Basic dTpw"])).is_err());
        assert!(bearer_token(&request(&["Bearer"])).is_err());
        assert!(bearer_token(&request(&["Bearer  "])).is_err());
        assert!(bearer_token(&request(&["Bearer a", "Bearer b"])).is_err());
    }

    #[test]
    fn a_jwks_without_kids_or_usable_keys_is_refused() {
        let config = JwtConfig {
            jwt_issuer: Some("https://issuer.example".into()),
            jwt_audience: Some("shopmesh".into()),
            ..JwtConfig::default()
        };
        let no_kid: JwkSet = serde_json::from_str(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .expect("jwks");
        assert!(Verifier::new(&no_kid, &config).is_err());
        let only_secret: JwkSet =
            serde_json::from_str(r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#).expect("jwks");
        assert!(Verifier::new(&only_secret, &config).is_err(), "a shared secret must not verify RS/ES/EdDSA");
        let ed: JwkSet = serde_json::from_str(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .expect("jwks");
        let verifier = Verifier::new(&ed, &config).expect("usable");
        assert_eq!(verifier.keys["e"].validations.len(), 1, "EdDSA only, from RS256,ES256,EdDSA");
        assert!(Verifier::new(&ed, &JwtConfig { jwt_audience: None, ..config }).is_err());
    }

    /// The test key set of `cli/tests/fixtures/jwt`, and a token its Ed25519 key signs.
    fn fixture(file: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("cli/tests/fixtures/jwt").join(file))
            .expect("fixture")
    }

    fn signed(claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&fixture("ed25519.pem")).expect("ed25519 key");
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some("ed-1".into());
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    #[test]
    fn a_remembered_token_is_the_exact_token_verified_and_ends_with_its_exp() {
        let config = JwtConfig {
            jwt_issuer: Some("https://id.shopmesh.test".into()),
            jwt_audience: Some("shopmesh".into()),
            jwt_leeway: std::time::Duration::ZERO,
            ..JwtConfig::default()
        };
        let jwks: JwkSet = serde_json::from_slice(&fixture("jwks.json")).expect("jwks");
        let verifier = Verifier::new(&jwks, &config).expect("verifier");
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |sub: &str, exp: u64| serde_json::json!({"sub": sub, "iss": "https://id.shopmesh.test", "aud": "shopmesh", "iat": now, "exp": exp});

        let remembered =
            |token: &str| verifier.verified.contains_key(&<[u8; 32]>::from(Sha256::digest(token)));
        let token = signed(&claims("ada", now + 3600));
        assert_eq!(verifier.verify(&token).as_deref(), Ok("ada"));
        assert!(remembered(&token), "a verified token is remembered");
        assert_eq!(verifier.verify(&token).as_deref(), Ok("ada"), "and accepted again");

        // One byte changed anywhere is another token: verified in full, and refused.
        let (body, signature) = token.rsplit_once('.').expect("three parts");
        let mut forged = signature.as_bytes().to_vec();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        let forged = format!("{body}.{}", String::from_utf8(forged).expect("ascii"));
        assert!(verifier.verify(&forged).is_err(), "a forged signature passed as the remembered token");
        assert!(!remembered(&forged), "a refused token is never remembered");

        // A token remembered while valid is refused once its exp has passed.
        let brief = signed(&claims("bob", now + 1));
        assert_eq!(verifier.verify(&brief).as_deref(), Ok("bob"));
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let expired = verifier.verify(&brief);
        assert!(expired.as_ref().is_err_and(|e| e.contains("xpired")), "{expired:?}");
    }

    #[tokio::test]
    async fn failed_tokens_are_refused_from_memory_and_new_ones_are_bounded_per_caller() {
        use tower::ServiceExt as _;
        let config = JwtConfig {
            jwt_issuer: Some("https://id.shopmesh.test".into()),
            jwt_audience: Some("shopmesh".into()),
            // One new token per 500 s, one at once: nothing refills during the test.
            jwt_new_tokens_per_second: 0.002,
            ..JwtConfig::default()
        };
        let jwks: JwkSet = serde_json::from_slice(&fixture("jwks.json")).expect("jwks");
        let verifier = Arc::new(Verifier::new(&jwks, &config).expect("verifier"));
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::default()))
        });
        let svc = BearerAuthLayer::new(Some(verifier.clone()), None).layer(inner);
        let call = |from: &str, token: &str| {
            let mut r = request(&[&format!("Bearer {token}")]);
            let addr = std::net::SocketAddr::new(from.parse().expect("ip"), 4000);
            r.extensions_mut().insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(addr),
            });
            let svc = svc.clone();
            async move {
                let response = svc.oneshot(r).await.expect("answer");
                response.headers().get("grpc-status").map(|v| v.to_str().expect("ascii").to_owned())
            }
        };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |sub: &str| serde_json::json!({"sub": sub, "iss": "https://id.shopmesh.test", "aud": "shopmesh", "iat": now, "exp": now + 600});
        let forged = |sub: &str| {
            let token = signed(&claims(sub));
            let (body, _) = token.rsplit_once('.').expect("three parts");
            format!("{body}.AAAA")
        };
        let valid = signed(&claims("ada"));
        assert_eq!(verifier.verify(&valid).as_deref(), Ok("ada"), "verified once, by someone");

        let (one, two) = (forged("mallory"), forged("mallory-2"));
        assert_eq!(call("10.0.0.1", &one).await.as_deref(), Some("16"), "checked, and refused");
        assert_eq!(
            call("10.0.0.1", &one).await.as_deref(),
            Some("16"),
            "refused from memory: it does not count as a new token (which would be over the bound)"
        );
        assert_eq!(
            call("10.0.0.1", &two).await.as_deref(),
            Some("8"),
            "a second new token from the same caller is over its signature checks"
        );
        assert_eq!(call("10.0.0.2", &two).await.as_deref(), Some("16"), "another caller has its own bound");
        assert_eq!(call("10.0.0.1", &valid).await, None, "a token verified lately costs no check");
    }
}
