//! SCRAM credentials (RFC 5802/7677): what weir stores of a password, and checking a
//! PLAIN password against it. The key derivation is rsasl's (the same code that checks a
//! SCRAM client's proof), so a credential made here always matches a SCRAM login.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256, Sha512};
use weir_replication::{ScramCredential, ScramMechanism};

use rsasl::mechanisms::scram::tools;

/// Kafka's bounds on a credential's iteration count.
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;

/// Salt bytes of credentials weir makes (Kafka's client tools use 16 and up).
const SALT_BYTES: usize = 32;

/// A credential from a password (random salt). Costs `iterations` HMACs: run it off the
/// shard (`glommio::executor().spawn_blocking`).
pub fn from_password(
    mechanism: ScramMechanism,
    password: &str,
    iterations: u32,
) -> Result<ScramCredential, String> {
    let (salt, salted) = salt_password(mechanism, password, iterations)?;
    Ok(from_salted_password(mechanism, salt, &salted, iterations))
}

/// A random salt and the password salted and hashed with it: what a client sends to set
/// a credential (Kafka's AlterUserScramCredentials).
pub fn salt_password(
    mechanism: ScramMechanism,
    password: &str,
    iterations: u32,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    check_iterations(iterations)?;
    let mut salt = vec![0u8; SALT_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system's random source failed".to_string())?;
    let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
    Ok((salt, salted))
}

/// A credential from what Kafka's AlterUserScramCredentials carries: the salt and the
/// password already salted and hashed by the client.
pub fn from_salted_password(
    mechanism: ScramMechanism,
    salt: Vec<u8>,
    salted_password: &[u8],
    iterations: u32,
) -> ScramCredential {
    let (stored_key, server_key) = match mechanism {
        ScramMechanism::Sha256 => {
            let (client, server) = tools::derive_keys::<Sha256>(salted_password);
            (Sha256::digest(client).to_vec(), server.to_vec())
        }
        ScramMechanism::Sha512 => {
            let (client, server) = tools::derive_keys::<Sha512>(salted_password);
            (Sha512::digest(client).to_vec(), server.to_vec())
        }
    };
    ScramCredential {
        salt,
        iterations,
        stored_key,
        server_key,
    }
}

pub fn check_iterations(iterations: u32) -> Result<(), String> {
    if (ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        Ok(())
    } else {
        Err(format!(
            "iterations must be within {ITERATIONS_MIN}..={ITERATIONS_MAX}, not {iterations}"
        ))
    }
}

/// Whether `password` is the one `credential` was made from. Costs what making it did.
pub fn verify_password(
    mechanism: ScramMechanism,
    credential: &ScramCredential,
    password: &[u8],
) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    let derived = from_salted_password(
        mechanism,
        credential.salt.clone(),
        &salted,
        credential.iterations,
    );
    constant_time_eq(&derived.stored_key, &credential.stored_key)
}

fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => {
            let mut out = GenericArray::default();
            tools::hash_password::<Sha256>(password, iterations, salt, &mut out);
            out.to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut out = GenericArray::default();
            tools::hash_password::<Sha512>(password, iterations, salt, &mut out);
            out.to_vec()
        }
    }
}

/// Compares without stopping at the first difference, so the time taken says nothing
/// about how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_accepts_its_password_and_nothing_else() {
        for mechanism in ScramMechanism::ALL {
            let credential = from_password(mechanism, "s3cret", ITERATIONS_MIN).unwrap();
            assert!(verify_password(mechanism, &credential, b"s3cret"));
            assert!(!verify_password(mechanism, &credential, b"s3cret "));
            assert!(!verify_password(mechanism, &credential, b""));
            let again = from_password(mechanism, "s3cret", ITERATIONS_MIN).unwrap();
            assert_ne!(again.salt, credential.salt, "salts are random");
        }
        assert!(from_password(ScramMechanism::Sha256, "x", 10).is_err());
    }

    /// RFC 7677's test vector for SCRAM-SHA-256 (user, pencil): the server signature
    /// of its exchange, computed from the server key weir stores.
    #[test]
    fn keys_match_rfc_7677() {
        use base64::Engine;
        use hmac::Mac;
        let base64 = base64::engine::general_purpose::STANDARD;
        let salt = base64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let credential = from_salted_password(ScramMechanism::Sha256, salt, &salted, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,\
            i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&credential.server_key).unwrap();
        mac.update(auth_message.as_bytes());
        assert_eq!(
            base64.encode(mac.finalize().into_bytes()),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
