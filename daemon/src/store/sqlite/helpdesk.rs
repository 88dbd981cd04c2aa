//! Invitations and helpdesk codes in SQLite: the statements behind their `Tx` primitives
//! (`tx.rs` delegates here, so that file stays about enrollments and logins).

use super::tx::{to_i64, SqliteTx};
use super::*;

fn invitation_of(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Invitation> {
    Ok(Invitation {
        created_at: r.get::<_, i64>(at)? as u64,
        expires_at: r.get::<_, i64>(at + 1)? as u64,
        replace: r.get::<_, i64>(at + 2)? != 0,
        expiry_noted: r.get::<_, i64>(at + 3)? != 0,
    })
}

impl SqliteTx<'_> {
    pub(super) fn invitation_row(&self, name: &str) -> Result<Option<Invitation>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT created_at, expires_at, replace, expiry_noted FROM invitations WHERE name = ?1",
            )?
            .query_row([name], |r| invitation_of(r, 0))
            .optional()?)
    }

    pub(super) fn invitation_rows(&self) -> Result<Vec<(String, Invitation)>> {
        let mut stmt = self.0.prepare_cached(
            "SELECT name, created_at, expires_at, replace, expiry_noted FROM invitations ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, invitation_of(r, 1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub(super) fn put_invitation_row(&self, name: &str, i: &Invitation) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO invitations (name, created_at, expires_at, replace, expiry_noted)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                name,
                to_i64(i.created_at),
                to_i64(i.expires_at),
                i64::from(i.replace),
                i64::from(i.expiry_noted)
            ])?;
        Ok(())
    }

    pub(super) fn delete_by_name(&self, table: Table, name: &str) -> Result<bool> {
        let sql = match table {
            Table::Invitations => "DELETE FROM invitations WHERE name = ?1",
            Table::Bypass => "DELETE FROM bypass_codes WHERE name = ?1",
        };
        Ok(self.0.prepare_cached(sql)?.execute([name])? == 1)
    }

    pub(super) fn prune_expired(&self, table: Table, before: u64) -> Result<usize> {
        let sql = match table {
            Table::Invitations => "DELETE FROM invitations WHERE expires_at < ?1",
            Table::Bypass => "DELETE FROM bypass_codes WHERE expires_at < ?1",
        };
        Ok(self.0.prepare_cached(sql)?.execute([to_i64(before)])?)
    }

    pub(super) fn note_invitation_expired_row(&self, name: &str) -> Result<()> {
        self.0
            .prepare_cached("UPDATE invitations SET expiry_noted = 1 WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    pub(super) fn bypass_row(&self, name: &str) -> Result<Option<BypassRecord>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT hash, salt, created_at, expires_at, uses_left FROM bypass_codes WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok(BypassRecord {
                    hash: r.get(0)?,
                    salt: r.get(1)?,
                    created_at: r.get::<_, i64>(2)? as u64,
                    expires_at: r.get::<_, i64>(3)? as u64,
                    uses_left: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })
            .optional()?)
    }

    pub(super) fn put_bypass_row(&self, name: &str, b: &BypassRecord) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO bypass_codes (name, hash, salt, created_at, expires_at, uses_left)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                name,
                b.hash,
                b.salt,
                to_i64(b.created_at),
                to_i64(b.expires_at),
                i64::from(b.uses_left)
            ])?;
        Ok(())
    }

    pub(super) fn set_bypass_uses_row(&self, name: &str, uses_left: u32) -> Result<()> {
        self.0
            .prepare_cached("UPDATE bypass_codes SET uses_left = ?2 WHERE name = ?1")?
            .execute(params![name, i64::from(uses_left)])?;
        Ok(())
    }
}

/// The tables keyed by name whose rows expire.
#[derive(Clone, Copy)]
pub(super) enum Table {
    Invitations,
    Bypass,
}
