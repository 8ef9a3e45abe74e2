//! What checking a bearer token costs: the mesh's verifier (the one the bearer layer calls) on
//! RS256 tokens of the test key set (`cli/tests/fixtures/jwt`), first on tokens it has not seen
//! (a signature check each), then on one token sent again and again, as a client does until it
//! expires (remembered: a SHA-256 and a lookup), then on one forged token (a bad signature) sent
//! again and again, as an attacker would (remembered as failed: the same lookup). Rounds
//! alternate so machine noise hits all three.
//!
//! ```sh
//! cargo run --release -p shopmesh-cli --example token_cost -- [tokens per round] [rounds]
//! ```

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shopmesh::mesh::config::JwtConfig;
use shopmesh::mesh::security::bearer::Verifier;

fn main() {
    let mut args = std::env::args().skip(1);
    let per_round: u32 = args.next().map_or(2_000, |a| a.parse().expect("tokens per round"));
    let rounds: u32 = args.next().map_or(3, |a| a.parse().expect("rounds"));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let jwks =
        serde_json::from_slice(&std::fs::read(fixtures.join("jwks.json")).expect("jwks")).expect("jwks");
    let config = JwtConfig {
        jwt_issuer: Some("https://id.shopmesh.test".into()),
        jwt_audience: Some("shopmesh".into()),
        ..JwtConfig::default()
    };
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixtures.join("rsa.pem")).expect("key")).expect("rsa key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let now = jsonwebtoken::get_current_timestamp();
    let token = |n: u32| {
        let claims = serde_json::json!({
            "sub": format!("user-{n}"), "iss": "https://id.shopmesh.test", "aud": "shopmesh",
            "iat": now, "exp": now + 3600,
        });
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let mut fresh_us = Vec::new();
    let mut repeat_us = Vec::new();
    let mut forged_us = Vec::new();
    for round in 0..rounds {
        // Signed before timing; a new verifier per round, so none of them was seen.
        let tokens: Vec<String> = (0..per_round).map(|n| token(round * per_round + n)).collect();
        let verifier = Verifier::new(&jwks, &config).expect("verifier");
        let started = Instant::now();
        for t in &tokens {
            verifier.verify(t).expect("valid");
        }
        fresh_us.push(per_call(started.elapsed(), per_round));
        let one = &tokens[0];
        let started = Instant::now();
        for _ in 0..per_round {
            verifier.verify(one).expect("valid");
        }
        repeat_us.push(per_call(started.elapsed(), per_round));
        let (body, _) = tokens[1].rsplit_once('.').expect("three parts");
        let forged = format!("{body}.AAAA");
        let started = Instant::now();
        for _ in 0..per_round {
            verifier.verify(&forged).expect_err("forged");
        }
        forged_us.push(per_call(started.elapsed(), per_round));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (fresh, repeat, forged) = (median(&mut fresh_us), median(&mut repeat_us), median(&mut forged_us));
    println!("RS256, {rounds} rounds of {per_round} tokens, medians:");
    println!("  a token not seen before   {fresh:8.2} µs per check");
    println!("  the same token again      {repeat:8.2} µs per check ({:.0}x cheaper)", fresh / repeat);
    println!("  a forged token again      {forged:8.2} µs per check ({:.0}x cheaper)", fresh / forged);
}

fn per_call(elapsed: Duration, calls: u32) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(calls)
}
