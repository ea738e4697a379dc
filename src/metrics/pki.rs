//! When the virtual cluster's certificates expire, read from the PKI of the
//! newest backup: an expired CA or leaf stops the restored cluster (and the
//! running one) as surely as a lost backup.

use anyhow::Result;
use prometheus::{GaugeVec, Opts, Registry};

use crate::manifest::SavedPki;

pub struct PkiMetrics {
    expiry: GaugeVec,
}

impl PkiMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let expiry = GaugeVec::new(
            Opts::new(
                "vcbackup_pki_expiry_timestamp_seconds",
                "Unix time the earliest-expiring CA certificate (certificates=\"ca\") and other certificate (certificates=\"leaf\", kubeconfigs' included) of the newest backup's PKI expire; absent when it holds no PKI.",
            ),
            &["certificates"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(PkiMetrics { expiry })
    }

    /// The newest backup's PKI, as its manifest records it.
    pub fn record(&self, saved: Option<&SavedPki>) {
        // No PKI, no series: a stale expiry must not outlive the PKI it came from.
        self.expiry.reset();
        let Some(saved) = saved else { return };
        for (label, at) in [("ca", saved.ca_expires), ("leaf", saved.leaf_expires)] {
            if let Some(at) = at {
                self.expiry
                    .with_label_values(&[label])
                    .set(at.timestamp() as f64);
            }
        }
    }
}
