//! Invitations and helpdesk codes in PostgreSQL: the statements behind their `Tx` primitives
//! (`tx.rs` delegates here). Statements about one user run under that user's lock, so that an
//! invitation or a helpdesk code is used once across the fleet.

use super::*;

fn invitation_of(r: &Row, at: usize) -> Invitation {
    Invitation {
        created_at: r.get::<_, i64>(at) as u64,
        expires_at: r.get::<_, i64>(at + 1) as u64,
        replace: r.get::<_, i64>(at + 2) != 0,
        expiry_noted: r.get::<_, i64>(at + 3) != 0,
    }
}

/// The tables keyed by name whose rows expire.
#[derive(Clone, Copy)]
pub(crate) enum Table {
    Invitations,
    Bypass,
}

impl PgTx<'_> {
    pub(crate) fn invitation_row(&self, name: &str) -> Result<Option<Invitation>> {
        Ok(self
            .one(
                Some(name),
                "SELECT created_at, expires_at, replace, expiry_noted FROM invitations WHERE name = $1",
                &[&name],
            )?
            .map(|r| invitation_of(&r, 0)))
    }

    pub(crate) fn invitation_rows(&self) -> Result<Vec<(String, Invitation)>> {
        Ok(self
            .all(
                "SELECT name, created_at, expires_at, replace, expiry_noted FROM invitations ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), invitation_of(r, 1)))
            .collect())
    }

    pub(crate) fn put_invitation_row(&self, name: &str, i: &Invitation) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO invitations (name, created_at, expires_at, replace, expiry_noted)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET created_at = excluded.created_at,
               expires_at = excluded.expires_at, replace = excluded.replace,
               expiry_noted = excluded.expiry_noted",
            &[
                &name,
                &to_i64(i.created_at),
                &to_i64(i.expires_at),
                &i64::from(i.replace),
                &i64::from(i.expiry_noted),
            ],
        )?;
        Ok(())
    }

    pub(crate) fn delete_by_name(&self, table: Table, name: &str) -> Result<bool> {
        let sql = match table {
            Table::Invitations => "DELETE FROM invitations WHERE name = $1",
            Table::Bypass => "DELETE FROM bypass_codes WHERE name = $1",
        };
        Ok(self.exec(Some(name), sql, &[&name])? == 1)
    }

    pub(crate) fn prune_expired(&self, table: Table, before: u64) -> Result<usize> {
        let sql = match table {
            Table::Invitations => "DELETE FROM invitations WHERE expires_at < $1",
            Table::Bypass => "DELETE FROM bypass_codes WHERE expires_at < $1",
        };
        Ok(self.exec(None, sql, &[&to_i64(before)])? as usize)
    }

    pub(crate) fn note_invitation_expired_row(&self, name: &str) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE invitations SET expiry_noted = 1 WHERE name = $1",
            &[&name],
        )?;
        Ok(())
    }

    pub(crate) fn bypass_row(&self, name: &str) -> Result<Option<BypassRecord>> {
        Ok(self
            .one(
                Some(name),
                "SELECT hash, salt, created_at, expires_at, uses_left FROM bypass_codes WHERE name = $1",
                &[&name],
            )?
            .map(|r| BypassRecord {
                hash: r.get(0),
                salt: r.get(1),
                created_at: r.get::<_, i64>(2) as u64,
                expires_at: r.get::<_, i64>(3) as u64,
                uses_left: count(r.get(4)),
            }))
    }

    pub(crate) fn put_bypass_row(&self, name: &str, b: &BypassRecord) -> Result<()> {
        self.exec(
            Some(name),
            "INSERT INTO bypass_codes (name, hash, salt, created_at, expires_at, uses_left)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, salt = excluded.salt,
               created_at = excluded.created_at, expires_at = excluded.expires_at,
               uses_left = excluded.uses_left",
            &[
                &name,
                &b.hash,
                &b.salt,
                &to_i64(b.created_at),
                &to_i64(b.expires_at),
                &i64::from(b.uses_left),
            ],
        )?;
        Ok(())
    }

    pub(crate) fn set_bypass_uses_row(&self, name: &str, uses_left: u32) -> Result<()> {
        self.exec(
            Some(name),
            "UPDATE bypass_codes SET uses_left = $2 WHERE name = $1",
            &[&name, &i64::from(uses_left)],
        )?;
        Ok(())
    }
}
