//! The sandbox provider's tables: its accounts and their records, shared by
//! every thread and node (only the sandbox's routes use them).

use super::*;

/// One sandbox record as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SandboxRecord {
    pub object: String,
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    /// A JSON object of the record's fields.
    pub fields: String,
}

/// A page of one object's records in (updated_at, id) order.
#[derive(Debug, Clone, Default)]
pub struct SandboxPage<'a> {
    pub account_id: &'a str,
    pub object: &'a str,
    pub updated_since: Option<i64>,
    /// Records strictly after this (updated_at, id).
    pub after: Option<(i64, &'a str)>,
    pub include_deleted: bool,
    pub limit: i64,
}

/// The order of ids: numeric ids padded so text order is number order.
pub fn sandbox_sort_id(id: &str) -> String {
    format!("{id:0>12}")
}

macro_rules! sandbox_cols {
    () => {
        "object, id, created_at, updated_at, deleted_at, fields"
    };
}

impl Store {
    /// Creates the account with its seed records unless it exists (several
    /// nodes may seed the same account at once; one wins, and the data is
    /// the same). Returns the account's rate limit per minute.
    pub async fn sandbox_account(
        &self,
        account_id: &str,
        seed: impl FnOnce() -> (i64, Vec<SandboxRecord>),
        now: i64,
    ) -> Result<Option<i64>> {
        let found: Option<(Option<i64>,)> = with_db!(self, p => sqlx::query_as(
            "SELECT rate_limit_per_minute FROM sandbox_accounts WHERE id = $1"
        ).bind(account_id).fetch_optional(p).await)?;
        if let Some((limit,)) = found {
            return Ok(limit);
        }
        let (next_id, records) = seed();
        with_db!(self, p => {
            let mut tx = p.begin().await?;
            let r = sqlx::query(
                "INSERT INTO sandbox_accounts (id, next_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            ).bind(account_id).bind(next_id).bind(now).execute(&mut *tx).await?;
            if r.rows_affected() == 1 {
                for chunk in records.chunks(100) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO sandbox_records (account_id, object, id, sort_id, created_at, updated_at, deleted_at, fields) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(account_id).push_bind(r.object.clone()).push_bind(r.id.clone())
                            .push_bind(sandbox_sort_id(&r.id)).push_bind(r.created_at)
                            .push_bind(r.updated_at).push_bind(r.deleted_at).push_bind(r.fields.clone());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(None)
    }

    /// Sets (or clears, with `None`) an account's rate limit.
    pub async fn sandbox_set_rate_limit(
        &self,
        account_id: &str,
        per_minute: Option<i64>,
    ) -> Result<()> {
        with_db!(self, p => sqlx::query(
            "UPDATE sandbox_accounts SET rate_limit_per_minute = $2 WHERE id = $1"
        ).bind(account_id).bind(per_minute).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Up to `limit` records in (updated_at, id) order.
    pub async fn sandbox_list(&self, q: &SandboxPage<'_>) -> Result<Vec<SandboxRecord>> {
        Ok(with_db!(self, p => {
            let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", sandbox_cols!(),
                " FROM sandbox_records WHERE account_id = "));
            qb.push_bind(q.account_id).push(" AND object = ").push_bind(q.object);
            if !q.include_deleted {
                qb.push(" AND deleted_at IS NULL");
            }
            if let Some(t) = q.updated_since {
                qb.push(" AND updated_at >= ").push_bind(t);
            }
            if let Some((t, id)) = q.after {
                let sid = sandbox_sort_id(id);
                qb.push(" AND (updated_at > ").push_bind(t).push(" OR (updated_at = ").push_bind(t)
                    .push(" AND sort_id > ").push_bind(sid).push("))");
            }
            qb.push(" ORDER BY updated_at, sort_id LIMIT ").push_bind(q.limit);
            qb.build_query_as::<SandboxRecord>().fetch_all(p).await?
        }))
    }

    /// One record, deleted or not.
    pub async fn sandbox_get(
        &self,
        account_id: &str,
        object: &str,
        id: &str,
    ) -> Result<Option<SandboxRecord>> {
        Ok(
            with_db!(self, p => sqlx::query_as(concat!("SELECT ", sandbox_cols!(),
            " FROM sandbox_records WHERE account_id = $1 AND object = $2 AND id = $3"))
            .bind(account_id).bind(object).bind(id).fetch_optional(p).await)?,
        )
    }

    /// Creates a record with the account's next id.
    pub async fn sandbox_create(
        &self,
        account_id: &str,
        object: &str,
        fields: &str,
        now: i64,
    ) -> Result<SandboxRecord> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            let (id,): (i64,) = sqlx::query_as(
                "UPDATE sandbox_accounts SET next_id = next_id + 1 WHERE id = $1 RETURNING next_id",
            ).bind(account_id).fetch_one(&mut *tx).await?;
            let id = id.to_string();
            sqlx::query(
                "INSERT INTO sandbox_records (account_id, object, id, sort_id, created_at, updated_at, fields) \
                 VALUES ($1, $2, $3, $4, $5, $5, $6)",
            ).bind(account_id).bind(object).bind(&id).bind(sandbox_sort_id(&id)).bind(now).bind(fields)
            .execute(&mut *tx).await?;
            tx.commit().await?;
            SandboxRecord {
                object: object.to_string(),
                id,
                created_at: now,
                updated_at: now,
                deleted_at: None,
                fields: fields.to_string(),
            }
        }))
    }

    /// Changes a live record: `change` gets its fields and returns the new
    /// ones; `updated_at` becomes `now`, or 1 ms past the old value so a
    /// change always moves it. `None` when there is no live record.
    pub async fn sandbox_update(
        &self,
        account_id: &str,
        object: &str,
        id: &str,
        now: i64,
        delete: bool,
        change: impl FnOnce(&str) -> String,
    ) -> Result<Option<SandboxRecord>> {
        Ok(with_db!(self, p => {
            let mut tx = p.begin().await?;
            // Write first (invariant 4): serialises changes to the account.
            sqlx::query("UPDATE sandbox_accounts SET next_id = next_id WHERE id = $1")
                .bind(account_id).execute(&mut *tx).await?;
            let found: Option<SandboxRecord> = sqlx::query_as(concat!("SELECT ", sandbox_cols!(),
                " FROM sandbox_records WHERE account_id = $1 AND object = $2 AND id = $3 AND deleted_at IS NULL"))
                .bind(account_id).bind(object).bind(id).fetch_optional(&mut *tx).await?;
            match found {
                None => None,
                Some(mut r) => {
                    r.updated_at = now.max(r.updated_at + 1);
                    if delete {
                        r.deleted_at = Some(now);
                    } else {
                        r.fields = change(&r.fields);
                    }
                    sqlx::query(
                        "UPDATE sandbox_records SET fields = $4, updated_at = $5, deleted_at = $6 \
                         WHERE account_id = $1 AND object = $2 AND id = $3",
                    ).bind(account_id).bind(object).bind(id).bind(&r.fields).bind(r.updated_at)
                    .bind(r.deleted_at).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Some(r)
                }
            }
        }))
    }
}
