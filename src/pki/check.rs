//! What a drill checks of a PKI, each check by a fixed name and each failure
//! by the file it is about: every certificate parses (`pki-certificates`),
//! none has expired (`pki-expiry`, which also reports the earliest expiry),
//! each key matches its certificate (`pki-keys`), each certificate is signed
//! by a CA of the PKI (`pki-chain`), the service-account keys are one pair
//! (`pki-service-account`), and each kubeconfig's client certificate and key
//! belong to this PKI (`pki-kubeconfigs`).

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};

use super::Pki;
use super::x509::{self, Cert};
use crate::store::Finding;

/// The earliest end of validity among the CA certificates and among the
/// others (kubeconfigs' client certificates included), with the file of each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub ca: Option<(String, DateTime<Utc>)>,
    pub leaf: Option<(String, DateTime<Utc>)>,
}

/// A certificate of the PKI and where it is.
struct Named {
    path: String,
    cert: Cert,
    ca: bool,
}

/// A kubeconfig's embedded credentials, as far as they could be read.
struct Kubeconfig {
    path: String,
    client: Result<(Cert, Vec<u8>), String>,
    authority: Option<Result<Cert, String>>,
}

/// The PKI read once for every check.
struct Survey {
    certs: Vec<Named>,
    unreadable: Vec<String>,
    kubeconfigs: Vec<Kubeconfig>,
}

fn survey(pki: &Pki) -> Survey {
    let mut survey = Survey {
        certs: Vec::new(),
        unreadable: Vec::new(),
        kubeconfigs: Vec::new(),
    };
    for (path, data) in &pki.files {
        if path.ends_with(".crt") {
            match Cert::parse_pem(data) {
                Ok(certs) => {
                    // The first certificate is the file's own; any after it form its chain.
                    if let Some(cert) = certs.into_iter().next() {
                        let ca = cert.is_ca();
                        survey.certs.push(Named {
                            path: path.clone(),
                            cert,
                            ca,
                        });
                    }
                }
                Err(why) => survey.unreadable.push(format!("{path}: {why}")),
            }
        } else if path.ends_with(".conf") {
            survey.kubeconfigs.push(kubeconfig(path, data));
        }
    }
    survey
}

fn kubeconfig(path: &str, text: &[u8]) -> Kubeconfig {
    // kubeadm writes each credential as one plain scalar on its own line.
    let field = |name: &str| -> Option<Result<Vec<u8>, String>> {
        let text = String::from_utf8_lossy(text);
        let value = text.lines().find_map(|line| {
            line.trim()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().trim_matches('"').to_string())
        })?;
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .map_err(|_| format!("its {name} is not base64")),
        )
    };
    let client = match (field("client-certificate-data"), field("client-key-data")) {
        (Some(cert), Some(key)) => cert.and_then(|cert| {
            let key = key?;
            let cert = Cert::parse_pem(&cert)
                .map_err(|why| format!("its client-certificate-data {why}"))?;
            let first = cert.into_iter().next().ok_or("no client certificate")?;
            Ok((first, key))
        }),
        _ => Err("holds no client-certificate-data and client-key-data".into()),
    };
    let authority = field("certificate-authority-data").map(|data| {
        data.and_then(|pem| {
            Cert::parse_pem(&pem)
                .map_err(|why| format!("its certificate-authority-data {why}"))?
                .into_iter()
                .next()
                .ok_or_else(|| "no CA certificate".to_string())
        })
    });
    Kubeconfig {
        path: path.to_string(),
        client,
        authority,
    }
}

/// The earliest expiry of the CA certificates and of the others; what cannot
/// be parsed is left out (the drill says so).
pub fn expiry(pki: &Pki) -> Expiry {
    let survey = survey(pki);
    earliest(&survey)
}

fn earliest(survey: &Survey) -> Expiry {
    let mut expiry = Expiry::default();
    let leaves = survey.kubeconfigs.iter().filter_map(|k| {
        let (cert, _) = k.client.as_ref().ok()?;
        Some((k.path.as_str(), cert, false))
    });
    let all = survey
        .certs
        .iter()
        .map(|n| (n.path.as_str(), &n.cert, n.ca))
        .chain(leaves);
    for (path, cert, ca) in all {
        let slot = if ca { &mut expiry.ca } else { &mut expiry.leaf };
        let at = cert.not_after();
        if slot.as_ref().is_none_or(|(_, old)| at < *old) {
            *slot = Some((path.to_string(), at));
        }
    }
    expiry
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn verdict(name: &'static str, problems: Vec<String>, ok: String) -> Finding {
    if problems.is_empty() {
        Finding::pass(name, ok)
    } else {
        Finding::fail(name, problems.join("; "))
    }
}

/// Every check of the PKI at time `now`.
pub fn check(pki: &Pki, now: DateTime<Utc>) -> Vec<Finding> {
    let survey = survey(pki);
    let mut findings = Vec::new();
    let mut unreadable = survey.unreadable.clone();
    if survey.certs.is_empty() && unreadable.is_empty() {
        unreadable.push("no certificate (*.crt) in the PKI".into());
    }
    let cas = survey.certs.iter().filter(|n| n.ca).count();
    findings.push(verdict(
        "pki-certificates",
        unreadable,
        format!(
            "{} certificates parse, {cas} of them CAs",
            survey.certs.len()
        ),
    ));
    findings.push(expiry_finding(&survey, now));
    findings.push(keys(pki, &survey));
    findings.push(chain(&survey));
    findings.push(service_account(pki));
    if !survey.kubeconfigs.is_empty() {
        findings.push(kubeconfigs(&survey));
    }
    findings
}

fn expiry_finding(survey: &Survey, now: DateTime<Utc>) -> Finding {
    let mut problems = Vec::new();
    let kubeconfig_certs = survey
        .kubeconfigs
        .iter()
        .filter_map(|k| Some((k.path.as_str(), &k.client.as_ref().ok()?.0)));
    for (path, cert) in survey
        .certs
        .iter()
        .map(|n| (n.path.as_str(), &n.cert))
        .chain(kubeconfig_certs)
    {
        let at = cert.not_after();
        if at <= now {
            problems.push(format!(
                "{path} ({}) expired at {}",
                cert.subject(),
                stamp(at)
            ));
        }
    }
    let earliest = earliest(survey);
    let shown = |slot: &Option<(String, DateTime<Utc>)>| match slot {
        Some((path, at)) => format!("{} ({path})", stamp(*at)),
        None => "none".into(),
    };
    verdict(
        "pki-expiry",
        problems,
        format!(
            "earliest expiry: CA {}, leaf {}",
            shown(&earliest.ca),
            shown(&earliest.leaf)
        ),
    )
}

/// Each `X.key` beside an `X.crt` is that certificate's key.
fn keys(pki: &Pki, survey: &Survey) -> Finding {
    let mut problems = Vec::new();
    let mut matched = 0;
    for (path, data) in &pki.files {
        let Some(stem) = path.strip_suffix(".key") else {
            continue;
        };
        let cert_path = format!("{stem}.crt");
        let key = x509::private_key(data);
        let Some(named) = survey.certs.iter().find(|n| n.path == cert_path) else {
            // sa.key has no certificate; any other lone key must at least be whole.
            if let Err(why) = key {
                problems.push(format!("{path}: {why}"));
            }
            continue;
        };
        match (key, named.cert.public_key()) {
            (Ok(key), Ok(public)) if key == public => matched += 1,
            (Ok(_), Ok(_)) => problems.push(format!(
                "{path} does not match {cert_path}: the key belongs to another certificate"
            )),
            (Err(why), _) => problems.push(format!("{path}: {why}")),
            (_, Err(why)) => problems.push(format!("{cert_path}: {why}")),
        }
    }
    verdict(
        "pki-keys",
        problems,
        format!("{matched} keys match their certificates"),
    )
}

/// The CA among `survey`'s that signed `cert`, or why none did.
fn issuer<'a>(survey: &'a Survey, cert: &Cert) -> Result<&'a Named, String> {
    let named: Vec<&Named> = survey
        .certs
        .iter()
        .filter(|n| n.ca && cert.names_as_issuer(&n.cert))
        .collect();
    if named.is_empty() {
        return Err(format!(
            "is issued by {}, which is no CA of the PKI",
            cert.issuer()
        ));
    }
    let mut why = Vec::new();
    for ca in &named {
        match cert.signed_by(&ca.cert) {
            Ok(()) => return Ok(ca),
            Err(reason) => why.push(format!("{}: {reason}", ca.path)),
        }
    }
    Err(format!(
        "names {} as its issuer but no CA of that name signed it ({})",
        cert.issuer(),
        why.join(", ")
    ))
}

/// Each certificate is signed by a CA of the PKI (a root by itself).
fn chain(survey: &Survey) -> Finding {
    let mut problems = Vec::new();
    for named in &survey.certs {
        if let Err(why) = issuer(survey, &named.cert) {
            problems.push(format!("{} ({}) {why}", named.path, named.cert.subject()));
        }
    }
    let leaves = survey.certs.iter().filter(|n| !n.ca).count();
    verdict(
        "pki-chain",
        problems,
        format!("{leaves} leaf certificates chain to the PKI's CAs, each signature verified"),
    )
}

/// `sa.key` signs the tokens that `sa.pub` verifies: they must be one pair.
fn service_account(pki: &Pki) -> Finding {
    let problems = match (pki.get("sa.key"), pki.get("sa.pub")) {
        (Some(key), Some(public)) => match (x509::private_key(key), x509::public_key(public)) {
            (Ok(key), Ok(public)) if key == public => Vec::new(),
            (Ok(_), Ok(_)) => vec![
                "sa.key and sa.pub are not one key pair: tokens signed with sa.key would be rejected"
                    .to_string(),
            ],
            (Err(why), _) => vec![format!("sa.key: {why}")],
            (_, Err(why)) => vec![format!("sa.pub: {why}")],
        },
        (key, public) => [("sa.key", key.is_none()), ("sa.pub", public.is_none())]
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(name, _)| {
                format!("{name} is missing: service-account tokens could not be checked")
            })
            .collect(),
    };
    verdict(
        "pki-service-account",
        problems,
        "sa.key and sa.pub are one key pair".into(),
    )
}

/// Each kubeconfig's client certificate is signed by a CA of the PKI and
/// matches its key; its CA, when embedded, is one of the PKI's.
fn kubeconfigs(survey: &Survey) -> Finding {
    let mut problems = Vec::new();
    for k in &survey.kubeconfigs {
        let (cert, key) = match &k.client {
            Ok(client) => client,
            Err(why) => {
                problems.push(format!("{}: {why}", k.path));
                continue;
            }
        };
        match (x509::private_key(key), cert.public_key()) {
            (Ok(key), Ok(public)) if key == public => {}
            (Ok(_), Ok(_)) => problems.push(format!(
                "{}: its client-key-data does not match its client certificate",
                k.path
            )),
            (Err(why), _) => problems.push(format!("{}: its client-key-data {why}", k.path)),
            (_, Err(why)) => problems.push(format!("{}: its client certificate {why}", k.path)),
        }
        if let Err(why) = issuer(survey, cert) {
            problems.push(format!("{}: its client certificate {why}", k.path));
        }
        match &k.authority {
            Some(Ok(ca)) if !survey.certs.iter().any(|n| n.cert.der == ca.der) => {
                problems.push(format!(
                    "{}: its certificate-authority-data is no CA of the PKI",
                    k.path
                ));
            }
            Some(Err(why)) => problems.push(format!("{}: {why}", k.path)),
            _ => {}
        }
    }
    verdict(
        "pki-kubeconfigs",
        problems,
        format!(
            "{} kubeconfigs' client certificates are the PKI's",
            survey.kubeconfigs.len()
        ),
    )
}
