//! The sandbox CRM (`crates/berth-sandbox`): snake_case records under
//! `/{object}`, `next_cursor` pagination sorted by modification time,
//! `updated_since` for incremental runs and `include_deleted` tombstones.

use serde_json::{Map, Value, json};

use crate::{
    ConnectorError, CrmConnector, ListRequest, NativeRecord, OrgInfo, Page, Provider, Request,
    Response, ms,
};

pub struct Sandbox;

const OBJECTS: &[&str] = &[
    "users",
    "accounts",
    "contacts",
    "deals",
    "leads",
    "notes",
    "tasks",
    "events",
    "attendees",
    "emails",
    "calls",
    "lists",
];

/// (canonical key, sandbox key) for the plain fields of each object.
fn fields(object: &str) -> &'static [(&'static str, &'static str)] {
    match object {
        "users" => &[
            ("firstName", "first_name"),
            ("lastName", "last_name"),
            ("email", "email"),
        ],
        "contacts" => &[
            ("firstName", "first_name"),
            ("lastName", "last_name"),
            ("email", "email"),
            ("jobTitle", "title"),
            ("phone", "phone"),
            ("mobilePhone", "mobile"),
        ],
        "accounts" => &[
            ("name", "name"),
            ("description", "description"),
            ("industry", "industry"),
            ("annualRevenue", "annual_revenue"),
            ("numberOfEmployees", "employees"),
            ("website", "domain"),
            ("phone", "phone"),
        ],
        "deals" => &[
            ("name", "name"),
            ("stage", "stage"),
            ("amount", "amount"),
            ("closeDate", "close_date"),
            ("isWon", "won"),
            ("isClosed", "closed"),
            ("currency", "currency"),
        ],
        "leads" => &[
            ("firstName", "first_name"),
            ("lastName", "last_name"),
            ("email", "email"),
            ("jobTitle", "title"),
            ("phone", "phone"),
            ("mobilePhone", "mobile"),
            ("account", "company"),
        ],
        "notes" => &[("contentHtml", "body_html"), ("contentText", "body_text")],
        "tasks" => &[
            ("subject", "subject"),
            ("body", "body"),
            ("status", "status"),
            ("priority", "priority"),
            ("dueDate", "due_date"),
            ("isDone", "done"),
        ],
        "events" => &[
            ("subject", "subject"),
            ("description", "description"),
            ("type", "kind"),
            ("location", "location"),
            ("startDateTime", "starts_at"),
            ("endDateTime", "ends_at"),
            ("isAllDayEvent", "all_day"),
        ],
        "attendees" => &[("email", "email"), ("status", "response")],
        "emails" => &[
            ("from", "from"),
            ("to", "to"),
            ("cc", "cc"),
            ("bcc", "bcc"),
            ("subject", "subject"),
            ("body", "body_text"),
            ("bodyHtml", "body_html"),
            ("messageDate", "sent_at"),
            ("isIncoming", "incoming"),
            ("isBounced", "bounced"),
            ("hasAttachment", "has_attachment"),
            ("status", "status"),
        ],
        "calls" => &[
            ("subject", "subject"),
            ("description", "notes"),
            ("date", "at"),
            ("disposition", "disposition"),
            ("direction", "direction"),
            ("duration", "duration_seconds"),
            ("from", "from_number"),
            ("to", "to_number"),
            ("recordingUrl", "recording_url"),
        ],
        "lists" => &[("name", "name"), ("objectType", "object_type")],
        _ => &[],
    }
}

/// (canonical association, sandbox key, is a list).
const ASSOCIATIONS: &[(&str, &str, bool)] = &[
    ("ownerUserId", "owner_id", false),
    ("accountIds", "account_id", false),
    ("contactIds", "contact_id", false),
    ("contactIds", "contact_ids", true),
    ("dealIds", "deal_id", false),
    ("leadIds", "lead_id", false),
];

fn to_record(object: &str, v: Value) -> Result<NativeRecord, ConnectorError> {
    let Value::Object(m) = &v else {
        return Err(ConnectorError::Decode(format!(
            "a sandbox {object} record is not an object"
        )));
    };
    let id = match m.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(ConnectorError::Decode(format!(
                "a sandbox {object} record has no id"
            )));
        }
    };
    let mut data = Map::new();
    for (canon, native) in fields(object) {
        data.insert(
            (*canon).into(),
            m.get(*native).cloned().unwrap_or(Value::Null),
        );
    }
    // The unified list's objectType is Vessel's `contact | lead`; the
    // sandbox spells it in the plural.
    if object == "lists"
        && let Some(Value::String(t)) = data.get_mut("objectType")
        && let Some(one) = t.strip_suffix('s')
    {
        *t = one.to_string();
    }
    match object {
        "users" => {
            data.insert(
                "archived".into(),
                json!(m.get("active").and_then(Value::as_bool).map(|a| !a)),
            );
        }
        "deals" => {
            // Vessel's probability is a string.
            data.insert(
                "probability".into(),
                m.get("probability")
                    .and_then(Value::as_f64)
                    .map_or(Value::Null, |p| json!(p.to_string())),
            );
        }
        "accounts" => {
            let addr: Map<String, Value> = [
                ("street", "street"),
                ("city", "city"),
                ("state", "state"),
                ("postalCode", "postal_code"),
                ("country", "country"),
            ]
            .iter()
            .map(|(c, n)| ((*c).into(), m.get(*n).cloned().unwrap_or(Value::Null)))
            .collect();
            let any = addr.values().any(|v| !v.is_null());
            data.insert(
                "address".into(),
                if any {
                    Value::Object(addr)
                } else {
                    Value::Null
                },
            );
        }
        "attendees" => {
            let (t, aid) = match (m.get("contact_id"), m.get("lead_id")) {
                (Some(Value::String(c)), _) => ("contact", json!(c)),
                (_, Some(Value::String(l))) => ("lead", json!(l)),
                _ => ("contact", Value::Null),
            };
            data.insert("associatedObjectType".into(), json!(t));
            data.insert(
                "associations".into(),
                json!({"eventId": m.get("event_id").cloned().unwrap_or(Value::Null), "associationId": aid}),
            );
        }
        _ => {}
    }
    if object != "attendees" {
        let mut assoc = Map::new();
        for (canon, native, list) in ASSOCIATIONS {
            let Some(v) = m.get(*native).filter(|v| !v.is_null()) else {
                continue;
            };
            if *canon == "ownerUserId" {
                assoc.insert((*canon).into(), v.clone());
                continue;
            }
            let entry = assoc
                .entry((*canon).to_string())
                .or_insert_with(|| json!([]));
            if let Value::Array(a) = entry {
                if *list {
                    a.extend(v.as_array().cloned().unwrap_or_default());
                } else {
                    a.push(v.clone());
                }
            }
        }
        if object == "lists" {
            let key = match m.get("object_type").and_then(Value::as_str) {
                Some("lead" | "leads") => "leadIds",
                _ => "contactIds",
            };
            assoc.insert(
                key.into(),
                m.get("member_ids").cloned().unwrap_or_else(|| json!([])),
            );
        }
        data.insert("associations".into(), Value::Object(assoc));
    }
    Ok(NativeRecord {
        native_id: id,
        created_time: ms(m.get("created_at")),
        modified_time: ms(m.get("updated_at")),
        deleted: m.get("deleted_at").is_some_and(|d| !d.is_null()),
        data,
        native: v,
    })
}

/// Canonical input → a sandbox write body.
fn to_native(object: &str, input: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (canon, native) in fields(object) {
        if let Some(v) = input.get(*canon) {
            out.insert((*native).into(), v.clone());
        }
    }
    if object == "deals"
        && let Some(p) = input.get("probability")
    {
        let n = p
            .as_f64()
            .or_else(|| p.as_str().and_then(|s| s.parse().ok()));
        out.insert("probability".into(), n.map_or(Value::Null, |n| json!(n)));
    }
    if object == "accounts"
        && let Some(Value::Object(a)) = input.get("address")
    {
        for (c, n) in [
            ("street", "street"),
            ("city", "city"),
            ("state", "state"),
            ("postalCode", "postal_code"),
            ("country", "country"),
        ] {
            if let Some(v) = a.get(c) {
                out.insert(n.into(), v.clone());
            }
        }
    }
    for (canon, native) in [
        ("ownerUserId", "owner_id"),
        ("accountId", "account_id"),
        ("dealId", "deal_id"),
        ("leadId", "lead_id"),
        ("eventId", "event_id"),
    ] {
        if let Some(v) = input.get(canon) {
            out.insert(native.into(), v.clone());
        }
    }
    match object {
        "deals" | "events" | "calls" | "emails" => {
            if let Some(v) = input.get("contactId") {
                out.insert("contact_ids".into(), json!([v]));
            }
            if let Some(v) = input.get("contactIds") {
                out.insert("contact_ids".into(), v.clone());
            }
        }
        "attendees" => {
            if let Some(v) = input.get("associationId") {
                let key = match input.get("associatedObjectType").and_then(Value::as_str) {
                    Some("lead") => "lead_id",
                    _ => "contact_id",
                };
                out.insert(key.into(), v.clone());
            }
        }
        _ => {
            if let Some(v) = input.get("contactId") {
                out.insert("contact_id".into(), v.clone());
            }
        }
    }
    // Raw provider fields win: they are how callers reach what the unified
    // model does not name.
    if let Some(Value::Object(raw)) = input.get("$native") {
        for (k, v) in raw {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn failed(resp: &Response) -> ConnectorError {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the sandbox refused the request")
        .to_string();
    if resp.status == 404 {
        return ConnectorError::NotFound;
    }
    let code = body.get("error").and_then(Value::as_str).unwrap_or("error");
    let errors = body
        .get("fields")
        .and_then(Value::as_array)
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    json!({
                        "message": f.get("message").cloned().unwrap_or(Value::Null),
                        "errorCode": code,
                        "fields": [f.get("field").cloned().unwrap_or(Value::Null)],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if resp.status >= 500 {
        return ConnectorError::Call(crate::CallError::Unavailable(format!(
            "the sandbox answered {}: {message}",
            resp.status
        )));
    }
    ConnectorError::Provider {
        status: resp.status,
        message,
        errors,
    }
}

fn data_of(object: &str, resp: &Response) -> Result<NativeRecord, ConnectorError> {
    if !(200..300).contains(&resp.status) {
        return Err(failed(resp));
    }
    let mut v = resp.json()?;
    to_record(
        object,
        v.get_mut("data").map(Value::take).unwrap_or(Value::Null),
    )
}

#[async_trait::async_trait]
impl CrmConnector for Sandbox {
    fn integration_id(&self) -> &'static str {
        "sandbox"
    }

    fn objects(&self) -> &'static [&'static str] {
        OBJECTS
    }

    fn tombstones(&self, _object: &str) -> bool {
        true
    }

    async fn list(
        &self,
        p: &dyn Provider,
        object: &str,
        req: &ListRequest,
    ) -> Result<Page, ConnectorError> {
        let mut r = Request::get(format!("/{object}")).query("limit", "100");
        if let Some(c) = &req.cursor {
            r = r.query("cursor", c.clone());
        }
        if let Some(since) = req.since.and_then(chrono::DateTime::from_timestamp_millis) {
            r = r.query(
                "updated_since",
                since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            );
        }
        if req.include_deleted {
            r = r.query("include_deleted", "true");
        }
        let resp = p.send(r).await?;
        if !(200..300).contains(&resp.status) {
            return Err(failed(&resp));
        }
        let body = resp.json()?;
        let Some(items) = body.get("data").and_then(Value::as_array) else {
            return Err(ConnectorError::Decode(
                "the sandbox list has no `data` array".into(),
            ));
        };
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            records.push(to_record(object, item.clone())?);
        }
        Ok(Page {
            records,
            next_cursor: body
                .get("next_cursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            total: None,
        })
    }

    async fn find(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<Option<NativeRecord>, ConnectorError> {
        let resp = p
            .send(Request::get(format!(
                "/{object}/{}",
                crate::segment(native_id)
            )))
            .await?;
        match data_of(object, &resp) {
            Err(ConnectorError::NotFound) => Ok(None),
            r => r.map(Some),
        }
    }

    async fn create(
        &self,
        p: &dyn Provider,
        object: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        let body = Value::Object(to_native(object, input));
        let resp = p
            .send(Request::with_body("POST", format!("/{object}"), body))
            .await?;
        data_of(object, &resp)
    }

    async fn update(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        let body = Value::Object(to_native(object, input));
        let resp = p
            .send(Request::with_body(
                "PATCH",
                format!("/{object}/{}", crate::segment(native_id)),
                body,
            ))
            .await?;
        data_of(object, &resp)
    }

    async fn delete(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<(), ConnectorError> {
        let resp = p
            .send(Request::delete(format!(
                "/{object}/{}",
                crate::segment(native_id)
            )))
            .await?;
        if (200..300).contains(&resp.status) {
            Ok(())
        } else {
            Err(failed(&resp))
        }
    }

    async fn info(&self, p: &dyn Provider, known: &OrgInfo) -> Result<OrgInfo, ConnectorError> {
        let resp = p.send(Request::get("/me")).await?;
        if !(200..300).contains(&resp.status) {
            return Err(failed(&resp));
        }
        let me = resp.json()?;
        let text = |v: &Value| v.as_str().map(String::from);
        Ok(OrgInfo {
            url: known.url.clone().or_else(|| text(&me["org"]["url"])),
            org_id: known.org_id.clone().or_else(|| text(&me["org"]["id"])),
            user_id: known.user_id.clone().or_else(|| text(&me["user"]["id"])),
            currency: text(&me["org"]["currency"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_contact_both_ways() {
        let r = to_record(
            "contacts",
            json!({"id": "1001", "first_name": "Ava", "last_name": "Chen", "title": "CTO",
                   "account_id": "1010", "owner_id": "1001", "created_at": "2024-01-01T00:00:00Z",
                   "updated_at": "2024-01-02T00:00:00Z", "deleted_at": null}),
        )
        .unwrap();
        assert_eq!(r.native_id, "1001");
        assert_eq!(r.data["jobTitle"], "CTO");
        assert_eq!(r.data["associations"]["accountIds"], json!(["1010"]));
        assert_eq!(r.data["associations"]["ownerUserId"], "1001");
        assert!(!r.deleted);
        let back = to_native(
            "contacts",
            json!({"lastName": "L", "accountId": "9", "$native": {"title": "x"}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(back["last_name"], "L");
        assert_eq!(back["account_id"], "9");
        assert_eq!(back["title"], "x");
    }

    #[test]
    fn hostile_records_are_errors_not_panics() {
        assert!(to_record("contacts", json!([1])).is_err());
        assert!(to_record("contacts", json!({"name": "no id"})).is_err());
        let r = to_record("deals", json!({"id": 5, "probability": "high"})).unwrap();
        assert_eq!(r.data["probability"], Value::Null);
    }
}
