//! Salesforce (REST API, the version in the catalog's base URL).
//!
//! - Lists are SOQL: `SELECT … FROM T [WHERE SystemModstamp >= t] ORDER BY
//!   SystemModstamp, Id`, paged by `nextRecordsUrl` (200 rows a batch via
//!   `Sforce-Query-Options`); incremental runs use `queryAll` so deleted
//!   rows come back with `IsDeleted = true` as tombstones.
//! - Calls are Tasks with `TaskSubtype = 'Call'`; tasks are the other Tasks.
//! - Writes are `/sobjects/{T}` (POST, PATCH, DELETE), then the row is read
//!   back so the store holds what Salesforce holds.
//! - `REQUEST_LIMIT_EXCEEDED` (403) is the org's daily allocation: a rate
//!   limit, not a refusal. An expired session (401) is refreshed by the
//!   outbound layer.
//! - Field metadata is `describe`; custom fields are the Tooling API's
//!   `CustomField` (found for updates by `TableEnumOrId` and
//!   `DeveloperName`); account info reads the `Organization` row.

use serde_json::{Map, Value, json};

use crate::{
    CallError, ConnectorError, CrmConnector, CustomFieldSpec, CustomKind, FieldMeta, ListRequest,
    NativeRecord, OrgInfo, Page, Provider, Request, Response,
};

pub struct Salesforce;

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

/// (sObject, extra WHERE clause) of a unified object.
fn sobject(object: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match object {
        "users" => ("User", None),
        "accounts" => ("Account", None),
        "contacts" => ("Contact", None),
        "deals" => ("Opportunity", None),
        "leads" => ("Lead", None),
        "notes" => ("Note", None),
        "tasks" => ("Task", Some("TaskSubtype != 'Call'")),
        "events" => ("Event", None),
        "calls" => ("Task", Some("TaskSubtype = 'Call'")),
        // EventRelation also holds rows for the event's own WhoId/WhatId;
        // only invitees are attendees.
        "attendees" => ("EventRelation", Some("IsInvitee = true")),
        "emails" => ("EmailMessage", None),
        // Campaigns; their members are CampaignMember rows.
        "lists" => ("Campaign", None),
        _ => return None,
    })
}

#[derive(Clone, Copy)]
enum K {
    /// As it comes.
    V,
    /// A Salesforce date-time, turned into RFC 3339.
    T,
}

/// (canonical, Salesforce field, kind) of the plain fields.
fn fields(object: &str) -> &'static [(&'static str, &'static str, K)] {
    use K::*;
    match object {
        "users" => &[
            ("firstName", "FirstName", V),
            ("lastName", "LastName", V),
            ("email", "Email", V),
        ],
        "accounts" => &[
            ("name", "Name", V),
            ("description", "Description", V),
            ("industry", "Industry", V),
            ("annualRevenue", "AnnualRevenue", V),
            ("numberOfEmployees", "NumberOfEmployees", V),
            ("website", "Website", V),
            ("phone", "Phone", V),
        ],
        "contacts" => &[
            ("firstName", "FirstName", V),
            ("lastName", "LastName", V),
            ("email", "Email", V),
            ("jobTitle", "Title", V),
            ("phone", "Phone", V),
            ("mobilePhone", "MobilePhone", V),
        ],
        "deals" => &[
            ("name", "Name", V),
            ("stage", "StageName", V),
            ("amount", "Amount", V),
            ("closeDate", "CloseDate", V),
            ("expectedRevenue", "ExpectedRevenue", V),
            ("isWon", "IsWon", V),
            ("isClosed", "IsClosed", V),
        ],
        "leads" => &[
            ("firstName", "FirstName", V),
            ("lastName", "LastName", V),
            ("email", "Email", V),
            ("jobTitle", "Title", V),
            ("account", "Company", V),
            ("phone", "Phone", V),
            ("mobilePhone", "MobilePhone", V),
        ],
        "notes" => &[("contentText", "Body", V)],
        "tasks" => &[
            ("subject", "Subject", V),
            ("body", "Description", V),
            ("status", "Status", V),
            ("priority", "Priority", V),
            ("dueDate", "ActivityDate", V),
            ("isDone", "IsClosed", V),
            ("type", "TaskSubtype", V),
        ],
        "events" => &[
            ("subject", "Subject", V),
            ("description", "Description", V),
            ("type", "Type", V),
            ("location", "Location", V),
            ("startDateTime", "StartDateTime", T),
            ("endDateTime", "EndDateTime", T),
            ("isAllDayEvent", "IsAllDayEvent", V),
        ],
        "calls" => &[
            ("subject", "Subject", V),
            ("description", "Description", V),
            ("status", "Status", V),
            ("disposition", "CallDisposition", V),
            ("duration", "CallDurationInSeconds", V),
        ],
        "attendees" => &[("status", "Status", V)],
        "lists" => &[("name", "Name", V)],
        "emails" => &[
            ("from", "FromAddress", V),
            ("subject", "Subject", V),
            ("body", "TextBody", V),
            ("bodyHtml", "HtmlBody", V),
            ("messageDate", "MessageDate", T),
            ("isIncoming", "Incoming", V),
            ("hasAttachment", "HasAttachment", V),
            ("isBounced", "IsBounced", V),
        ],
        _ => &[],
    }
}

/// Fields read besides the mapped ones.
fn extra(object: &str) -> &'static [&'static str] {
    match object {
        "users" => &["IsActive"],
        "accounts" => &[
            "BillingStreet",
            "BillingCity",
            "BillingState",
            "BillingPostalCode",
            "BillingCountry",
            "OwnerId",
        ],
        "contacts" => &["AccountId", "OwnerId"],
        "deals" => &["Probability", "AccountId", "OwnerId", "RecordTypeId"],
        "leads" => &["ConvertedAccountId", "ConvertedContactId", "OwnerId"],
        "notes" => &["Title", "ParentId", "OwnerId"],
        "calls" => &["CallType", "ActivityDate", "WhoId", "WhatId", "OwnerId"],
        "attendees" => &["EventId", "RelationId"],
        "lists" => &["Type", "Status", "IsActive", "OwnerId"],
        "emails" => &[
            "ToAddress",
            "CcAddress",
            "BccAddress",
            "Status",
            "RelatedToId",
        ],
        _ => &["WhoId", "WhatId", "OwnerId"],
    }
}

fn select(object: &str) -> Vec<&'static str> {
    let mut v = vec!["Id", "CreatedDate", "SystemModstamp"];
    if object != "users" {
        v.push("IsDeleted");
    }
    v.extend(fields(object).iter().map(|(_, f, _)| *f));
    v.extend(extra(object));
    v
}

/// Salesforce's `2024-01-02T03:04:05.000+0000` as RFC 3339.
fn sf_time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = v.as_str()?;
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.to_utc())
}

fn rfc(v: &Value) -> Value {
    sf_time(v).map_or(Value::Null, |t| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

/// Cursors of the children phase start with this (a `nextRecordsUrl`
/// never does).
const CHILDREN_CURSOR: &str = "children:";
/// Child-changed parents read per page.
const CHILD_PAGE: usize = 200;

/// Associations a parent keeps in child rows.
struct Children {
    sobject: &'static str,
    /// The child's field naming the parent.
    parent: &'static str,
    /// (child field, association key of the parent).
    links: &'static [(&'static str, &'static str)],
}

fn children(object: &str) -> Option<Children> {
    Some(match object {
        "deals" => Children {
            sobject: "OpportunityContactRole",
            parent: "OpportunityId",
            links: &[("ContactId", "contactIds")],
        },
        "lists" => Children {
            sobject: "CampaignMember",
            parent: "CampaignId",
            links: &[("ContactId", "contactIds"), ("LeadId", "leadIds")],
        },
        _ => return None,
    })
}

/// EmailMessage `Status` codes and the words for them.
const EMAIL_STATUS: &[(&str, &str)] = &[
    ("0", "new"),
    ("1", "read"),
    ("2", "replied"),
    ("3", "sent"),
    ("4", "forwarded"),
    ("5", "draft"),
];

fn email_status(code: &str) -> Option<&'static str> {
    EMAIL_STATUS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, w)| *w)
}

/// Which association a record id belongs to, by its key prefix.
fn by_prefix(id: &str) -> Option<&'static str> {
    Some(match id.get(..3)? {
        "001" => "accountIds",
        "003" => "contactIds",
        "006" => "dealIds",
        "00Q" => "leadIds",
        _ => return None,
    })
}

fn to_record(object: &str, mut v: Value) -> Result<NativeRecord, ConnectorError> {
    let id = v["Id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ConnectorError::Decode(format!("a Salesforce {object} row has no Id")))?;
    if let Value::Object(m) = &mut v {
        m.remove("attributes");
    }
    let mut data = Map::new();
    for (canon, f, kind) in fields(object) {
        let raw = v.get(*f).cloned().unwrap_or(Value::Null);
        data.insert(
            (*canon).into(),
            match kind {
                K::V => raw,
                K::T => rfc(&raw),
            },
        );
    }
    match object {
        "users" => {
            data.insert(
                "archived".into(),
                json!(v["IsActive"].as_bool().map(|a| !a)),
            );
        }
        "accounts" => {
            let addr: Map<String, Value> = [
                ("street", "BillingStreet"),
                ("city", "BillingCity"),
                ("state", "BillingState"),
                ("postalCode", "BillingPostalCode"),
                ("country", "BillingCountry"),
            ]
            .iter()
            .map(|(c, f)| ((*c).into(), v.get(*f).cloned().unwrap_or(Value::Null)))
            .collect();
            let any = addr.values().any(|x| !x.is_null());
            data.insert(
                "address".into(),
                if any {
                    Value::Object(addr)
                } else {
                    Value::Null
                },
            );
        }
        "deals" => {
            // Vessel's probability is a string.
            data.insert(
                "probability".into(),
                v["Probability"]
                    .as_f64()
                    .map_or(Value::Null, |p| json!(p.to_string())),
            );
        }
        "notes" => {
            data.insert("contentHtml".into(), v["Body"].clone());
        }
        "events" if data["type"].is_null() => {
            data.insert("type".into(), json!("meeting"));
        }
        "attendees" => {
            let relation = v["RelationId"].as_str().unwrap_or_default();
            data.insert(
                "associatedObjectType".into(),
                json!(match relation.get(..3) {
                    Some("00Q") => "lead",
                    Some("005") => "user",
                    _ => "contact",
                }),
            );
            data.insert(
                "status".into(),
                v["Status"]
                    .as_str()
                    .map_or(Value::Null, |s| json!(s.to_lowercase())),
            );
            data.insert("email".into(), Value::Null);
        }
        "emails" => {
            let split = |f: &str| -> Value {
                v[f].as_str().map_or(json!([]), |s| {
                    json!(
                        s.split([';', ','])
                            .map(str::trim)
                            .filter(|a| !a.is_empty())
                            .collect::<Vec<_>>()
                    )
                })
            };
            data.insert("to".into(), split("ToAddress"));
            data.insert("cc".into(), split("CcAddress"));
            data.insert("bcc".into(), split("BccAddress"));
            data.insert(
                "status".into(),
                v["Status"]
                    .as_str()
                    .and_then(email_status)
                    .map_or(Value::Null, |s| json!(s)),
            );
        }
        "calls" => {
            data.insert(
                "direction".into(),
                v["CallType"]
                    .as_str()
                    .map_or(Value::Null, |d| json!(d.to_lowercase())),
            );
            data.insert(
                "date".into(),
                v["ActivityDate"]
                    .as_str()
                    .map_or_else(|| rfc(&v["CreatedDate"]), |d| json!(d)),
            );
        }
        _ => {}
    }
    let mut assoc = Map::new();
    if object == "attendees" {
        assoc.insert("eventId".into(), v["EventId"].clone());
        assoc.insert("associationId".into(), v["RelationId"].clone());
    } else if object != "users" {
        if let Some(o) = v["OwnerId"].as_str() {
            assoc.insert("ownerUserId".into(), json!(o));
        }
        let mut push = |key: &str, id: &str| {
            let e = assoc.entry(key.to_string()).or_insert_with(|| json!([]));
            if let Value::Array(a) = e
                && !a.iter().any(|x| x == id)
            {
                a.push(json!(id));
            }
        };
        for f in ["AccountId", "ConvertedAccountId"] {
            if let Some(a) = v[f].as_str() {
                push("accountIds", a);
            }
        }
        if let Some(c) = v["ConvertedContactId"].as_str() {
            push("contactIds", c);
        }
        for f in ["WhoId", "WhatId", "ParentId", "RelatedToId"] {
            if let Some(id) = v[f].as_str()
                && let Some(key) = by_prefix(id)
            {
                push(key, id);
            }
        }
    }
    data.insert("associations".into(), Value::Object(assoc));
    Ok(NativeRecord {
        native_id: id,
        created_time: sf_time(&v["CreatedDate"]).map(|t| t.timestamp_millis()),
        modified_time: sf_time(&v["SystemModstamp"]).map(|t| t.timestamp_millis()),
        deleted: v["IsDeleted"].as_bool().unwrap_or(false),
        data,
        native: v,
    })
}

/// Canonical input → a Salesforce write body.
fn to_native(object: &str, input: &Map<String, Value>, creating: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (canon, f, _) in fields(object) {
        // Salesforce derives these; writing them is refused.
        if matches!(*f, "IsWon" | "IsClosed" | "ExpectedRevenue")
            || (object == "tasks" && *f == "TaskSubtype")
        {
            continue;
        }
        if let Some(v) = input.get(*canon) {
            out.insert((*f).into(), v.clone());
        }
    }
    match object {
        "accounts" => {
            if let Some(Value::Object(a)) = input.get("address") {
                for (c, f) in [
                    ("street", "BillingStreet"),
                    ("city", "BillingCity"),
                    ("state", "BillingState"),
                    ("postalCode", "BillingPostalCode"),
                    ("country", "BillingCountry"),
                ] {
                    if let Some(v) = a.get(c) {
                        out.insert(f.into(), v.clone());
                    }
                }
            }
        }
        "deals" => {
            if let Some(p) = input.get("probability") {
                let n = p
                    .as_f64()
                    .or_else(|| p.as_str().and_then(|s| s.parse().ok()));
                out.insert("Probability".into(), n.map_or(Value::Null, |n| json!(n)));
            }
            if let Some(a) = input.get("accountId") {
                out.insert("AccountId".into(), a.clone());
            }
            if let Some(Value::String(d)) = out.get("CloseDate") {
                let day = d.get(..10).unwrap_or(d).to_string();
                out.insert("CloseDate".into(), json!(day));
            }
        }
        "contacts" => {
            if let Some(a) = input.get("accountId") {
                out.insert("AccountId".into(), a.clone());
            }
        }
        "notes" => {
            if !out.contains_key("Body")
                && let Some(h) = input.get("contentHtml")
            {
                out.insert("Body".into(), h.clone());
            }
            if creating {
                let title = input
                    .get("contentText")
                    .or(input.get("contentHtml"))
                    .and_then(Value::as_str)
                    .unwrap_or("Note");
                out.insert(
                    "Title".into(),
                    json!(title.chars().take(80).collect::<String>()),
                );
            }
            for k in ["contactId", "accountId", "dealId", "leadId"] {
                if let Some(id) = input.get(k) {
                    out.insert("ParentId".into(), id.clone());
                }
            }
        }
        "attendees" => {
            if let Some(e) = input.get("eventId") {
                out.insert("EventId".into(), e.clone());
            }
            if let Some(r) = input.get("associationId") {
                out.insert("RelationId".into(), r.clone());
            }
            if let Some(Value::String(st)) = input.get("status") {
                let mut c = st.chars();
                let cap = c
                    .next()
                    .map(|f| f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase())
                    .unwrap_or_default();
                out.insert("Status".into(), json!(cap));
            }
            if creating {
                out.insert("IsInvitee".into(), json!(true));
            }
        }
        "emails" => {
            for (canon, f) in [
                ("to", "ToAddress"),
                ("cc", "CcAddress"),
                ("bcc", "BccAddress"),
            ] {
                match input.get(canon) {
                    Some(Value::Array(a)) => {
                        let joined: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                        out.insert(f.into(), json!(joined.join("; ")));
                    }
                    Some(Value::String(a)) => {
                        out.insert(f.into(), json!(a));
                    }
                    _ => {}
                }
            }
            match input.get("status").and_then(Value::as_str) {
                Some(st) => {
                    let code = EMAIL_STATUS
                        .iter()
                        .find(|(_, w)| w.eq_ignore_ascii_case(st))
                        .map_or(st, |(c, _)| c);
                    out.insert("Status".into(), json!(code));
                }
                None if creating => {
                    // Logged mail is sent mail unless it says otherwise.
                    let incoming = input.get("isIncoming").and_then(Value::as_bool) == Some(true);
                    out.insert("Status".into(), json!(if incoming { "1" } else { "3" }));
                }
                None => {}
            }
            if let Some(id) = input.get("dealId").or(input.get("accountId")) {
                out.insert("RelatedToId".into(), id.clone());
            }
            // Salesforce derives these.
            out.remove("HasAttachment");
            out.remove("IsBounced");
        }
        "tasks" | "events" | "calls" => {
            if let Some(id) = input.get("contactId").or(input.get("leadId")) {
                out.insert("WhoId".into(), id.clone());
            }
            if let Some(id) = input.get("dealId").or(input.get("accountId")) {
                out.insert("WhatId".into(), id.clone());
            }
            if let Some(Value::String(d)) = out.get("ActivityDate") {
                let day = d.get(..10).unwrap_or(d).to_string();
                out.insert("ActivityDate".into(), json!(day));
            }
            if object == "tasks" && input.get("isDone").and_then(Value::as_bool) == Some(true) {
                out.insert("Status".into(), json!("Completed"));
            }
            if object == "calls" {
                if let Some(d) = input.get("direction").and_then(Value::as_str) {
                    let mut c = d.chars();
                    let cap = c
                        .next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default();
                    out.insert("CallType".into(), json!(cap));
                }
                if let Some(Value::String(d)) = input.get("date") {
                    out.insert("ActivityDate".into(), json!(d.get(..10).unwrap_or(d)));
                }
                if creating {
                    out.insert("TaskSubtype".into(), json!("Call"));
                }
            }
            if creating && object != "events" {
                out.entry("Status").or_insert(json!(if object == "calls" {
                    "Completed"
                } else {
                    "Not Started"
                }));
                out.entry("Priority").or_insert(json!("Normal"));
            }
        }
        _ => {}
    }
    // EmailMessage and EventRelation have no owner.
    if let Some(o) = input.get("ownerUserId")
        && !matches!(object, "emails" | "attendees")
    {
        out.insert("OwnerId".into(), o.clone());
    }
    if let Some(Value::Object(raw)) = input.get("$native") {
        for (k, v) in raw {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn failed(resp: &Response) -> ConnectorError {
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let first = body.get(0).cloned().unwrap_or(Value::Null);
    let code = first["errorCode"]
        .as_str()
        .unwrap_or("UNKNOWN_EXCEPTION")
        .to_string();
    let message = first["message"]
        .as_str()
        .unwrap_or("Salesforce refused the request")
        .trim()
        .to_string();
    if resp.status == 403 && code == "REQUEST_LIMIT_EXCEEDED" {
        return ConnectorError::Call(CallError::RateLimited {
            retry_after_secs: 3600,
            message,
        });
    }
    if resp.status == 404 || code == "ENTITY_IS_DELETED" {
        return ConnectorError::NotFound;
    }
    if resp.status >= 500 {
        return ConnectorError::Call(CallError::Unavailable(format!(
            "Salesforce answered {}: {message}",
            resp.status
        )));
    }
    let errors = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| json!({"message": e["message"].clone(), "errorCode": e["errorCode"].clone(), "fields": e.get("fields").cloned().unwrap_or(json!([]))}))
        .collect();
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
    if resp.body.is_empty() {
        return Ok(Value::Null);
    }
    resp.json()
}

/// A SOQL date-time literal.
fn soql_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Salesforce ids are 15 or 18 alphanumerics; anything else cannot be one,
/// and must not reach a URL path or a SOQL literal.
fn valid_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A `describe` field as Vessel field metadata.
fn field_meta(f: &Value) -> Option<FieldMeta> {
    let key = f["name"].as_str()?.to_string();
    let kind = match f["type"].as_str().unwrap_or("string") {
        "id" => "id",
        "reference" => "reference",
        "boolean" => "boolean",
        "int" | "double" | "currency" => "number",
        "percent" => "percent",
        "date" => "date",
        "datetime" => "datetime",
        "time" => "time",
        "email" => "email",
        "phone" => "phone",
        "url" => "url",
        "picklist" | "combobox" => "singleselect",
        "multipicklist" => "multiselect",
        "address" => "address",
        _ => "string",
    };
    let options = f["picklistValues"]
        .as_array()
        .filter(|o| !o.is_empty())
        .map(|o| {
            o.iter()
                .filter(|v| v["active"].as_bool().unwrap_or(true))
                .map(|v| {
                    let value = v["value"].as_str().unwrap_or_default().to_string();
                    let label = v["label"]
                        .as_str()
                        .map_or_else(|| value.clone(), String::from);
                    (value, label)
                })
                .collect()
        });
    let creatable = f["createable"].as_bool().unwrap_or(false);
    Some(FieldMeta {
        name: f["label"]
            .as_str()
            .map_or_else(|| key.clone(), String::from),
        key,
        kind,
        options,
        is_array: kind == "multiselect",
        custom: f["custom"].as_bool().unwrap_or(false),
        // Salesforce's rule: a creatable field that cannot be null and has
        // no default must be given.
        required: creatable
            && !f["nillable"].as_bool().unwrap_or(true)
            && !f["defaultedOnCreate"].as_bool().unwrap_or(false)
            && kind != "boolean",
        creatable,
        updatable: f["updateable"].as_bool().unwrap_or(false),
    })
}

/// The sObject holding an object's custom fields.
fn custom_table(object: &str) -> Result<&'static str, ConnectorError> {
    match object {
        "contacts" | "accounts" | "leads" | "deals" => {
            Ok(sobject(object).map(|s| s.0).unwrap_or_default())
        }
        _ => Err(ConnectorError::Unsupported(format!(
            "Salesforce custom fields are supported on contacts, leads, accounts and deals, not {object}"
        ))),
    }
}

/// A field API name from a display name: `Favourite Colour` →
/// `Favourite_Colour__c` (letters, digits, single underscores).
fn custom_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let mut out = out.trim_end_matches('_').to_string();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'X');
    }
    out
}

fn value_set(options: &[(String, String)]) -> Value {
    json!({"valueSetDefinition": {"sorted": false, "value": options.iter().map(|(key, name)| json!({"fullName": key, "label": name, "default": false})).collect::<Vec<_>>()}})
}

impl Salesforce {
    /// The sObject's custom fields (`__c`, from describe), read with the
    /// mapped ones so their values reach `additional` and `$native`.
    async fn custom_fields(
        &self,
        p: &dyn Provider,
        t: &str,
    ) -> Result<Vec<String>, ConnectorError> {
        let body = ok(p
            .send(Request::get(format!("/sobjects/{t}/describe")))
            .await?)?;
        let mut names: Vec<String> = body["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["custom"].as_bool() == Some(true))
            .filter_map(|f| f["name"].as_str())
            // Names go into SOQL and a query string: nothing but a field name.
            .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The fields read for `object`: the mapped ones and the custom ones.
    async fn selected(
        &self,
        p: &dyn Provider,
        object: &str,
        t: &str,
    ) -> Result<Vec<String>, ConnectorError> {
        let mut fields: Vec<String> = select(object).into_iter().map(String::from).collect();
        for c in self.custom_fields(p, t).await? {
            if !fields.contains(&c) {
                fields.push(c);
            }
        }
        Ok(fields)
    }

    /// Every row of a SOQL query, following `nextRecordsUrl`.
    async fn query_all_rows(
        &self,
        p: &dyn Provider,
        endpoint: &str,
        q: String,
    ) -> Result<Vec<Value>, ConnectorError> {
        let mut rows = Vec::new();
        let mut req = Request::get(endpoint.to_string()).query("q", q);
        loop {
            let body = ok(p.send(req).await?)?;
            rows.extend(body["records"].as_array().cloned().unwrap_or_default());
            match body["nextRecordsUrl"].as_str() {
                Some(next) if body["done"].as_bool() == Some(false) => {
                    let rel = next.find("/query").map_or(next, |i| &next[i..]);
                    req = Request::get(rel.to_string());
                }
                _ => return Ok(rows),
            }
        }
    }

    /// Associations kept in child rows (a deal's contacts are its
    /// OpportunityContactRoles, a campaign's members its CampaignMembers):
    /// read for every listed or read-back parent, in child order.
    async fn attach_children(
        &self,
        p: &dyn Provider,
        object: &str,
        records: &mut [NativeRecord],
    ) -> Result<(), ConnectorError> {
        let Some(ch) = children(object) else {
            return Ok(());
        };
        let ids: Vec<&str> = records
            .iter()
            .filter(|r| !r.deleted)
            .map(|r| r.native_id.as_str())
            .filter(|id| valid_id(id))
            .collect();
        let fields: Vec<&str> = ch.links.iter().map(|(f, _)| *f).collect();
        // parent id -> association key -> ids
        let mut by_parent: std::collections::HashMap<String, Map<String, Value>> =
            Default::default();
        for chunk in ids.chunks(100) {
            let list: Vec<String> = chunk.iter().map(|id| format!("'{id}'")).collect();
            let q = format!(
                "SELECT {}, {} FROM {} WHERE {} IN ({}) ORDER BY Id ASC",
                ch.parent,
                fields.join(", "),
                ch.sobject,
                ch.parent,
                list.join(", ")
            );
            for row in self.query_all_rows(p, "/query", q).await? {
                let Some(parent) = row[ch.parent].as_str() else {
                    continue;
                };
                let assoc = by_parent.entry(parent.to_string()).or_default();
                for (f, key) in ch.links {
                    if let Some(id) = row[*f].as_str() {
                        let e = assoc.entry((*key).to_string()).or_insert_with(|| json!([]));
                        if let Value::Array(a) = e
                            && !a.iter().any(|x| x == id)
                        {
                            a.push(json!(id));
                        }
                    }
                }
            }
        }
        for r in records.iter_mut().filter(|r| !r.deleted) {
            let mut found = by_parent.remove(&r.native_id).unwrap_or_default();
            if let Some(Value::Object(a)) = r.data.get_mut("associations") {
                for (_, key) in ch.links {
                    a.insert(
                        (*key).into(),
                        found.remove(*key).unwrap_or_else(|| json!([])),
                    );
                }
            }
            if object == "lists" {
                let leads_only = r.data["associations"]["leadIds"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty())
                    && r.data["associations"]["contactIds"]
                        .as_array()
                        .is_none_or(|c| c.is_empty());
                r.data.insert(
                    "objectType".into(),
                    json!(if leads_only { "lead" } else { "contact" }),
                );
            }
        }
        Ok(())
    }

    /// Incremental runs of an object with child rows start with the
    /// parents whose children changed since `since` (a child change leaves
    /// the parent's SystemModstamp alone); their ids, to read before the
    /// usual listing.
    async fn child_changed_parents(
        &self,
        p: &dyn Provider,
        object: &str,
        since: i64,
    ) -> Result<Vec<String>, ConnectorError> {
        let Some(ch) = children(object) else {
            return Ok(Vec::new());
        };
        let q = format!(
            "SELECT {} FROM {} WHERE SystemModstamp >= {} ORDER BY SystemModstamp ASC, Id ASC",
            ch.parent,
            ch.sobject,
            soql_time(since)
        );
        let mut ids: Vec<String> = Vec::new();
        for row in self.query_all_rows(p, "/queryAll", q).await? {
            if let Some(o) = row[ch.parent].as_str().filter(|o| valid_id(o))
                && !ids.iter().any(|x| x == o)
            {
                ids.push(o.to_string());
            }
        }
        Ok(ids)
    }

    /// One page of the child-changed parents (`CHILDREN_CURSOR` phase).
    async fn children_page(
        &self,
        p: &dyn Provider,
        object: &str,
        t: &str,
        mut ids: Vec<String>,
        since: i64,
    ) -> Result<Page, ConnectorError> {
        let rest = ids.split_off(ids.len().min(CHILD_PAGE));
        let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        let fields = self.selected(p, object, t).await?;
        let q = format!(
            "SELECT {} FROM {t} WHERE Id IN ({}) ORDER BY Id ASC",
            fields.join(", "),
            list.join(", ")
        );
        let mut records = self
            .query_all_rows(p, "/queryAll", q)
            .await?
            .into_iter()
            .map(|r| to_record(object, r))
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_children(p, object, &mut records).await?;
        let next = if rest.is_empty() {
            json!({"after": since})
        } else {
            json!({"parents": rest, "since": since})
        };
        Ok(Page {
            records,
            next_cursor: Some(format!("{CHILDREN_CURSOR}{next}")),
            total: None,
        })
    }

    async fn read_one(
        &self,
        p: &dyn Provider,
        object: &str,
        id: &str,
    ) -> Result<NativeRecord, ConnectorError> {
        let (t, _) = sobject(object)
            .ok_or_else(|| ConnectorError::Unsupported(format!("Salesforce has no {object}")))?;
        if !valid_id(id) {
            return Err(ConnectorError::NotFound);
        }
        let fields = self.selected(p, object, t).await?;
        let r = Request::get(format!("/sobjects/{t}/{}", crate::segment(id)))
            .query("fields", fields.join(","));
        let mut rec = to_record(object, ok(p.send(r).await?)?)?;
        self.attach_children(p, object, std::slice::from_mut(&mut rec))
            .await?;
        Ok(rec)
    }
}

#[async_trait::async_trait]
impl CrmConnector for Salesforce {
    fn integration_id(&self) -> &'static str {
        "salesforce"
    }

    fn objects(&self) -> &'static [&'static str] {
        OBJECTS
    }

    fn tombstones(&self, object: &str) -> bool {
        // Users are deactivated, never deleted.
        object != "users"
    }

    async fn list(
        &self,
        p: &dyn Provider,
        object: &str,
        req: &ListRequest,
    ) -> Result<Page, ConnectorError> {
        let (t, clause) = sobject(object)
            .ok_or_else(|| ConnectorError::Unsupported(format!("Salesforce has no {object}")))?;
        // Objects with child rows: the children phase of an incremental
        // run, then the listing.
        let mut since = req.since;
        let mut cursor = req.cursor.clone();
        if children(object).is_some() {
            match cursor
                .as_deref()
                .and_then(|c| c.strip_prefix(CHILDREN_CURSOR))
            {
                Some(state) => {
                    let v: Value = serde_json::from_str(state).map_err(|_| {
                        ConnectorError::Decode(format!("a {object} cursor from another version"))
                    })?;
                    if let Some(ids) = v["parents"].as_array() {
                        let ids = ids
                            .iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect();
                        let since = v["since"].as_i64().unwrap_or(0);
                        return self.children_page(p, object, t, ids, since).await;
                    }
                    since = v["after"].as_i64();
                    cursor = None;
                }
                None if cursor.is_none() => {
                    if let Some(s) = since {
                        let ids = self.child_changed_parents(p, object, s).await?;
                        if !ids.is_empty() {
                            return self.children_page(p, object, t, ids, s).await;
                        }
                    }
                }
                None => {}
            }
        }
        let r = match &cursor {
            // nextRecordsUrl is absolute from the host; the provider's base
            // already ends in /services/data/vXX.X.
            Some(next) => {
                let rel = next.find("/query").map_or(next.as_str(), |i| &next[i..]);
                Request::get(rel.to_string())
            }
            None => {
                let mut conds: Vec<String> = Vec::new();
                if let Some(since) = since {
                    conds.push(format!("SystemModstamp >= {}", soql_time(since)));
                }
                if let Some(c) = clause {
                    conds.push(c.to_string());
                }
                // Later pages follow the locator, which keeps the fields.
                let fields = self.selected(p, object, t).await?;
                let mut q = format!("SELECT {} FROM {t}", fields.join(", "));
                if !conds.is_empty() {
                    q.push_str(" WHERE ");
                    q.push_str(&conds.join(" AND "));
                }
                q.push_str(" ORDER BY SystemModstamp ASC, Id ASC");
                let endpoint = if req.include_deleted {
                    "/queryAll"
                } else {
                    "/query"
                };
                Request::get(endpoint).query("q", q)
            }
        }
        .header("sforce-query-options", "batchSize=200");
        let body = ok(p.send(r).await?)?;
        let Some(rows) = body["records"].as_array() else {
            return Err(ConnectorError::Decode(
                "a Salesforce query answer has no `records`".into(),
            ));
        };
        let mut records = rows
            .iter()
            .map(|r| to_record(object, r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        self.attach_children(p, object, &mut records).await?;
        let next = if body["done"].as_bool() == Some(false) {
            body["nextRecordsUrl"].as_str().map(str::to_string)
        } else {
            None
        };
        Ok(Page {
            records,
            next_cursor: next,
            total: body["totalSize"].as_i64(),
        })
    }

    async fn find(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<Option<NativeRecord>, ConnectorError> {
        match self.read_one(p, object, native_id).await {
            Ok(r) => {
                // A Task is a call or a task, never both.
                let is_call = r.native["TaskSubtype"].as_str() == Some("Call");
                if (object == "calls" && !is_call) || (object == "tasks" && is_call) {
                    return Ok(None);
                }
                Ok(Some(r))
            }
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
        let (t, _) = sobject(object)
            .filter(|_| object != "users")
            .ok_or_else(|| {
                ConnectorError::Unsupported(format!("Salesforce cannot create {object}"))
            })?;
        let body = Value::Object(to_native(object, input, true));
        let v = ok(p
            .send(Request::with_body("POST", format!("/sobjects/{t}"), body))
            .await?)?;
        let id = v["id"].as_str().ok_or_else(|| {
            ConnectorError::Decode("Salesforce created a row without an id".into())
        })?;
        // A deal's contact is a contact role, made after the deal.
        if object == "deals"
            && let Some(Value::String(contact)) = input.get("contactId")
        {
            let role = json!({"OpportunityId": id, "ContactId": contact, "IsPrimary": true});
            ok(p.send(Request::with_body(
                "POST",
                "/sobjects/OpportunityContactRole",
                role,
            ))
            .await?)?;
        }
        self.read_one(p, object, id).await
    }

    async fn update(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
        input: &Map<String, Value>,
    ) -> Result<NativeRecord, ConnectorError> {
        let (t, _) = sobject(object)
            .filter(|_| object != "users")
            .ok_or_else(|| {
                ConnectorError::Unsupported(format!("Salesforce cannot update {object}"))
            })?;
        if !valid_id(native_id) {
            return Err(ConnectorError::NotFound);
        }
        let body = Value::Object(to_native(object, input, false));
        ok(p.send(Request::with_body(
            "PATCH",
            format!("/sobjects/{t}/{}", crate::segment(native_id)),
            body,
        ))
        .await?)?;
        self.read_one(p, object, native_id).await
    }

    async fn delete(
        &self,
        p: &dyn Provider,
        object: &str,
        native_id: &str,
    ) -> Result<(), ConnectorError> {
        let (t, _) = sobject(object)
            .filter(|_| object != "users")
            .ok_or_else(|| {
                ConnectorError::Unsupported(format!("Salesforce cannot delete {object}"))
            })?;
        if !valid_id(native_id) {
            return Err(ConnectorError::NotFound);
        }
        ok(p.send(Request::delete(format!(
            "/sobjects/{t}/{}",
            crate::segment(native_id)
        )))
        .await?)
        .map(|_| ())
    }

    async fn fields(
        &self,
        p: &dyn Provider,
        object: &str,
    ) -> Result<Vec<FieldMeta>, ConnectorError> {
        let Some((t, _)) = sobject(object) else {
            return Ok(Vec::new());
        };
        let body = ok(p
            .send(Request::get(format!("/sobjects/{t}/describe")))
            .await?)?;
        Ok(body["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(field_meta)
            .collect())
    }

    /// A pipeline is a record type's sales process: its stages come from
    /// the UI API's picklist values for that record type; without one,
    /// from the `StageName` picklist of the describe.
    fn deal_pipeline(&self, native: &Value) -> Option<String> {
        native["RecordTypeId"].as_str().map(String::from)
    }

    async fn deal_stages(
        &self,
        p: &dyn Provider,
        pipeline: Option<&str>,
    ) -> Result<Option<Vec<(String, String)>>, ConnectorError> {
        let values = match pipeline {
            Some(rt) => {
                let path = format!(
                    "/ui-api/object-info/Opportunity/picklist-values/{}/StageName",
                    crate::segment(rt)
                );
                let body = ok(p.send(Request::get(path)).await?)?;
                body["values"].as_array().cloned().unwrap_or_default()
            }
            None => {
                let body = ok(p
                    .send(Request::get("/sobjects/Opportunity/describe"))
                    .await?)?;
                body["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|f| f["name"] == "StageName")
                    .and_then(|f| f["picklistValues"].as_array().cloned())
                    .unwrap_or_default()
            }
        };
        Ok(Some(
            values
                .iter()
                .filter(|v| v["active"].as_bool().unwrap_or(true))
                .filter_map(|v| {
                    let value = v["value"].as_str()?;
                    let label = v["label"].as_str().unwrap_or(value);
                    Some((value.to_string(), label.to_string()))
                })
                .collect(),
        ))
    }

    async fn create_custom_field(
        &self,
        p: &dyn Provider,
        object: &str,
        spec: &CustomFieldSpec,
    ) -> Result<String, ConnectorError> {
        let table = custom_table(object)?;
        let base = spec.key.clone().unwrap_or_else(|| custom_name(&spec.name));
        let key = if base.ends_with("__c") {
            base
        } else {
            format!("{base}__c")
        };
        let mut metadata = match spec.kind {
            CustomKind::Text => json!({"type": "Text", "length": 255}),
            CustomKind::Number => json!({"type": "Number", "precision": 18, "scale": 2}),
            CustomKind::Currency => json!({"type": "Currency", "precision": 18, "scale": 2}),
            CustomKind::Percentage => json!({"type": "Percent", "precision": 5, "scale": 2}),
            CustomKind::SingleSelect => {
                json!({"type": "Picklist", "valueSet": value_set(&spec.options)})
            }
        };
        metadata["label"] = json!(spec.name);
        for (k, v) in &spec.native {
            metadata[k] = v.clone();
        }
        let body = json!({"FullName": format!("{table}.{key}"), "Metadata": metadata});
        ok(p.send(Request::with_body(
            "POST",
            "/tooling/sobjects/CustomField",
            body,
        ))
        .await?)?;
        Ok(key)
    }

    async fn update_custom_field(
        &self,
        p: &dyn Provider,
        object: &str,
        key: &str,
        options: &[(String, String)],
    ) -> Result<String, ConnectorError> {
        let table = custom_table(object)?;
        let dev = key.strip_suffix("__c").unwrap_or(key);
        // The name goes into a SOQL literal: only what a field name can be.
        if dev.is_empty() || !dev.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConnectorError::NotFound);
        }
        let q = format!(
            "SELECT Id, Metadata FROM CustomField WHERE TableEnumOrId = '{table}' AND DeveloperName = '{dev}'"
        );
        let found = ok(p.send(Request::get("/tooling/query").query("q", q)).await?)?;
        let row = found["records"].get(0).ok_or(ConnectorError::NotFound)?;
        let id = row["Id"].as_str().filter(|i| valid_id(i)).ok_or_else(|| {
            ConnectorError::Decode("Salesforce returned a custom field without an id".into())
        })?;
        // The Tooling API replaces the whole definition: send it back with
        // the new values.
        let mut metadata = row["Metadata"].clone();
        if !metadata.is_object() {
            return Err(ConnectorError::Decode(
                "Salesforce returned a custom field without its metadata".into(),
            ));
        }
        if !options.is_empty() {
            metadata["valueSet"] = value_set(options);
        }
        ok(p.send(Request::with_body(
            "PATCH",
            format!("/tooling/sobjects/CustomField/{id}"),
            json!({"Metadata": metadata}),
        ))
        .await?)?;
        Ok(format!("{dev}__c"))
    }

    async fn info(&self, p: &dyn Provider, known: &OrgInfo) -> Result<OrgInfo, ConnectorError> {
        let q = "SELECT Id, DefaultCurrencyIsoCode FROM Organization LIMIT 1";
        let body = ok(p.send(Request::get("/query").query("q", q)).await?)?;
        let org = &body["records"][0];
        // The identity URL of the token answer ends in /{orgId}/{userId}.
        let user_id = known.user_id.as_deref().map(|u| {
            u.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(u)
                .to_string()
        });
        Ok(OrgInfo {
            url: known.url.clone(),
            org_id: org["Id"]
                .as_str()
                .map(String::from)
                .or_else(|| known.org_id.clone()),
            user_id,
            currency: org["DefaultCurrencyIsoCode"].as_str().map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_field_names_and_describe_metadata() {
        assert_eq!(custom_name(" Favourite  colour! "), "Favourite_colour");
        assert_eq!(custom_name("2nd stage"), "X2nd_stage");
        let f = field_meta(
            &json!({"name": "LastName", "label": "Last Name", "type": "string",
            "custom": false, "nillable": false, "createable": true, "updateable": true}),
        )
        .unwrap();
        assert!(f.required && f.creatable && !f.custom);
        let f = field_meta(&json!({"name": "Tier__c", "label": "Tier", "type": "picklist", "custom": true,
            "nillable": true, "createable": true, "updateable": true,
            "picklistValues": [{"value": "g", "label": "Gold", "active": true}, {"value": "x", "label": "Old", "active": false}]})).unwrap();
        assert_eq!(
            (f.kind, f.custom, f.required),
            ("singleselect", true, false)
        );
        assert_eq!(f.options, Some(vec![("g".into(), "Gold".into())]));
    }

    #[test]
    fn maps_rows_both_ways() {
        let r = to_record(
            "calls",
            json!({"attributes": {"type": "Task"}, "Id": "00T5g0000000001AAA", "Subject": "Intro", "CallType": "Outbound",
                   "CallDurationInSeconds": 90, "WhoId": "0035g0000000001AAA", "WhatId": "0065g0000000001AAA",
                   "CreatedDate": "2024-01-01T00:00:00.000+0000", "SystemModstamp": "2024-01-02T00:00:00.000+0000", "IsDeleted": false}),
        )
        .unwrap();
        assert_eq!(r.data["direction"], "outbound");
        assert_eq!(r.data["duration"], 90);
        assert_eq!(
            r.data["associations"]["contactIds"],
            json!(["0035g0000000001AAA"])
        );
        assert_eq!(
            r.data["associations"]["dealIds"],
            json!(["0065g0000000001AAA"])
        );
        assert_eq!(r.modified_time, Some(1_704_153_600_000));
        assert!(r.native.get("attributes").is_none());
        let out = to_native("calls", json!({"direction": "inbound", "contactId": "003x", "$native": {"CallDisposition": "Left VM"}}).as_object().unwrap(), true);
        assert_eq!(out["CallType"], "Inbound");
        assert_eq!(out["TaskSubtype"], "Call");
        assert_eq!(out["WhoId"], "003x");
        assert_eq!(out["CallDisposition"], "Left VM");
    }

    #[test]
    fn hostile_rows_and_ids_are_errors_not_panics() {
        assert!(to_record("contacts", json!({"LastName": "x"})).is_err());
        assert!(to_record("contacts", json!("row")).is_err());
        assert!(!valid_id("003' OR Id != '"));
        assert!(!valid_id("../../limits"));
        assert!(valid_id("0035g0000000001AAA"));
        let e = failed(&Response { status: 403, body: br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#.to_vec() });
        assert!(matches!(
            e,
            ConnectorError::Call(CallError::RateLimited { .. })
        ));
        let e = failed(&Response { status: 400, body: br#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#.to_vec() });
        let ConnectorError::Provider { errors, .. } = e else {
            panic!()
        };
        assert_eq!(errors[0]["fields"], json!(["LastName"]));
    }
}
