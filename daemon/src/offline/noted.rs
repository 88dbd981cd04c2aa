//! What this host changes online, written into its copy before the copy decides anything: a
//! code accepted here just before an outage must not be accepted here again during it.

use super::*;
use crate::backup::BackupHash;

/// One change this host made online that its copy must have.
#[derive(Debug, Clone)]
pub enum Noted {
    /// A code accepted: the authenticator's mark (raised, never lowered).
    Mark {
        name: String,
        label: String,
        step: i64,
    },
    /// A backup code spent.
    BackupCode { name: String, hash: BackupHash },
}

impl Cache {
    /// Notes `change`; the caller holds its online [`Route`], so that the note is in before
    /// any offline decision can start.
    pub fn note(&self, change: Noted) {
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        noted.push(change);
    }

    /// Writes the noted changes into the copy.
    pub(super) fn apply_noted(&self) -> Result<()> {
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        if noted.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut *noted);
        let kept = changes.clone();
        let now = crate::clock::now();
        let written = self.copy.write(move |tx| {
            for change in &changes {
                match change {
                    Noted::Mark { name, label, step } => {
                        tx.advance_step(name, label, *step, now)?;
                    }
                    Noted::BackupCode { name, hash } => {
                        tx.delete_backup_code(name, hash)?;
                    }
                }
            }
            Ok(())
        });
        if written.is_err() {
            // Kept for the next try: no change may be forgotten.
            noted.extend(kept);
        }
        written
    }
}
