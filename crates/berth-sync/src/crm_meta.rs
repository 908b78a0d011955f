//! The parts of the unified CRM API that are about the connected account
//! rather than its records: field metadata (`/details`), custom fields,
//! account info (`/unifications/crm/info`), and v1 user associations.

use berth_connectors::{CustomFieldSpec, CustomKind, OrgInfo};
use berth_store::{Connection, RecordPage};
use berth_unified::crm::{self, Object};
use serde_json::{Map, Value, json};

use crate::ConnProvider;
use crate::crm::{Crm, CrmError, Generation, Result};

/// Records of one user-association page: at most this many ids in all.
const ASSOCIATION_PAGE: usize = 1000;

fn bad(code: &'static str, message: impl Into<String>) -> CrmError {
    CrmError::BadRequest {
        code,
        message: message.into(),
    }
}

/// `[{name, key}]` as `(key, name)` pairs.
fn options(v: Option<&Value>) -> Result<Vec<(String, String)>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = v.as_array().ok_or_else(|| {
        bad(
            "INVALID_CUSTOM_FIELD",
            "customField.options must be an array of {name, key}",
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, o)| {
            let name = o.get("name").and_then(Value::as_str).map(str::trim);
            let key = o.get("key").and_then(Value::as_str).map(str::trim);
            match (name, key) {
                (Some(n), Some(k)) if !n.is_empty() && !k.is_empty() => {
                    Ok((k.to_string(), n.to_string()))
                }
                _ => Err(bad(
                    "INVALID_CUSTOM_FIELD",
                    format!("customField.options[{i}] needs a non-empty `name` and `key`"),
                )),
            }
        })
        .collect()
}

/// Reads Vessel's `CustomFieldCreate`.
pub fn custom_field_spec(v: &Value) -> Result<CustomFieldSpec> {
    let m = v
        .as_object()
        .ok_or_else(|| bad("INVALID_CUSTOM_FIELD", "`customField` must be an object"))?;
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("INVALID_CUSTOM_FIELD", "customField.name is required"))?;
    let kind = m
        .get("type")
        .and_then(Value::as_str)
        .and_then(CustomKind::parse)
        .ok_or_else(|| {
            bad(
                "INVALID_CUSTOM_FIELD",
                "customField.type must be one of singleselect, number, text, currency, percentage",
            )
        })?;
    let key = match m.get("customKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) if !k.trim().is_empty() => Some(k.trim().to_string()),
        Some(_) => {
            return Err(bad(
                "INVALID_CUSTOM_FIELD",
                "customField.customKey must be a non-empty string",
            ));
        }
    };
    let options = options(m.get("options"))?;
    if kind == CustomKind::SingleSelect && options.is_empty() {
        return Err(bad(
            "INVALID_CUSTOM_FIELD",
            "customField.options is required when type is singleselect",
        ));
    }
    let native = match m.get("$native") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            return Err(bad(
                "INVALID_CUSTOM_FIELD",
                "customField.$native must be an object",
            ));
        }
    };
    Ok(CustomFieldSpec {
        key,
        name: name.to_string(),
        kind,
        options,
        native,
    })
}

impl Crm {
    /// `/details`: the unified fields, then the provider's custom fields
    /// (and with `all_fields` every other provider field), read live.
    pub async fn details(
        &self,
        conn: &Connection,
        o: &'static Object,
        generation: Generation,
        all_fields: bool,
        deal: Option<&str>,
    ) -> Result<Vec<Value>> {
        let connector = Self::connector(conn)?;
        let mut out = crm::details(o, generation == Generation::V2);
        let provider = ConnProvider::new(&self.platform, conn);
        if o.name == "deals" {
            let stages = self
                .deal_stages(conn, o, connector, &provider, generation, deal)
                .await?;
            if let Some(stages) = stages
                && let Some(f) = out.iter_mut().find(|f| f["name"] == "stage")
            {
                f["type"] = json!("singleselect");
                f["options"] = stages
                    .into_iter()
                    .map(|(key, name)| json!({"key": key, "name": name}))
                    .collect();
            }
        }
        for f in connector.fields(&provider, o.name).await? {
            if !(f.custom || all_fields) {
                continue;
            }
            let options = f.options.map(|o| {
                o.into_iter()
                    .map(|(key, name)| json!({"key": key, "name": name}))
                    .collect::<Vec<_>>()
            });
            out.push(json!({
                "key": f.key, "name": f.name, "type": f.kind, "options": options,
                "isArray": f.is_array, "custom": f.custom, "universal": false,
                "required": f.required, "creatable": f.creatable, "updatable": f.updatable,
            }));
        }
        Ok(out)
    }

    /// The stages a deal may take: those of the pipeline of the deal `id`
    /// (a v1 or native id of a synced deal), or of the pipeline with that
    /// id, or of every pipeline when there is no `id`.
    async fn deal_stages(
        &self,
        conn: &Connection,
        o: &'static Object,
        connector: &'static dyn berth_connectors::CrmConnector,
        provider: &ConnProvider<'_>,
        generation: Generation,
        id: Option<&str>,
    ) -> Result<Option<Vec<(String, String)>>> {
        let id = id.map(str::trim).filter(|i| !i.is_empty());
        let mut deal_found = false;
        let pipeline = match id {
            None => None,
            Some(id) => {
                let found = self.lookup(conn, o, generation, &[id.to_string()]).await?;
                match found.into_iter().next().and_then(|(_, r)| r) {
                    Some(r) => {
                        deal_found = true;
                        let native: Value = serde_json::from_str(&r.native).unwrap_or_default();
                        // A deal with no pipeline of its own: every stage.
                        match connector.deal_pipeline(&native) {
                            Some(p) => Some(p),
                            None => return Ok(connector.deal_stages(provider, None).await?),
                        }
                    }
                    None => Some(id.to_string()),
                }
            }
        };
        let unknown = || {
            CrmError::NotFound(format!(
                "no deal or pipeline with id `{}`",
                id.unwrap_or_default()
            ))
        };
        match connector.deal_stages(provider, pipeline.as_deref()).await {
            Err(berth_connectors::ConnectorError::NotFound) => Err(unknown()),
            // A provider without pipelines knows no pipeline ids either.
            Ok(None) if id.is_some() && !deal_found => Err(unknown()),
            r => Ok(r?),
        }
    }

    /// Creates a custom field on `o` at the provider; returns its key.
    pub async fn create_custom_field(
        &self,
        conn: &Connection,
        o: &'static Object,
        field: &Value,
    ) -> Result<String> {
        let connector = Self::connector(conn)?;
        let spec = custom_field_spec(field)?;
        let provider = ConnProvider::new(&self.platform, conn);
        Ok(connector
            .create_custom_field(&provider, o.name, &spec)
            .await?)
    }

    /// Vessel's `CustomFieldUpdate {key, options?}`; returns the key.
    pub async fn update_custom_field(
        &self,
        conn: &Connection,
        o: &'static Object,
        field: &Value,
    ) -> Result<String> {
        let connector = Self::connector(conn)?;
        let key = field
            .get("key")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("INVALID_CUSTOM_FIELD", "customField.key is required"))?;
        let options = options(field.get("options"))?;
        let provider = ConnProvider::new(&self.platform, conn);
        connector
            .update_custom_field(&provider, o.name, key, &options)
            .await
            .map_err(|e| match e {
                berth_connectors::ConnectorError::NotFound => {
                    CrmError::NotFound(format!("no custom field `{key}` on {}", o.name))
                }
                e => e.into(),
            })
    }

    /// What the connection knows of its account, completed by the provider.
    pub async fn info(&self, conn: &Connection) -> Result<OrgInfo> {
        let connector = Self::connector(conn)?;
        let known = OrgInfo {
            url: conn.native_org_url.clone(),
            org_id: conn.native_org_id.clone(),
            user_id: conn.native_user_id.clone(),
            currency: None,
        };
        let provider = ConnProvider::new(&self.platform, conn);
        Ok(connector.info(&provider, &known).await?)
    }

    /// v1 `POST /crm/users/associations`: for each user, the ids of the
    /// `object` records it owns, from the store; paged over the object's
    /// records.
    pub async fn user_associations(
        &self,
        conn: &Connection,
        object: &'static Object,
        ids: &[String],
        cursor: Option<&str>,
    ) -> Result<(Vec<Value>, Vec<String>, Option<String>)> {
        self.ready(conn).await?;
        if ids.is_empty() || ids.len() > crate::crm::MAX_LIMIT as usize {
            return Err(bad(
                "INVALID_IDS",
                format!("`ids` must hold 1 to {} user ids", crate::crm::MAX_LIMIT),
            ));
        }
        let users = crm::object("users").ok_or_else(|| CrmError::NotFound("users".into()))?;
        let mut owners: Vec<(String, String, String, Vec<String>)> = Vec::new();
        let mut invalid = Vec::new();
        for (id, r) in self.lookup(conn, users, Generation::V1, ids).await? {
            match r {
                Some(r) => owners.push((id, r.native_id, r.uid, Vec::new())),
                None => invalid.push(id),
            }
        }
        let mut sorted = ids.to_vec();
        sorted.sort();
        let scope = format!(
            "crm:{}:users/associations:{}:{}",
            conn.id,
            object.name,
            &crm::content_hash(&json!(sorted), &Value::Null)[..12]
        );
        let cursors = self.platform.cursors();
        let mut after = self.store_position(&scope, cursor)?;
        let mut found = 0usize;
        let mut scanned = 0usize;
        let next = loop {
            if owners.is_empty() {
                break None;
            }
            let rows = self
                .platform
                .store()
                .list_records(&RecordPage {
                    environment_id: &conn.environment_id,
                    connection_id: &conn.id,
                    object: object.name,
                    after_seq: after,
                    limit: 500,
                    include_deleted: false,
                })
                .await?;
            let exhausted = rows.len() < 500;
            for r in &rows {
                after = r.seq;
                scanned += 1;
                let data: Value = serde_json::from_str(&r.data).unwrap_or(Value::Null);
                let Some(owner) = data["associations"]["ownerUserId"].as_str() else {
                    continue;
                };
                if let Some(o) = owners.iter_mut().find(|o| o.1 == owner) {
                    o.3.push(crm::v1_id(object.v1_type, &r.uid));
                    found += 1;
                }
            }
            if exhausted {
                break None;
            }
            if found >= ASSOCIATION_PAGE || scanned >= self.scan_budget {
                break Some(cursors.encode(&scope, &after));
            }
        };
        let key = format!("{}Ids", object.v1_type);
        let users = owners
            .into_iter()
            .map(|(_, native, uid, ids)| {
                json!({
                    "id": crm::v1_id(users.v1_type, &uid),
                    "nativeId": native,
                    "associations": {key.as_str(): ids},
                })
            })
            .collect();
        Ok((users, invalid, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_field_bodies_are_checked() {
        let s = custom_field_spec(&json!({"name": " Tier ", "type": "singleselect",
            "options": [{"name": "Gold", "key": "gold"}], "customKey": "tier_level"}))
        .unwrap();
        assert_eq!(s.name, "Tier");
        assert_eq!(s.key.as_deref(), Some("tier_level"));
        assert_eq!(s.options, vec![("gold".to_string(), "Gold".to_string())]);
        for bad in [
            json!([]),
            json!({"type": "text"}),
            json!({"name": "x", "type": "blob"}),
            json!({"name": "x", "type": "singleselect"}),
            json!({"name": "x", "type": "text", "options": [{"name": "a"}]}),
            json!({"name": "x", "type": "text", "customKey": 5}),
            json!({"name": "x", "type": "text", "$native": []}),
        ] {
            assert!(custom_field_spec(&bad).is_err(), "{bad}");
        }
    }
}
