//! Sender-constrained tokens: which proofs of possession the server accepts (`binding`) and
//! which the token demands (`cnf`). A token's `cnf` is always enforced, whatever the mode
//! (RFC 9449 §7.1, RFC 8705 §3); the mode only narrows what is accepted.
#![forbid(unsafe_code)]

use crate::token::Confirmation;

/// The server's `binding` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Tokens must be DPoP-bound (`cnf.jkt`) and presented with a proof.
    Dpop,
    /// Tokens must be bound to the mTLS client certificate (`cnf["x5t#S256"]`).
    Mtls,
    /// Either binding.
    DpopOrMtls,
    /// Unbound tokens are accepted too; bound ones are still held to their binding.
    Bearer,
}

impl Binding {
    pub fn parse(name: &str) -> Option<Binding> {
        Some(match name {
            "dpop" => Binding::Dpop,
            "mtls" => Binding::Mtls,
            "dpop_or_mtls" => Binding::DpopOrMtls,
            "bearer" => Binding::Bearer,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Binding::Dpop => "dpop",
            Binding::Mtls => "mtls",
            Binding::DpopOrMtls => "dpop_or_mtls",
            Binding::Bearer => "bearer",
        }
    }

    /// Whether a client may use the `DPoP` authorization scheme here.
    pub fn accepts_dpop(self) -> bool {
        !matches!(self, Binding::Mtls)
    }

    /// Whether a client may use the `Bearer` scheme here (mTLS-bound or unbound tokens).
    pub fn accepts_bearer_scheme(self) -> bool {
        !matches!(self, Binding::Dpop)
    }
}

/// The authorization scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::Dpop => "DPoP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingError {
    /// This server does not accept the scheme (`DPoP` on an mtls server, `Bearer` on a dpop one).
    SchemeNotAccepted(Scheme),
    /// A DPoP-bound token was sent with the `Bearer` scheme (RFC 9449 §7.1).
    DpopBoundTokenAsBearer,
    /// The `DPoP` scheme with a token that has no `cnf.jkt`.
    TokenNotDpopBound,
    /// The mode requires a bound token and this one is not bound the way it requires.
    TokenNotBound,
    /// The proof key is not the key the token is bound to.
    ProofKeyMismatch,
    /// The token is bound to a certificate and the connection presented none.
    MissingClientCertificate,
    /// The connection's certificate is not the one the token is bound to.
    CertificateMismatch,
}

impl BindingError {
    pub fn describe(&self) -> String {
        match self {
            BindingError::SchemeNotAccepted(s) => format!("the {} authorization scheme is not accepted here", s.name()),
            BindingError::DpopBoundTokenAsBearer => "a DPoP-bound token must be sent with the DPoP scheme and a proof".into(),
            BindingError::TokenNotDpopBound => "the DPoP scheme was used with a token that is not DPoP-bound".into(),
            BindingError::TokenNotBound => "this resource requires a sender-constrained token".into(),
            BindingError::ProofKeyMismatch => "the DPoP proof key is not the key the token is bound to".into(),
            BindingError::MissingClientCertificate => "the token is bound to a client certificate and none was presented".into(),
            BindingError::CertificateMismatch => "the client certificate is not the one the token is bound to".into(),
        }
    }
}

/// How the caller proved possession, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Possession {
    /// Thumbprint of the DPoP key that signed the proof.
    pub dpop_jkt: Option<String>,
    /// `x5t#S256` of the client certificate that matched the token.
    pub mtls_x5t: Option<String>,
}

/// Checks a verified token against the mode, the scheme it came with, the proof key (when
/// the scheme is DPoP and its proof verified) and the connection's certificate.
pub fn check(
    mode: Binding,
    scheme: Scheme,
    cnf: &Confirmation,
    proof_jkt: Option<&str>,
    client_cert_x5t: Option<&str>,
) -> Result<Possession, BindingError> {
    match scheme {
        Scheme::Dpop if !mode.accepts_dpop() => return Err(BindingError::SchemeNotAccepted(Scheme::Dpop)),
        Scheme::Dpop if cnf.jkt.is_none() => return Err(BindingError::TokenNotDpopBound),
        Scheme::Bearer if cnf.jkt.is_some() => return Err(BindingError::DpopBoundTokenAsBearer),
        Scheme::Bearer if !mode.accepts_bearer_scheme() => {
            return Err(BindingError::SchemeNotAccepted(Scheme::Bearer))
        }
        _ => {}
    }
    let mode_satisfied = match mode {
        Binding::Dpop => cnf.jkt.is_some(),
        Binding::Mtls => cnf.x5t_s256.is_some(),
        Binding::DpopOrMtls => cnf.is_bound(),
        Binding::Bearer => true,
    };
    if !mode_satisfied {
        return Err(BindingError::TokenNotBound);
    }
    let mut possession = Possession::default();
    if let Some(jkt) = &cnf.jkt {
        // Reaching here means scheme == DPoP; the proof must have verified and match.
        if proof_jkt != Some(jkt.as_str()) {
            return Err(BindingError::ProofKeyMismatch);
        }
        possession.dpop_jkt = Some(jkt.clone());
    }
    if let Some(x5t) = &cnf.x5t_s256 {
        match client_cert_x5t {
            None => return Err(BindingError::MissingClientCertificate),
            Some(presented) if presented != x5t => return Err(BindingError::CertificateMismatch),
            Some(_) => possession.mtls_x5t = Some(x5t.clone()),
        }
    }
    Ok(possession)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use BindingError::*;

    fn cnf(jkt: Option<&str>, x5t: Option<&str>) -> Confirmation {
        Confirmation { jkt: jkt.map(Into::into), x5t_s256: x5t.map(Into::into) }
    }

    #[test]
    fn the_binding_table() {
        let dpop = cnf(Some("J"), None);
        let mtls = cnf(None, Some("X"));
        let both = cnf(Some("J"), Some("X"));
        let none = cnf(None, None);
        use Binding::*;
        use Scheme::{Bearer as B, Dpop as D};
        let cases: Vec<(Binding, Scheme, &Confirmation, Option<&str>, Option<&str>, Result<(), BindingError>)> = vec![
            // dpop mode
            (Dpop, D, &dpop, Some("J"), None, Ok(())),
            (Dpop, D, &dpop, Some("other"), None, Err(ProofKeyMismatch)),
            (Dpop, B, &dpop, None, None, Err(DpopBoundTokenAsBearer)),
            (Dpop, B, &mtls, None, Some("X"), Err(SchemeNotAccepted(Scheme::Bearer))),
            (Dpop, B, &none, None, None, Err(SchemeNotAccepted(Scheme::Bearer))),
            (Dpop, D, &none, Some("J"), None, Err(TokenNotDpopBound)),
            (Dpop, D, &both, Some("J"), Some("X"), Ok(())),
            (Dpop, D, &both, Some("J"), None, Err(MissingClientCertificate)),
            // mtls mode
            (Mtls, B, &mtls, None, Some("X"), Ok(())),
            (Mtls, B, &mtls, None, Some("Y"), Err(CertificateMismatch)),
            (Mtls, B, &mtls, None, None, Err(MissingClientCertificate)),
            (Mtls, B, &none, None, Some("X"), Err(TokenNotBound)),
            (Mtls, D, &dpop, Some("J"), None, Err(SchemeNotAccepted(Scheme::Dpop))),
            (Mtls, B, &both, None, Some("X"), Err(DpopBoundTokenAsBearer)),
            // dpop_or_mtls
            (DpopOrMtls, D, &dpop, Some("J"), None, Ok(())),
            (DpopOrMtls, B, &mtls, None, Some("X"), Ok(())),
            (DpopOrMtls, B, &none, None, None, Err(TokenNotBound)),
            (DpopOrMtls, D, &both, Some("J"), Some("Y"), Err(CertificateMismatch)),
            // bearer: unbound accepted, bound still held to the binding
            (Bearer, B, &none, None, None, Ok(())),
            (Bearer, B, &dpop, None, None, Err(DpopBoundTokenAsBearer)),
            (Bearer, D, &dpop, Some("J"), None, Ok(())),
            (Bearer, D, &dpop, Some("K"), None, Err(ProofKeyMismatch)),
            (Bearer, B, &mtls, None, Some("Y"), Err(CertificateMismatch)),
            (Bearer, B, &mtls, None, Some("X"), Ok(())),
            (Bearer, D, &none, Some("J"), None, Err(TokenNotDpopBound)),
        ];
        for (i, (mode, scheme, c, proof, cert, expected)) in cases.into_iter().enumerate() {
            assert_eq!(check(mode, scheme, c, proof, cert).map(|_| ()), expected, "case {i}: {mode:?} {scheme:?} {c:?}");
        }
    }

    #[test]
    fn possession_records_what_was_proven() {
        let p = check(Binding::Dpop, Scheme::Dpop, &cnf(Some("J"), Some("X")), Some("J"), Some("X")).unwrap();
        assert_eq!(p, Possession { dpop_jkt: Some("J".into()), mtls_x5t: Some("X".into()) });
    }
}
