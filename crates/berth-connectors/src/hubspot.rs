//! HubSpot (CRM v3 objects, owners, associations v4).
//!
//! - Full runs page `GET /crm/v3/objects/{type}` by `after` with the mapped
//!   properties and associations inline.
//! - Runs with a start time (the initial 30 days and incremental runs) use
//!   `POST /crm/v3/objects/{type}/search` on the last-modified property
//!   (`lastmodifieddate` for contacts, `hs_lastmodifieddate` otherwise),
//!   sorted ascending; search stops at 10,000 results, so the cursor
//!   re-anchors on the last timestamp seen before reaching it. Search
//!   results carry no associations: they are read with one v4 batch call per
//!   associated type.
//! - Incremental runs then list `archived=true` for tombstones.
//! - Search has its own per-second limit; search and batch-read POSTs are
//!   marked read-only, so the outbound layer's retry policy waits a 429
//!   out as it does for GETs (the connector itself never retries).
//! - Field metadata and custom fields use the properties API
//!   (`/crm/v3/properties/{type}`); account info is
//!   `/account-info/v3/details`.

use serde_json::{Map, Value, json};

use crate::{
    CallError, ConnectorError, CrmConnector, CustomFieldSpec, CustomKind, FieldMeta, ListRequest,
    NativeRecord, OrgInfo, Page, Provider, Request, Response, ms,
};

pub struct HubSpot;

const OBJECTS: &[&str] = &[
    "users",
    "accounts",
    "contacts",
    "deals",
    "notes",
    "tasks",
    "events",
    "attendees",
    "calls",
    "emails",
    "leads",
    "lists",
];

const PAGE: usize = 100;
/// HubSpot's association type of a lead's primary contact.
const LEAD_TO_PRIMARY_CONTACT: u32 = 578;

/// A lead's `hs_lead_name`: the person's name.
fn lead_name(input: &Map<String, Value>) -> String {
    let part = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let name = format!("{} {}", part("firstName"), part("lastName"));
    match name.trim() {
        "" => "Lead".to_string(),
        n => n.to_string(),
    }
}

/// HubSpot search cannot page past this many results.
const SEARCH_CAP: usize = 10_000;

/// The HubSpot object type of a unified object.
fn hs_type(object: &str) -> Option<&'static str> {
    Some(match object {
        "accounts" => "companies",
        "contacts" => "contacts",
        "deals" => "deals",
        "notes" => "notes",
        "tasks" => "tasks",
        "events" => "meetings",
        "calls" => "calls",
        "emails" => "emails",
        "leads" => "leads",
        _ => return None,
    })
}

fn modified_prop(t: &str) -> &'static str {
    if t == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// (canonical, HubSpot property, kind) of the plain fields.
#[derive(Clone, Copy)]
enum K {
    S,
    N,
    B,
}

fn fields(object: &str) -> &'static [(&'static str, &'static str, K)] {
    use K::*;
    match object {
        "contacts" => &[
            ("firstName", "firstname", S),
            ("lastName", "lastname", S),
            ("email", "email", S),
            ("jobTitle", "jobtitle", S),
            ("phone", "phone", S),
            ("mobilePhone", "mobilephone", S),
        ],
        "accounts" => &[
            ("name", "name", S),
            ("description", "description", S),
            ("industry", "industry", S),
            ("annualRevenue", "annualrevenue", N),
            ("numberOfEmployees", "numberofemployees", N),
            ("website", "domain", S),
            ("phone", "phone", S),
        ],
        "deals" => &[
            ("name", "dealname", S),
            ("stage", "dealstage", S),
            ("amount", "amount", N),
            ("closeDate", "closedate", S),
            ("probability", "hs_deal_stage_probability", S),
            ("isWon", "hs_is_closed_won", B),
            ("isClosed", "hs_is_closed", B),
            ("currency", "deal_currency_code", S),
        ],
        "notes" => &[("contentHtml", "hs_note_body", S)],
        "tasks" => &[
            ("subject", "hs_task_subject", S),
            ("body", "hs_task_body", S),
            ("status", "hs_task_status", S),
            ("priority", "hs_task_priority", S),
            ("dueDate", "hs_timestamp", S),
            ("type", "hs_task_type", S),
        ],
        "events" => &[
            ("subject", "hs_meeting_title", S),
            ("description", "hs_meeting_body", S),
            ("location", "hs_meeting_location", S),
            ("startDateTime", "hs_meeting_start_time", S),
            ("endDateTime", "hs_meeting_end_time", S),
        ],
        "calls" => &[
            ("subject", "hs_call_title", S),
            ("description", "hs_call_body", S),
            ("date", "hs_timestamp", S),
            ("disposition", "hs_call_disposition", S),
            ("from", "hs_call_from_number", S),
            ("to", "hs_call_to_number", S),
            ("recordingUrl", "hs_call_recording_url", S),
        ],
        "emails" => &[
            ("subject", "hs_email_subject", S),
            ("body", "hs_email_text", S),
            ("bodyHtml", "hs_email_html", S),
            ("messageDate", "hs_timestamp", S),
            ("status", "hs_email_status", S),
        ],
        _ => &[],
    }
}

/// Properties read besides the mapped fields.
fn extra_props(object: &str) -> &'static [&'static str] {
    match object {
        "accounts" => &["address", "city", "state", "zip", "country"],
        "calls" => &["hs_call_direction", "hs_call_duration"],
        "emails" => &[
            "hs_email_headers",
            "hs_email_direction",
            "hs_attachment_ids",
        ],
        "events" => &["hs_timestamp"],
        "deals" => &["pipeline"],
        "leads" => &[
            "hs_lead_name",
            "hs_lead_type",
            "hs_lead_label",
            "hs_pipeline_stage",
        ],
        _ => &[],
    }
}

fn properties(object: &str) -> Vec<&'static str> {
    let mut v: Vec<&str> = fields(object).iter().map(|(_, p, _)| *p).collect();
    v.extend(extra_props(object));
    v.push("hubspot_owner_id");
    v
}

/// (canonical association, HubSpot type) read for each object.
fn associations(object: &str) -> &'static [(&'static str, &'static str)] {
    match object {
        "contacts" => &[("accountIds", "companies"), ("dealIds", "deals")],
        "accounts" => &[("contactIds", "contacts"), ("dealIds", "deals")],
        "deals" => &[("contactIds", "contacts"), ("accountIds", "companies")],
        "users" => &[],
        "leads" => &[("contactIds", "contacts"), ("accountIds", "companies")],
        _ => &[
            ("contactIds", "contacts"),
            ("dealIds", "deals"),
            ("accountIds", "companies"),
        ],
    }
}

/// HubSpot-defined association type ids for creating associations.
fn association_type_id(from: &str, to: &str) -> Option<u32> {
    Some(match (from, to) {
        ("contacts", "companies") => 279,
        ("contacts", "deals") => 4,
        ("deals", "contacts") => 3,
        ("deals", "companies") => 341,
        ("notes", "contacts") => 202,
        ("notes", "companies") => 190,
        ("notes", "deals") => 214,
        ("tasks", "contacts") => 204,
        ("tasks", "companies") => 192,
        ("tasks", "deals") => 216,
        ("meetings", "contacts") => 200,
        ("meetings", "companies") => 188,
        ("meetings", "deals") => 212,
        ("calls", "contacts") => 194,
        ("calls", "companies") => 182,
        ("calls", "deals") => 206,
        ("emails", "contacts") => 198,
        ("emails", "companies") => 186,
        ("emails", "deals") => 210,
        _ => return None,
    })
}

fn prop<'a>(props: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    props
        .get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut inside = false;
    for c in html.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn owner_record(v: Value) -> Result<NativeRecord, ConnectorError> {
    let id = id_of(&v["id"])
        .ok_or_else(|| ConnectorError::Decode("a HubSpot owner has no id".into()))?;
    let mut data = Map::new();
    data.insert("firstName".into(), v["firstName"].clone());
    data.insert("lastName".into(), v["lastName"].clone());
    data.insert("email".into(), v["email"].clone());
    data.insert(
        "archived".into(),
        json!(v["archived"].as_bool().unwrap_or(false)),
    );
    data.insert("associations".into(), json!({}));
    Ok(NativeRecord {
        native_id: id,
        created_time: ms(v.get("createdAt")),
        modified_time: ms(v.get("updatedAt")),
        deleted: false,
        data,
        native: v,
    })
}

/// A HubSpot object (`{id, properties, createdAt, updatedAt, archived,
/// associations}`) in canonical form.
fn to_record(object: &str, v: Value) -> Result<NativeRecord, ConnectorError> {
    let id = id_of(&v["id"])
        .ok_or_else(|| ConnectorError::Decode(format!("a HubSpot {object} record has no id")))?;
    let empty = Map::new();
    let props = v["properties"].as_object().unwrap_or(&empty);
    let mut data = Map::new();
    for (canon, p, kind) in fields(object) {
        let raw = prop(props, p);
        let val = match (kind, raw) {
            (_, None) => Value::Null,
            (K::S, Some(s)) => json!(s),
            (K::N, Some(s)) => s.parse::<f64>().ok().map_or(Value::Null, |n| json!(n)),
            (K::B, Some(s)) => json!(s == "true"),
        };
        data.insert((*canon).into(), val);
    }
    match object {
        "accounts" => {
            let addr: Map<String, Value> = [
                ("street", "address"),
                ("city", "city"),
                ("state", "state"),
                ("postalCode", "zip"),
                ("country", "country"),
            ]
            .iter()
            .map(|(c, p)| {
                (
                    (*c).into(),
                    prop(props, p).map_or(Value::Null, |s| json!(s)),
                )
            })
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
        "notes" => {
            data.insert(
                "contentText".into(),
                prop(props, "hs_note_body").map_or(Value::Null, |h| json!(strip_tags(h))),
            );
        }
        "tasks" => {
            data.insert(
                "isDone".into(),
                json!(prop(props, "hs_task_status") == Some("COMPLETED")),
            );
        }
        "events" => {
            data.insert("type".into(), json!("meeting"));
            data.insert("isAllDayEvent".into(), json!(false));
        }
        "calls" => {
            data.insert(
                "direction".into(),
                prop(props, "hs_call_direction").map_or(Value::Null, |d| json!(d.to_lowercase())),
            );
            // HubSpot counts milliseconds; the unified model seconds.
            data.insert(
                "duration".into(),
                prop(props, "hs_call_duration")
                    .and_then(|d| d.parse::<f64>().ok())
                    .map_or(Value::Null, |d| json!((d / 1000.0).round())),
            );
        }
        "emails" => {
            let headers: Value = prop(props, "hs_email_headers")
                .and_then(|h| serde_json::from_str(h).ok())
                .unwrap_or(Value::Null);
            let emails = |k: &str| -> Value {
                json!(
                    headers[k]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a["email"].as_str())
                        .collect::<Vec<_>>()
                )
            };
            data.insert("from".into(), headers["from"]["email"].clone());
            data.insert("to".into(), emails("to"));
            data.insert("cc".into(), emails("cc"));
            data.insert("bcc".into(), emails("bcc"));
            data.insert(
                "isIncoming".into(),
                json!(prop(props, "hs_email_direction") == Some("INCOMING_EMAIL")),
            );
            data.insert(
                "isBounced".into(),
                json!(prop(props, "hs_email_status") == Some("BOUNCED")),
            );
            data.insert(
                "hasAttachment".into(),
                json!(prop(props, "hs_attachment_ids").is_some()),
            );
        }
        _ => {}
    }
    let mut assoc = Map::new();
    if let Some(o) = prop(props, "hubspot_owner_id") {
        assoc.insert("ownerUserId".into(), json!(o));
    }
    for (canon, t) in associations(object) {
        let ids: Vec<Value> = v["associations"][*t]["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| id_of(&r["id"]))
            .map(Value::String)
            .collect();
        assoc.insert((*canon).into(), Value::Array(dedup(ids)));
    }
    data.insert("associations".into(), Value::Object(assoc));
    // Lists carry associations inline and search runs read them apart, so
    // the raw record keeps neither: the same record must hash the same
    // whichever way it was read.
    let mut v = v;
    if let Value::Object(m) = &mut v {
        m.remove("associations");
    }
    Ok(NativeRecord {
        native_id: id,
        created_time: ms(v.get("createdAt")),
        modified_time: ms(v
            .get("archivedAt")
            .filter(|a| !a.is_null())
            .or(v.get("updatedAt"))),
        deleted: v["archived"].as_bool().unwrap_or(false),
        data,
        native: v,
    })
}

fn dedup(mut v: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.to_string()));
    v
}

/// Canonical input → `{properties, associations}`.
fn to_native(
    object: &str,
    t: &str,
    input: &Map<String, Value>,
) -> (Map<String, Value>, Vec<(String, String)>) {
    let mut props = Map::new();
    let as_prop = |v: &Value| -> Value {
        match v {
            Value::Null => json!(""),
            Value::String(_) => v.clone(),
            Value::Bool(b) => json!(b.to_string()),
            Value::Number(n) => json!(n.to_string()),
            other => json!(other.to_string()),
        }
    };
    for (canon, p, _) in fields(object) {
        if let Some(v) = input.get(*canon) {
            props.insert((*p).into(), as_prop(v));
        }
    }
    match object {
        "accounts" => {
            if let Some(Value::Object(a)) = input.get("address") {
                for (c, p) in [
                    ("street", "address"),
                    ("city", "city"),
                    ("state", "state"),
                    ("postalCode", "zip"),
                    ("country", "country"),
                ] {
                    if let Some(v) = a.get(c) {
                        props.insert(p.into(), as_prop(v));
                    }
                }
            }
        }
        "notes" => {
            if !props.contains_key("hs_note_body")
                && let Some(t) = input.get("contentText")
            {
                props.insert("hs_note_body".into(), as_prop(t));
            }
        }
        "tasks" if input.get("isDone").and_then(Value::as_bool) == Some(true) => {
            props.insert("hs_task_status".into(), json!("COMPLETED"));
        }
        "calls" => {
            if let Some(d) = input.get("direction").and_then(Value::as_str) {
                props.insert("hs_call_direction".into(), json!(d.to_uppercase()));
            }
            if let Some(d) = input.get("duration").and_then(Value::as_f64) {
                props.insert(
                    "hs_call_duration".into(),
                    json!(((d * 1000.0) as i64).to_string()),
                );
            }
        }
        "emails" => {
            if input.contains_key("from") || input.contains_key("to") {
                let list = |k: &str| -> Value {
                    json!(
                        input
                            .get(k)
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(|e| json!({"email": e}))
                            .collect::<Vec<_>>()
                    )
                };
                let h = json!({"from": {"email": input.get("from").cloned().unwrap_or(Value::Null)}, "to": list("to"), "cc": list("cc"), "bcc": list("bcc")});
                props.insert("hs_email_headers".into(), json!(h.to_string()));
            }
            if let Some(true) = input.get("isIncoming").and_then(Value::as_bool) {
                props.insert("hs_email_direction".into(), json!("INCOMING_EMAIL"));
            }
        }
        _ => {}
    }
    if let Some(o) = input.get("ownerUserId") {
        props.insert("hubspot_owner_id".into(), as_prop(o));
    }
    // Engagements need a timestamp; default it to now as HubSpot's UI does.
    if !matches!(object, "contacts" | "accounts" | "deals" | "leads")
        && !props.contains_key("hs_timestamp")
    {
        let when = input.get("startDateTime").cloned().unwrap_or_else(|| {
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        });
        props.insert("hs_timestamp".into(), as_prop(&when));
    }
    if let Some(Value::Object(raw)) = input.get("$native") {
        for (k, v) in raw {
            props.insert(k.clone(), as_prop(v));
        }
    }
    let mut links = Vec::new();
    for (key, to) in [
        ("accountId", "companies"),
        ("contactId", "contacts"),
        ("dealId", "deals"),
    ] {
        if let Some(id) = input.get(key).and_then(id_of) {
            links.push((to.to_string(), id));
        }
    }
    if let Some(ids) = input.get("contactIds").and_then(Value::as_array) {
        links.extend(
            ids.iter()
                .filter_map(id_of)
                .map(|i| ("contacts".to_string(), i)),
        );
    }
    links.retain(|(to, _)| association_type_id(t, to).is_some());
    (props, links)
}

fn failed(resp: &Response) -> ConnectorError {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let message = body["message"]
        .as_str()
        .unwrap_or("HubSpot refused the request")
        .to_string();
    if resp.status == 404 {
        return ConnectorError::NotFound;
    }
    if resp.status >= 500 {
        return ConnectorError::Call(CallError::Unavailable(format!(
            "HubSpot answered {}: {message}",
            resp.status
        )));
    }
    let category = body["category"].as_str().unwrap_or("ERROR");
    let mut errors: Vec<Value> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            json!({
                "message": e["message"].clone(),
                "errorCode": e.get("code").cloned().unwrap_or(json!(category)),
                "fields": e["context"]["propertyName"].clone(),
            })
        })
        .collect();
    if errors.is_empty() {
        errors.push(json!({"message": message, "errorCode": category, "fields": []}));
    }
    ConnectorError::Provider {
        status: resp.status,
        message,
        errors,
    }
}

fn ok(resp: Response) -> Result<Value, ConnectorError> {
    if !(200..300).contains(&resp.status) {
        return Err(failed(&resp));
    }
    resp.json()
}

/// Sends one request. HubSpot's reads sent as POST (search, batch reads)
/// are marked read-only, so the outbound layer's one retry policy may
/// repeat them after a 429 like a GET; nothing else is ever re-sent here,
/// so a create reaches HubSpot at most once (invariant 14).
async fn send(p: &dyn Provider, req: Request) -> Result<Response, ConnectorError> {
    let read = req.method == "POST"
        && (req.path.ends_with("/search") || req.path.ends_with("/batch/read"));
    let req = if read { req.read_only() } else { req };
    Ok(p.send(req).await?)
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Cursor {
    /// `list`, `search` or `archived`.
    m: String,
    /// The `after` of the next page.
    #[serde(default)]
    a: String,
    /// Search: the start time in use (moves when re-anchoring).
    #[serde(default)]
    s: i64,
    /// The portal's custom properties of the object, read once when the
    /// run starts and asked for on every page (HubSpot returns only the
    /// properties named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    p: Vec<String>,
}

impl Cursor {
    fn encode(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

impl HubSpot {
    /// The names of the object's custom properties (not HubSpot-defined),
    /// so their values come with the records (`additional`, `$native`).
    async fn custom_properties(
        &self,
        p: &dyn Provider,
        object: &str,
    ) -> Result<Vec<String>, ConnectorError> {
        let Ok(t) = property_type(object) else {
            return Ok(Vec::new());
        };
        let body = ok(send(p, Request::get(format!("/crm/v3/properties/{t}"))).await?)?;
        let standard = properties(object);
        let mut names: Vec<String> = body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| !p["hubspotDefined"].as_bool().unwrap_or(false))
            .filter(|p| !p["calculated"].as_bool().unwrap_or(false))
            .filter_map(|p| p["name"].as_str())
            .filter(|n| !standard.contains(n))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Properties of records of `t` by id (`POST …/batch/read`, 100 a call).
    async fn batch_props(
        &self,
        p: &dyn Provider,
        t: &str,
        ids: &[&str],
        props: &[&str],
    ) -> Result<std::collections::HashMap<String, Value>, ConnectorError> {
        let mut out = std::collections::HashMap::new();
        for chunk in ids.chunks(100) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let body = json!({"properties": props, "propertiesWithHistory": [], "inputs": inputs});
            let v = ok(send(
                p,
                Request::with_body("POST", format!("/crm/v3/objects/{t}/batch/read"), body),
            )
            .await?)?;
            for r in v["results"].as_array().into_iter().flatten() {
                if let Some(id) = id_of(&r["id"]) {
                    out.insert(id, r["properties"].clone());
                }
            }
        }
        Ok(out)
    }

    /// A HubSpot lead is a prospecting record about a contact: the unified
    /// lead's person fields are its primary (first) contact's, its
    /// `account` the name of its company.
    async fn enrich_leads(
        &self,
        p: &dyn Provider,
        records: &mut [NativeRecord],
    ) -> Result<(), ConnectorError> {
        let first = |r: &NativeRecord, key: &str| -> Option<String> {
            r.data["associations"][key]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(String::from)
        };
        let contact_ids: Vec<String> = records
            .iter()
            .filter_map(|r| first(r, "contactIds"))
            .collect();
        let company_ids: Vec<String> = records
            .iter()
            .filter_map(|r| first(r, "accountIds"))
            .collect();
        fn refs(v: &[String]) -> Vec<&str> {
            let mut r: Vec<&str> = v.iter().map(String::as_str).collect();
            r.sort_unstable();
            r.dedup();
            r
        }
        let person_props: Vec<&str> = fields("contacts").iter().map(|(_, p, _)| *p).collect();
        let contacts = self
            .batch_props(p, "contacts", &refs(&contact_ids), &person_props)
            .await?;
        let companies = self
            .batch_props(p, "companies", &refs(&company_ids), &["name"])
            .await?;
        for r in records.iter_mut().filter(|r| !r.deleted) {
            let person = first(r, "contactIds").and_then(|c| contacts.get(&c).cloned());
            for (canon, prop, _) in fields("contacts") {
                let v = person.as_ref().map_or(Value::Null, |pp| pp[*prop].clone());
                r.data.insert((*canon).into(), v);
            }
            let account = first(r, "accountIds")
                .and_then(|c| companies.get(&c).map(|pp| pp["name"].clone()))
                .unwrap_or(Value::Null);
            r.data.insert("account".into(), account);
        }
        Ok(())
    }

    /// HubSpot's meeting attendees are the contacts associated with the
    /// meeting: one attendee per (meeting, contact), id `<meeting>:<contact>`,
    /// with the contact's email.
    async fn attendees_of(
        &self,
        p: &dyn Provider,
        meetings: &[NativeRecord],
    ) -> Result<Vec<NativeRecord>, ConnectorError> {
        let pairs: Vec<(&NativeRecord, String)> = meetings
            .iter()
            .filter(|m| !m.deleted)
            .flat_map(|m| {
                m.data["associations"]["contactIds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(move |c| (m, c.to_string()))
            })
            .collect();
        let mut contact_ids: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
        contact_ids.sort_unstable();
        contact_ids.dedup();
        let emails: std::collections::HashMap<String, Value> = self
            .batch_props(p, "contacts", &contact_ids, &["email"])
            .await?
            .into_iter()
            .map(|(id, props)| (id, props["email"].clone()))
            .collect();
        Ok(pairs
            .into_iter()
            .map(|(m, c)| {
                let mut data = Map::new();
                data.insert("status".into(), Value::Null);
                data.insert("associatedObjectType".into(), json!("contact"));
                data.insert(
                    "email".into(),
                    emails.get(&c).cloned().unwrap_or(Value::Null),
                );
                data.insert(
                    "associations".into(),
                    json!({"eventId": m.native_id, "associationId": c}),
                );
                NativeRecord {
                    native_id: format!("{}:{c}", m.native_id),
                    created_time: m.created_time,
                    modified_time: m.modified_time,
                    deleted: false,
                    data,
                    native: json!({"meetingId": m.native_id, "contactId": c}),
                }
            })
            .collect())
    }

    /// Every id of a paged listing (`results[].<field>`, `paging.next.after`).
    async fn paged_ids(
        &self,
        p: &dyn Provider,
        path: String,
        limit: &'static str,
        field: &str,
    ) -> Result<Vec<Value>, ConnectorError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut r = Request::get(path.clone()).query("limit", limit);
            if let Some(a) = &after {
                r = r.query("after", a.clone());
            }
            let v = ok(send(p, r).await?)?;
            out.extend(
                v["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| id_of(&m[field]))
                    .map(Value::String),
            );
            match v["paging"]["next"]["after"].as_str() {
                Some(a) => after = Some(a.to_string()),
                None => return Ok(dedup(out)),
            }
        }
    }

    /// Every member of a list (`GET /crm/v3/lists/{id}/memberships`).
    async fn list_members(&self, p: &dyn Provider, id: &str) -> Result<Vec<Value>, ConnectorError> {
        let path = format!("/crm/v3/lists/{}/memberships", crate::segment(id));
        self.paged_ids(p, path, "250", "recordId").await
    }

    /// A contact list (HubSpot's v3 Lists, `objectTypeId` `0-1`) with its
    /// members; lists of other objects are not unified lists.
    async fn list_record(
        &self,
        p: &dyn Provider,
        l: Value,
    ) -> Result<Option<NativeRecord>, ConnectorError> {
        if l["objectTypeId"].as_str() != Some("0-1") {
            return Ok(None);
        }
        let Some(id) = id_of(&l["listId"]) else {
            return Err(ConnectorError::Decode(
                "a HubSpot list has no listId".into(),
            ));
        };
        let members = self.list_members(p, &id).await?;
        let time = |k: &str| {
            l[k].as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
        };
        let mut data = Map::new();
        data.insert("name".into(), l["name"].clone());
        data.insert("objectType".into(), json!("contact"));
        data.insert("associations".into(), json!({"contactIds": members}));
        Ok(Some(NativeRecord {
            native_id: id,
            created_time: time("createdAt"),
            modified_time: time("updatedAt"),
            deleted: false,
            data,
            native: l,
        }))
    }

    /// Lists are few and their memberships change without moving the
    /// list's `updatedAt`, so every run reads them all (`since` unused);
    /// the cursor is the search offset.
    async fn lists(&self, p: &dyn Provider, req: &ListRequest) -> Result<Page, ConnectorError> {
        let offset: u64 = match &req.cursor {
            Some(c) => c.parse().map_err(|_| {
                ConnectorError::Decode("a HubSpot lists cursor from another version".into())
            })?,
            None => 0,
        };
        let body =
            json!({"query": "", "offset": offset, "count": PAGE, "additionalProperties": []});
        let v = ok(send(p, Request::with_body("POST", "/crm/v3/lists/search", body)).await?)?;
        let mut records = Vec::new();
        for l in v["lists"].as_array().cloned().unwrap_or_default() {
            if let Some(r) = self.list_record(p, l).await? {
                records.push(r);
            }
        }
        let next = (v["hasMore"].as_bool() == Some(true))
            .then(|| v["offset"].as_u64())
            .flatten()
            .filter(|n| *n > offset)
            .map(|n| n.to_string());
        Ok(Page {
            records,
            next_cursor: next,
            total: v["total"].as_i64(),
        })
    }

    /// A lead needs a contact: the given `contactId`, or one made from
    /// the lead's person fields. Its name is the person's.
    async fn create_lead(
        &self,
        p: &dyn Provider,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        let contact = match input.get("contactId") {
            Some(Value::String(c)) => c.clone(),
            _ => {
                let (props, _) = to_native("contacts", "contacts", input);
                let v = ok(send(
                    p,
                    Request::with_body(
                        "POST",
                        "/crm/v3/objects/contacts",
                        json!({"properties": props, "associations": []}),
                    ),
                )
                .await?)?;
                id_of(&v["id"]).ok_or_else(|| {
                    ConnectorError::Decode("HubSpot created a contact without an id".into())
                })?
            }
        };
        let (mut props, _) = to_native("leads", "leads", input);
        props.insert("hs_lead_name".into(), json!(lead_name(input)));
        let body = json!({"properties": props, "associations": [
            {"to": {"id": contact}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": LEAD_TO_PRIMARY_CONTACT}]}
        ]});
        let v = ok(send(p, Request::with_body("POST", "/crm/v3/objects/leads", body)).await?)?;
        let id = id_of(&v["id"])
            .ok_or_else(|| ConnectorError::Decode("HubSpot created a lead without an id".into()))?;
        if let Some(Value::String(a)) = input.get("accountId") {
            self.link(p, "leads", &id, &[("companies".into(), a.clone())])
                .await?;
        }
        self.read_one(p, "leads", "leads", &id).await
    }

    /// Person fields go to the lead's primary contact, the rest to the lead.
    async fn update_lead(
        &self,
        p: &dyn Provider,
        id: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        let current = self.read_one(p, "leads", "leads", id).await?;
        let (person, _) = to_native("contacts", "contacts", input);
        let person: Map<String, Value> = person
            .into_iter()
            .filter(|(k, _)| fields("contacts").iter().any(|(_, p, _)| p == k))
            .collect();
        if !person.is_empty()
            && let Some(c) = current.data["associations"]["contactIds"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
        {
            ok(send(
                p,
                Request::with_body(
                    "PATCH",
                    format!("/crm/v3/objects/contacts/{}", crate::segment(c)),
                    json!({"properties": person}),
                ),
            )
            .await?)?;
        }
        let (mut props, _) = to_native("leads", "leads", input);
        if input.contains_key("firstName") || input.contains_key("lastName") {
            let mut named = input.clone();
            for k in ["firstName", "lastName"] {
                if !named.contains_key(k) {
                    named.insert(k.into(), current.data[k].clone());
                }
            }
            props.insert("hs_lead_name".into(), json!(lead_name(&named)));
        }
        if !props.is_empty() {
            ok(send(
                p,
                Request::with_body(
                    "PATCH",
                    format!("/crm/v3/objects/leads/{}", crate::segment(id)),
                    json!({"properties": props}),
                ),
            )
            .await?)?;
        }
        if let Some(Value::String(a)) = input.get("accountId") {
            self.link(p, "leads", id, &[("companies".into(), a.clone())])
                .await?;
        }
        self.read_one(p, "leads", "leads", id).await
    }

    /// An attendee id's (meeting, contact), both HubSpot ids.
    fn attendee_parts(id: &str) -> Option<(&str, &str)> {
        let (m, c) = id.split_once(':')?;
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (numeric(m) && numeric(c)).then_some((m, c))
    }

    async fn find_attendee(
        &self,
        p: &dyn Provider,
        id: &str,
    ) -> Result<Option<NativeRecord>, ConnectorError> {
        let Some((m, c)) = Self::attendee_parts(id) else {
            return Ok(None);
        };
        let meeting = match self.read_one(p, "events", "meetings", m).await {
            Ok(r) => r,
            Err(ConnectorError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self
            .attendees_of(p, std::slice::from_ref(&meeting))
            .await?
            .into_iter()
            .find(|a| a.data["associations"]["associationId"] == c))
    }

    async fn owners(&self, p: &dyn Provider, req: &ListRequest) -> Result<Page, ConnectorError> {
        let mut r = Request::get("/crm/v3/owners/").query("limit", PAGE.to_string());
        if let Some(c) = &req.cursor {
            r = r.query("after", c.clone());
        }
        let body = ok(send(p, r).await?)?;
        let records = body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| owner_record(o.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            records,
            next_cursor: body["paging"]["next"]["after"].as_str().map(str::to_string),
            total: None,
        })
    }

    /// Reads the associations of search results (v4 batch, per type).
    /// Every association of one record to `to` (v4, 500 a page).
    async fn all_associations(
        &self,
        p: &dyn Provider,
        t: &str,
        id: &str,
        to: &str,
    ) -> Result<Vec<Value>, ConnectorError> {
        let path = format!(
            "/crm/v4/objects/{t}/{}/associations/{to}",
            crate::segment(id)
        );
        self.paged_ids(p, path, "500", "toObjectId").await
    }

    async fn attach(
        &self,
        p: &dyn Provider,
        object: &str,
        t: &str,
        records: &mut [NativeRecord],
    ) -> Result<(), ConnectorError> {
        if records.is_empty() {
            return Ok(());
        }
        let inputs: Vec<Value> = records.iter().map(|r| json!({"id": r.native_id})).collect();
        for (canon, to) in associations(object) {
            let body = ok(send(
                p,
                Request::with_body(
                    "POST",
                    format!("/crm/v4/associations/{t}/{to}/batch/read"),
                    json!({"inputs": inputs}),
                ),
            )
            .await?)?;
            let mut by_id: std::collections::HashMap<String, Vec<Value>> = Default::default();
            for r in body["results"].as_array().into_iter().flatten() {
                let Some(from) = id_of(&r["from"]["id"]) else {
                    continue;
                };
                // A batch read answers up to 500 per record; more are read
                // for that record alone.
                if r["paging"]["next"].is_object() {
                    let all = self.all_associations(p, t, &from, to).await?;
                    by_id.insert(from, all);
                    continue;
                }
                let ids = r["to"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| id_of(&x["toObjectId"]))
                    .map(Value::String);
                by_id.entry(from).or_default().extend(ids);
            }
            for rec in records.iter_mut() {
                let ids = dedup(by_id.remove(&rec.native_id).unwrap_or_default());
                if let Some(Value::Object(a)) = rec.data.get_mut("associations") {
                    a.insert((*canon).into(), Value::Array(ids));
                }
            }
        }
        Ok(())
    }

    async fn read_one(
        &self,
        p: &dyn Provider,
        object: &str,
        t: &str,
        id: &str,
    ) -> Result<NativeRecord, ConnectorError> {
        let assoc: Vec<&str> = associations(object).iter().map(|(_, t)| *t).collect();
        // The same properties as a listing, so a record read back after a
        // write hashes as the sync will see it.
        let custom = self.custom_properties(p, object).await?;
        let mut props: Vec<&str> = properties(object);
        props.extend(custom.iter().map(String::as_str));
        let r = Request::get(format!("/crm/v3/objects/{t}/{}", crate::segment(id)))
            .query("properties", props.join(","))
            .query("associations", assoc.join(","));
        let v = ok(send(p, r).await?)?;
        let mut rec = to_record(object, v.clone())?;
        for (canon, to) in associations(object) {
            if v["associations"][*to]["paging"]["next"].is_object() {
                let all = self.all_associations(p, t, &rec.native_id, to).await?;
                if let Some(Value::Object(a)) = rec.data.get_mut("associations") {
                    a.insert((*canon).into(), Value::Array(all));
                }
            }
        }
        if object == "leads" {
            self.enrich_leads(p, std::slice::from_mut(&mut rec)).await?;
        }
        Ok(rec)
    }

    async fn link(
        &self,
        p: &dyn Provider,
        t: &str,
        id: &str,
        links: &[(String, String)],
    ) -> Result<(), ConnectorError> {
        for (to, to_id) in links {
            let r = Request {
                method: "PUT",
                ..Request::get(format!(
                    "/crm/v4/objects/{t}/{}/associations/default/{to}/{}",
                    crate::segment(id),
                    crate::segment(to_id)
                ))
            };
            ok(send(p, r).await?)?;
        }
        Ok(())
    }
}

/// The HubSpot type whose properties hold an object's custom fields.
fn property_type(object: &str) -> Result<&'static str, ConnectorError> {
    match object {
        "contacts" | "accounts" | "deals" => Ok(hs_type(object).unwrap_or_default()),
        _ => Err(ConnectorError::Unsupported(format!(
            "HubSpot custom fields are supported on contacts, accounts and deals, not {object}"
        ))),
    }
}

/// A HubSpot property as Vessel field metadata.
fn field_meta(p: &Value) -> Option<FieldMeta> {
    let key = p["name"].as_str()?.to_string();
    let field_type = p["fieldType"].as_str().unwrap_or("");
    let kind = match (p["type"].as_str().unwrap_or("string"), field_type) {
        ("enumeration", "checkbox") => "multiselect",
        ("enumeration", _) => "singleselect",
        ("number", _) => "number",
        ("datetime", _) => "datetime",
        ("date", _) => "date",
        ("bool", _) => "boolean",
        (_, "phonenumber") => "phone",
        _ => "string",
    };
    let options = p["options"].as_array().filter(|o| !o.is_empty()).map(|o| {
        o.iter()
            .map(|v| {
                let value = v["value"].as_str().unwrap_or_default().to_string();
                let label = v["label"]
                    .as_str()
                    .map_or_else(|| value.clone(), String::from);
                (value, label)
            })
            .collect()
    });
    let read_only = p["modificationMetadata"]["readOnlyValue"]
        .as_bool()
        .unwrap_or(false)
        || p["calculated"].as_bool().unwrap_or(false);
    Some(FieldMeta {
        name: p["label"]
            .as_str()
            .map_or_else(|| key.clone(), String::from),
        key,
        kind,
        options,
        is_array: kind == "multiselect",
        custom: !p["hubspotDefined"].as_bool().unwrap_or(false),
        required: false,
        creatable: !read_only,
        updatable: !read_only,
    })
}

/// HubSpot's internal name for a field called `name`: lower case letters,
/// digits and underscores.
fn property_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

fn property_options(options: &[(String, String)]) -> Vec<Value> {
    options
        .iter()
        .enumerate()
        .map(|(i, (key, name))| {
            json!({"label": name, "value": key, "displayOrder": i, "hidden": false})
        })
        .collect()
}

#[async_trait::async_trait]
impl CrmConnector for HubSpot {
    fn integration_id(&self) -> &'static str {
        "hubspot"
    }

    fn objects(&self) -> &'static [&'static str] {
        OBJECTS
    }

    fn tombstones(&self, object: &str) -> bool {
        object != "users"
    }

    fn two_way(&self, object: &str, key: &str) -> bool {
        // The association lists of contacts, companies and deals are read
        // from each end (`associations`); engagements only name theirs.
        matches!(object, "contacts" | "accounts" | "deals")
            && associations(object).iter().any(|(k, _)| *k == key)
    }

    async fn list(
        &self,
        p: &dyn Provider,
        object: &str,
        req: &ListRequest,
    ) -> Result<Page, ConnectorError> {
        let Some(t) = hs_type(object) else {
            if object == "users" {
                return self.owners(p, req).await;
            }
            if object == "lists" {
                return self.lists(p, req).await;
            }
            if object == "attendees" {
                // The meetings' pages, each meeting's contacts its
                // attendees (an attendee changes with its meeting).
                let page = self.list(p, "events", req).await?;
                return Ok(Page {
                    records: self.attendees_of(p, &page.records).await?,
                    next_cursor: page.next_cursor,
                    total: None,
                });
            }
            return Err(ConnectorError::Unsupported(format!(
                "HubSpot has no {object}"
            )));
        };
        let cur: Cursor = match &req.cursor {
            Some(c) => serde_json::from_str(c).map_err(|_| {
                ConnectorError::Decode(
                    "a HubSpot cursor from another version; start the object again".into(),
                )
            })?,
            None if req.since.is_some() => Cursor {
                m: "search".into(),
                a: String::new(),
                s: req.since.unwrap_or(0),
                p: self.custom_properties(p, object).await?,
            },
            None => Cursor {
                m: "list".into(),
                p: self.custom_properties(p, object).await?,
                ..Default::default()
            },
        };
        let mut props: Vec<&str> = properties(object);
        props.extend(cur.p.iter().map(String::as_str));
        let props = props.join(",");
        let assoc: Vec<&str> = associations(object).iter().map(|(_, t)| *t).collect();
        match cur.m.as_str() {
            "search" => {
                let offset: usize = cur.a.parse().unwrap_or(0);
                // HubSpot's spec makes `after` required; "0" is the start.
                let body = json!({
                    "filterGroups": [{"filters": [{"propertyName": modified_prop(t), "operator": "GTE", "value": cur.s.to_string()}]}],
                    "sorts": [{"propertyName": modified_prop(t), "direction": "ASCENDING"}],
                    "properties": props.split(',').collect::<Vec<_>>(),
                    "limit": PAGE,
                    "after": offset.to_string(),
                });
                let v = ok(send(
                    p,
                    Request::with_body("POST", format!("/crm/v3/objects/{t}/search"), body),
                )
                .await?)?;
                let mut records = v["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| to_record(object, r.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                self.attach(p, object, t, &mut records).await?;
                if object == "leads" {
                    self.enrich_leads(p, &mut records).await?;
                }
                let next = match v["paging"]["next"]["after"]
                    .as_str()
                    .and_then(|a| a.parse::<usize>().ok())
                {
                    Some(n) if n + PAGE <= SEARCH_CAP => Some(Cursor {
                        m: "search".into(),
                        a: n.to_string(),
                        s: cur.s,
                        p: cur.p.clone(),
                    }),
                    Some(_) => {
                        // Re-anchor on the newest time seen; records sharing
                        // it are read again and found unchanged.
                        let last = records
                            .iter()
                            .filter_map(|r| r.modified_time)
                            .max()
                            .unwrap_or(cur.s);
                        Some(Cursor {
                            m: "search".into(),
                            a: String::new(),
                            s: if last > cur.s { last } else { cur.s + 1 },
                            p: cur.p.clone(),
                        })
                    }
                    None if req.include_deleted => Some(Cursor {
                        m: "archived".into(),
                        a: String::new(),
                        s: cur.s,
                        p: cur.p.clone(),
                    }),
                    None => None,
                };
                Ok(Page {
                    records,
                    next_cursor: next.and_then(|c| c.encode()),
                    total: v["total"].as_i64(),
                })
            }
            mode => {
                let archived = mode == "archived";
                let mut r = Request::get(format!("/crm/v3/objects/{t}"))
                    .query("limit", PAGE.to_string())
                    .query("properties", props.clone());
                if !archived {
                    r = r.query("associations", assoc.join(","));
                }
                if archived {
                    r = r.query("archived", "true");
                }
                if !cur.a.is_empty() {
                    r = r.query("after", cur.a.clone());
                }
                let v = ok(send(p, r).await?)?;
                let mut records = Vec::new();
                for item in v["results"].as_array().into_iter().flatten() {
                    let mut rec = to_record(object, item.clone())?;
                    // Tombstones older than the run's start were seen before.
                    if archived && rec.modified_time.is_some_and(|m| m < cur.s) {
                        continue;
                    }
                    // Inline associations stop at 100 a type; a record with
                    // more has them all read.
                    for (canon, to) in associations(object) {
                        if item["associations"][*to]["paging"]["next"].is_object() {
                            let all = self.all_associations(p, t, &rec.native_id, to).await?;
                            if let Some(Value::Object(a)) = rec.data.get_mut("associations") {
                                a.insert((*canon).into(), Value::Array(all));
                            }
                        }
                    }
                    records.push(rec);
                }
                if object == "leads" {
                    self.enrich_leads(p, &mut records).await?;
                }
                let next = v["paging"]["next"]["after"].as_str().map(|a| Cursor {
                    m: mode.into(),
                    a: a.into(),
                    s: cur.s,
                    p: cur.p.clone(),
                });
                Ok(Page {
                    records,
                    next_cursor: next.and_then(|c| c.encode()),
                    total: None,
                })
            }
        }
    }

    async fn find(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<Option<NativeRecord>, ConnectorError> {
        if object == "users" {
            let r = send(
                p,
                Request::get(format!("/crm/v3/owners/{}", crate::segment(native_id))),
            )
            .await?;
            return match ok(r) {
                Ok(v) => owner_record(v).map(Some),
                Err(ConnectorError::NotFound) => Ok(None),
                Err(e) => Err(e),
            };
        }
        if object == "attendees" {
            return self.find_attendee(p, native_id).await;
        }
        if object == "lists" {
            let r = send(
                p,
                Request::get(format!("/crm/v3/lists/{}", crate::segment(native_id))),
            )
            .await?;
            return match ok(r) {
                Ok(v) => self.list_record(p, v["list"].clone()).await,
                Err(ConnectorError::NotFound) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let t = hs_type(object)
            .ok_or_else(|| ConnectorError::Unsupported(format!("HubSpot has no {object}")))?;
        match self.read_one(p, object, t, native_id).await {
            Ok(r) => Ok(Some(r)),
            Err(ConnectorError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create(
        &self,
        p: &dyn Provider,
        object: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        if object == "attendees" {
            // Inviting a contact associates it with the meeting.
            let (Some(Value::String(m)), Some(Value::String(c))) =
                (input.get("eventId"), input.get("associationId"))
            else {
                return Err(ConnectorError::Provider {
                    status: 400,
                    message: "a HubSpot attendee needs eventId and associationId (a contact)"
                        .into(),
                    errors: vec![],
                });
            };
            if input.get("associatedObjectType").and_then(Value::as_str) == Some("lead") {
                return Err(ConnectorError::Provider {
                    status: 400,
                    message: "HubSpot meeting attendees are contacts".into(),
                    errors: vec![],
                });
            }
            self.link(p, "meetings", m, &[("contacts".into(), c.clone())])
                .await?;
            return self
                .find_attendee(p, &format!("{m}:{c}"))
                .await?
                .ok_or(ConnectorError::NotFound);
        }
        if object == "leads" {
            return self.create_lead(p, input).await;
        }
        let t = hs_type(object).ok_or_else(|| {
            ConnectorError::Unsupported(format!("HubSpot cannot create {object}"))
        })?;
        let (mut props, links) = to_native(object, t, input);
        if object == "deals" {
            // HubSpot requires a stage; new deals start in the default
            // pipeline's first stage unless one is given.
            props
                .entry("dealstage")
                .or_insert(json!("appointmentscheduled"));
            props.entry("pipeline").or_insert(json!("default"));
        }
        let assoc: Vec<Value> = links
            .iter()
            .filter_map(|(to, id)| {
                association_type_id(t, to).map(|tid| json!({"to": {"id": id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": tid}]}))
            })
            .collect();
        let body = json!({"properties": props, "associations": assoc});
        let v = ok(send(
            p,
            Request::with_body("POST", format!("/crm/v3/objects/{t}"), body),
        )
        .await?)?;
        let id = id_of(&v["id"]).ok_or_else(|| {
            ConnectorError::Decode("HubSpot created a record without an id".into())
        })?;
        self.read_one(p, object, t, &id).await
    }

    async fn update(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        if object == "leads" {
            return self.update_lead(p, native_id, input).await;
        }
        let t = hs_type(object).ok_or_else(|| {
            ConnectorError::Unsupported(format!("HubSpot cannot update {object}"))
        })?;
        let (props, links) = to_native(object, t, input);
        // Engagement timestamps are defaulted on create only.
        let mut props = props;
        if !input.contains_key("dueDate")
            && !input.contains_key("date")
            && !input.contains_key("messageDate")
            && !input.contains_key("startDateTime")
            && input
                .get("$native")
                .is_none_or(|n| n.get("hs_timestamp").is_none())
        {
            props.remove("hs_timestamp");
        }
        if !props.is_empty() {
            ok(send(
                p,
                Request::with_body(
                    "PATCH",
                    format!("/crm/v3/objects/{t}/{}", crate::segment(native_id)),
                    json!({"properties": props}),
                ),
            )
            .await?)?;
        }
        self.link(p, t, native_id, &links).await?;
        self.read_one(p, object, t, native_id).await
    }

    async fn delete(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<(), ConnectorError> {
        let r = if object == "attendees" {
            let (m, c) = Self::attendee_parts(native_id).ok_or(ConnectorError::NotFound)?;
            send(
                p,
                Request::delete(format!(
                    "/crm/v4/objects/meetings/{m}/associations/contacts/{c}"
                )),
            )
            .await?
        } else {
            let t = hs_type(object).ok_or_else(|| {
                ConnectorError::Unsupported(format!("HubSpot cannot delete {object}"))
            })?;
            send(
                p,
                Request::delete(format!("/crm/v3/objects/{t}/{}", crate::segment(native_id))),
            )
            .await?
        };
        ok(r).map(|_| ()).or_else(|e| match e {
            // DELETE answers 204 with no body.
            ConnectorError::Decode(_) => Ok(()),
            e => Err(e),
        })
    }

    async fn fields(
        &self,
        p: &dyn Provider,
        object: &str,
    ) -> Result<Vec<FieldMeta>, ConnectorError> {
        let Some(t) = hs_type(object) else {
            return Ok(Vec::new());
        };
        let body = ok(send(p, Request::get(format!("/crm/v3/properties/{t}"))).await?)?;
        Ok(body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| !p["hidden"].as_bool().unwrap_or(false))
            .filter_map(field_meta)
            .collect())
    }

    fn deal_pipeline(&self, native: &Value) -> Option<String> {
        native["properties"]["pipeline"].as_str().map(String::from)
    }

    async fn deal_stages(
        &self,
        p: &dyn Provider,
        pipeline: Option<&str>,
    ) -> Result<Option<Vec<(String, String)>>, ConnectorError> {
        let pipelines = match pipeline {
            Some(id) => {
                let path = format!("/crm/v3/pipelines/deals/{}", crate::segment(id));
                vec![ok(send(p, Request::get(path)).await?)?]
            }
            None => {
                let body = ok(send(p, Request::get("/crm/v3/pipelines/deals")).await?)?;
                body["results"].as_array().cloned().unwrap_or_default()
            }
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for pl in &pipelines {
            for st in pl["stages"].as_array().into_iter().flatten() {
                if st["archived"].as_bool().unwrap_or(false) {
                    continue;
                }
                let (Some(id), Some(label)) = (st["id"].as_str(), st["label"].as_str()) else {
                    continue;
                };
                // Stage ids are unique across a portal's pipelines.
                if !out.iter().any(|(k, _)| k == id) {
                    out.push((id.to_string(), label.to_string()));
                }
            }
        }
        Ok(Some(out))
    }

    async fn create_custom_field(
        &self,
        p: &dyn Provider,
        object: &str,
        spec: &CustomFieldSpec,
    ) -> Result<String, ConnectorError> {
        let t = property_type(object)?;
        let name = spec
            .key
            .clone()
            .unwrap_or_else(|| property_name(&spec.name));
        let (ty, field_type) = match spec.kind {
            CustomKind::SingleSelect => ("enumeration", "select"),
            CustomKind::Text => ("string", "text"),
            CustomKind::Number | CustomKind::Currency | CustomKind::Percentage => {
                ("number", "number")
            }
        };
        let group = match t {
            "companies" => "companyinformation",
            "deals" => "dealinformation",
            _ => "contactinformation",
        };
        let mut body = json!({
            "name": name, "label": spec.name, "type": ty, "fieldType": field_type,
            "groupName": group, "options": property_options(&spec.options),
        });
        match spec.kind {
            CustomKind::Currency => body["showCurrencySymbol"] = json!(true),
            CustomKind::Percentage => body["numberDisplayHint"] = json!("percentage"),
            _ => {}
        }
        for (k, v) in &spec.native {
            body[k] = v.clone();
        }
        let out = ok(send(
            p,
            Request::with_body("POST", format!("/crm/v3/properties/{t}"), body),
        )
        .await?)?;
        Ok(out["name"].as_str().map_or(name, String::from))
    }

    async fn update_custom_field(
        &self,
        p: &dyn Provider,
        object: &str,
        key: &str,
        options: &[(String, String)],
    ) -> Result<String, ConnectorError> {
        let t = property_type(object)?;
        let body = json!({"options": property_options(options)});
        let path = format!("/crm/v3/properties/{t}/{}", crate::segment(key));
        let out = ok(send(p, Request::with_body("PATCH", path, body)).await?)?;
        Ok(out["name"].as_str().unwrap_or(key).to_string())
    }

    async fn info(&self, p: &dyn Provider, known: &OrgInfo) -> Result<OrgInfo, ConnectorError> {
        let body = ok(send(p, Request::get("/account-info/v3/details")).await?)?;
        let portal = id_of(&body["portalId"]);
        let url = body["uiDomain"].as_str().map(|d| match &portal {
            Some(p) => format!("https://{d}/contacts/{p}"),
            None => format!("https://{d}"),
        });
        Ok(OrgInfo {
            url: known.url.clone().or(url),
            org_id: portal.or_else(|| known.org_id.clone()),
            // A private app token belongs to no user; OAuth connections
            // learned theirs when they were made.
            user_id: known.user_id.clone(),
            currency: body["companyCurrency"].as_str().map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_contact_with_associations_and_back() {
        let r = to_record(
            "contacts",
            json!({"id": "51", "properties": {"firstname": "Ava", "lastname": "Chen", "jobtitle": "CTO", "hubspot_owner_id": "100001"},
                   "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-02T00:00:00.000Z", "archived": false,
                   "associations": {"companies": {"results": [{"id": "7", "type": "contact_to_company"}, {"id": "7", "type": "contact_to_company_unlabeled"}]}}}),
        )
        .unwrap();
        assert_eq!(r.data["jobTitle"], "CTO");
        assert_eq!(r.data["associations"]["accountIds"], json!(["7"]));
        assert_eq!(r.data["associations"]["dealIds"], json!([]));
        assert_eq!(r.data["associations"]["ownerUserId"], "100001");
        let (props, links) = to_native(
            "contacts",
            "contacts",
            json!({"lastName": "L", "accountId": "9", "$native": {"lifecyclestage": "lead"}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(props["lastname"], "L");
        assert_eq!(props["lifecyclestage"], "lead");
        assert_eq!(links, vec![("companies".to_string(), "9".to_string())]);
    }

    #[test]
    fn property_names_and_metadata() {
        assert_eq!(
            property_name("  Favourite Colour (2)! "),
            "favourite_colour_2"
        );
        assert_eq!(property_name("NPS"), "nps");
        let f = field_meta(
            &json!({"name": "tier", "label": "Tier", "type": "enumeration", "fieldType": "select",
            "options": [{"label": "Gold", "value": "gold"}], "hubspotDefined": false,
            "modificationMetadata": {"readOnlyValue": false}}),
        )
        .unwrap();
        assert_eq!(
            (f.kind, f.custom, f.creatable),
            ("singleselect", true, true)
        );
        assert_eq!(f.options, Some(vec![("gold".into(), "Gold".into())]));
        let f = field_meta(
            &json!({"name": "hs_object_id", "type": "number", "hubspotDefined": true,
            "modificationMetadata": {"readOnlyValue": true}}),
        )
        .unwrap();
        assert_eq!((f.kind, f.custom, f.updatable), ("number", false, false));
        assert!(field_meta(&json!({"type": "string"})).is_none());
    }

    #[test]
    fn hostile_records_are_errors_not_panics() {
        assert!(to_record("contacts", json!([1])).is_err());
        assert!(to_record("contacts", json!({"properties": {}})).is_err());
        let r = to_record(
            "deals",
            json!({"id": 5, "properties": {"amount": "lots", "hs_is_closed": null}}),
        )
        .unwrap();
        assert_eq!(r.data["amount"], Value::Null);
        assert_eq!(r.data["isClosed"], Value::Null);
    }
}
