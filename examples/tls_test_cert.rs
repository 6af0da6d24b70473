//! Writes a throw-away test PKI for trying `wss://` locally and for the TLS benchmark: a CA
//! (`ca.pem`, trust it in the client) and a certificate for `localhost` / 127.0.0.1 signed by
//! it (`cert.pem`, chain, and `key.pem`), into the directory given (default `results/tmp/tls`,
//! gitignored). For tests and benchmarks only: never serve these keys.
//!
//! ```text
//! cargo run --example tls_test_cert -- /tmp/rc-tls
//! ringcast serve --tls-cert-file /tmp/rc-tls/cert.pem --tls-key-file /tmp/rc-tls/key.pem
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args().nth(1).unwrap_or_else(|| "results/tmp/tls".to_owned()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ringcast test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf.pem() + &ca.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    println!("wrote {0}/ca.pem, {0}/cert.pem, {0}/key.pem (test only)", dir.display());
    Ok(())
}
