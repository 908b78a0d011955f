//! A Salesforce REST API fake (org with `instance_url` = the fake's base):
//! the OAuth 2.0 web-server flow with PKCE (`/services/oauth2/authorize`
//! approves at once as the org's user, `/services/oauth2/token` with
//! `authorization_code` and `refresh_token` grants, no `expires_in`),
//! `/services/data/vXX.X/query` and `/queryAll` with a small SOQL subset
//! and `nextRecordsUrl` locators, `/sobjects/{T}` create,
//! `/sobjects/{T}/{id}` get/update/delete, `/sobjects/{T}/describe`,
//! `/limits`, and the Tooling API's `CustomField` (create, query by
//! `TableEnumOrId` and `DeveloperName`, update), whose fields then appear
//! in describe, SOQL and writes. `Organization` holds the org's one row.
//!
//! Behaviour from Salesforce's documentation: errors are a JSON array of
//! `{message, errorCode, fields}`; an expired session is 401
//! `INVALID_SESSION_ID`; the daily allocation answers 403
//! `REQUEST_LIMIT_EXCEEDED`; every REST answer carries `Sforce-Limit-Info:
//! api-usage=used/max`; dates are `2024-01-02T03:04:05.000+0000`; deleted
//! rows have `IsDeleted = true` and only `queryAll` returns them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{COMPANY, FIRST, Gen, INDUSTRY, LAST, now_ms, parse_time};

#[derive(Debug, Clone, Copy, PartialEq)]
enum FType {
    Id,
    Str,
    Email,
    Num,
    Bool,
    Date,
    DateTime,
    Pick(&'static [&'static str]),
    /// A lookup to one of these sObjects.
    Ref(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    label: &'static str,
    ty: FType,
    required: bool,
    writable: bool,
    custom: bool,
}

const fn fld(name: &'static str, label: &'static str, ty: FType) -> Field {
    Field {
        name,
        label,
        ty,
        required: false,
        writable: true,
        custom: false,
    }
}
const fn req(name: &'static str, label: &'static str, ty: FType) -> Field {
    Field {
        name,
        label,
        ty,
        required: true,
        writable: true,
        custom: false,
    }
}
const fn ro(name: &'static str, label: &'static str, ty: FType) -> Field {
    Field {
        name,
        label,
        ty,
        required: false,
        writable: false,
        custom: false,
    }
}
const fn custom(name: &'static str, label: &'static str, ty: FType) -> Field {
    Field {
        name,
        label,
        ty,
        required: false,
        writable: true,
        custom: true,
    }
}

const STAGES: &[&str] = &[
    "Prospecting",
    "Qualification",
    "Needs Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
];

/// (sObject, id prefix, fields besides the system ones).
fn sobject(name: &str) -> Option<(&'static str, &'static str, Vec<Field>)> {
    use FType::*;
    let common_owner = ro("OwnerId", "Owner ID", Ref(&["User"]));
    Some(match name {
        "User" => (
            "User",
            "005",
            vec![
                fld("FirstName", "First Name", Str),
                req("LastName", "Last Name", Str),
                req("Email", "Email", Email),
                fld("IsActive", "Active", Bool),
            ],
        ),
        "Account" => (
            "Account",
            "001",
            vec![
                req("Name", "Account Name", Str),
                fld("Description", "Account Description", Str),
                fld("Industry", "Industry", Str),
                fld("AnnualRevenue", "Annual Revenue", Num),
                fld("NumberOfEmployees", "Employees", Num),
                fld("Website", "Website", Str),
                fld("Phone", "Account Phone", Str),
                fld("BillingStreet", "Billing Street", Str),
                fld("BillingCity", "Billing City", Str),
                fld("BillingState", "Billing State/Province", Str),
                fld("BillingPostalCode", "Billing Zip/Postal Code", Str),
                fld("BillingCountry", "Billing Country", Str),
                Field {
                    writable: true,
                    ..common_owner
                },
                custom("Region__c", "Region", Str),
            ],
        ),
        "Contact" => (
            "Contact",
            "003",
            vec![
                fld("FirstName", "First Name", Str),
                req("LastName", "Last Name", Str),
                fld("Email", "Email", Email),
                fld("Title", "Title", Str),
                fld("Phone", "Business Phone", Str),
                fld("MobilePhone", "Mobile Phone", Str),
                fld("AccountId", "Account ID", Ref(&["Account"])),
                Field {
                    writable: true,
                    ..common_owner
                },
                custom("Region__c", "Region", Str),
            ],
        ),
        "Opportunity" => (
            "Opportunity",
            "006",
            vec![
                req("Name", "Name", Str),
                req("StageName", "Stage", Pick(STAGES)),
                req("CloseDate", "Close Date", Date),
                fld("Amount", "Amount", Num),
                fld("Probability", "Probability (%)", Num),
                ro("ExpectedRevenue", "Expected Amount", Num),
                ro("IsWon", "Won", Bool),
                ro("IsClosed", "Closed", Bool),
                fld("AccountId", "Account ID", Ref(&["Account"])),
                fld("RecordTypeId", "Record Type ID", Ref(&["RecordType"])),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        "Lead" => (
            "Lead",
            "00Q",
            vec![
                fld("FirstName", "First Name", Str),
                req("LastName", "Last Name", Str),
                req("Company", "Company", Str),
                fld("Email", "Email", Email),
                fld("Title", "Title", Str),
                fld("Phone", "Phone", Str),
                fld("MobilePhone", "Mobile Phone", Str),
                ro(
                    "ConvertedAccountId",
                    "Converted Account ID",
                    Ref(&["Account"]),
                ),
                ro(
                    "ConvertedContactId",
                    "Converted Contact ID",
                    Ref(&["Contact"]),
                ),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        "Task" => (
            "Task",
            "00T",
            vec![
                fld("Subject", "Subject", Str),
                fld("Description", "Comments", Str),
                req(
                    "Status",
                    "Status",
                    Pick(&[
                        "Not Started",
                        "In Progress",
                        "Completed",
                        "Waiting on someone else",
                        "Deferred",
                    ]),
                ),
                req("Priority", "Priority", Pick(&["High", "Normal", "Low"])),
                fld("ActivityDate", "Due Date Only", Date),
                ro("IsClosed", "Closed", Bool),
                fld(
                    "TaskSubtype",
                    "Task Subtype",
                    Pick(&["Task", "Email", "Call"]),
                ),
                fld(
                    "CallType",
                    "Call Type",
                    Pick(&["Internal", "Inbound", "Outbound"]),
                ),
                fld("CallDurationInSeconds", "Call Duration", Num),
                fld("CallDisposition", "Call Result", Str),
                fld("WhoId", "Name ID", Ref(&["Contact", "Lead"])),
                fld("WhatId", "Related To ID", Ref(&["Account", "Opportunity"])),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        "Event" => (
            "Event",
            "00U",
            vec![
                fld("Subject", "Subject", Str),
                fld("Description", "Description", Str),
                fld("Location", "Location", Str),
                fld("Type", "Type", Str),
                req("StartDateTime", "Start Date Time", DateTime),
                req("EndDateTime", "End Date Time", DateTime),
                fld("IsAllDayEvent", "All-Day Event", Bool),
                fld("WhoId", "Name ID", Ref(&["Contact", "Lead"])),
                fld("WhatId", "Related To ID", Ref(&["Account", "Opportunity"])),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        "Note" => (
            "Note",
            "002",
            vec![
                req("Title", "Title", Str),
                fld("Body", "Body", Str),
                req(
                    "ParentId",
                    "Parent ID",
                    Ref(&["Account", "Contact", "Opportunity", "Lead"]),
                ),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        // An email logged against records (Enhanced Email). No OwnerId:
        // it belongs to whoever created it.
        "EmailMessage" => (
            "EmailMessage",
            "02s",
            vec![
                fld("FromAddress", "From Address", Email),
                fld("FromName", "From Name", Str),
                fld("ToAddress", "To Address", Str),
                fld("CcAddress", "CC Address", Str),
                fld("BccAddress", "BCC Address", Str),
                fld("Subject", "Subject", Str),
                fld("TextBody", "Text Body", Str),
                fld("HtmlBody", "HTML Body", Str),
                fld("MessageDate", "Message Date", DateTime),
                fld("Incoming", "Is Incoming", Bool),
                ro("HasAttachment", "Has Attachment", Bool),
                ro("IsBounced", "Is Bounced", Bool),
                req("Status", "Status", Pick(&["0", "1", "2", "3", "4", "5"])),
                fld(
                    "RelatedToId",
                    "Related To ID",
                    Ref(&["Account", "Opportunity"]),
                ),
            ],
        ),
        // Who an event involves: invitees (`IsInvitee`), and the rows
        // Salesforce keeps for the event's WhoId/WhatId (`IsParent`,
        // `IsWhat`). No OwnerId.
        "EventRelation" => (
            "EventRelation",
            "0RE",
            vec![
                req("EventId", "Event ID", Ref(&["Event"])),
                req(
                    "RelationId",
                    "Relation ID",
                    Ref(&["Contact", "Lead", "User"]),
                ),
                fld("Status", "Status", Pick(&["New", "Accepted", "Declined"])),
                fld("IsInvitee", "Is Invitee", Bool),
                fld("IsParent", "Is Parent", Bool),
                fld("IsWhat", "Is What", Bool),
            ],
        ),
        // A contact's part in an opportunity. No OwnerId; changing one
        // does not touch the opportunity's SystemModstamp.
        "OpportunityContactRole" => (
            "OpportunityContactRole",
            "00K",
            vec![
                req("OpportunityId", "Opportunity ID", Ref(&["Opportunity"])),
                req("ContactId", "Contact ID", Ref(&["Contact"])),
                fld(
                    "Role",
                    "Role",
                    Pick(&[
                        "Decision Maker",
                        "Economic Buyer",
                        "Evaluator",
                        "Influencer",
                        "Other",
                    ]),
                ),
                fld("IsPrimary", "Primary", Bool),
            ],
        ),
        "Campaign" => (
            "Campaign",
            "701",
            vec![
                req("Name", "Name", Str),
                fld(
                    "Type",
                    "Type",
                    Pick(&["Email", "Webinar", "Conference", "Other"]),
                ),
                fld(
                    "Status",
                    "Status",
                    Pick(&["Planned", "In Progress", "Completed", "Aborted"]),
                ),
                fld("IsActive", "Active", Bool),
                Field {
                    writable: true,
                    ..common_owner
                },
            ],
        ),
        // A contact or lead in a campaign. No OwnerId; a membership change
        // does not touch the campaign's SystemModstamp.
        "CampaignMember" => (
            "CampaignMember",
            "00v",
            vec![
                req("CampaignId", "Campaign ID", Ref(&["Campaign"])),
                fld("ContactId", "Contact ID", Ref(&["Contact"])),
                fld("LeadId", "Lead ID", Ref(&["Lead"])),
                fld("Status", "Status", Str),
            ],
        ),
        "Organization" => (
            "Organization",
            "00D",
            vec![
                ro("Name", "Name", Str),
                ro("DefaultCurrencyIsoCode", "Currency ISO Code", Str),
            ],
        ),
        _ => return None,
    })
}

const SOBJECTS: &[&str] = &[
    "Organization",
    "User",
    "Account",
    "Contact",
    "Opportunity",
    "Lead",
    "Task",
    "Event",
    "Note",
    "EmailMessage",
    "EventRelation",
    "OpportunityContactRole",
    "Campaign",
    "CampaignMember",
];

fn system_fields() -> [Field; 7] {
    use FType::*;
    [
        ro("Id", "Record ID", Id),
        ro("IsDeleted", "Deleted", Bool),
        ro("CreatedDate", "Created Date", DateTime),
        ro("LastModifiedDate", "Last Modified Date", DateTime),
        ro("SystemModstamp", "System Modstamp", DateTime),
        ro("CreatedById", "Created By ID", Ref(&["User"])),
        ro("LastModifiedById", "Last Modified By ID", Ref(&["User"])),
    ]
}

/// Custom fields made through the Tooling API, by sObject.
type Custom = HashMap<&'static str, Vec<CustomDef>>;

#[derive(Debug, Clone)]
struct CustomDef {
    /// The Tooling API id (`00N…`).
    id: String,
    field: Field,
    /// The `Metadata` it was made or last updated with.
    metadata: Value,
}

fn all_fields(custom: &Custom, t: &str) -> Vec<Field> {
    let Some((name, _, fs)) = sobject(t) else {
        return vec![];
    };
    let mut v = system_fields().to_vec();
    // Users are deactivated, never deleted: they have no IsDeleted.
    if t == "User" {
        v.retain(|f| f.name != "IsDeleted");
    }
    v.extend(fs);
    v.extend(custom.get(name).into_iter().flatten().map(|c| c.field));
    v
}

/// Names and picklists of custom fields live as long as the fake (a few
/// per test), so they are leaked to fit the static field tables.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Salesforce's date-time format.
pub fn sf_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

fn sf_parse(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .ok()
        .map(|t| t.timestamp_millis())
        .or_else(|| parse_time(s))
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    created: i64,
    modstamp: i64,
    deleted: bool,
    fields: BTreeMap<String, Value>,
}

struct Grant {
    challenge: String,
    redirect_uri: String,
    scope: String,
}

struct Db {
    seq: u64,
    rows: HashMap<&'static str, BTreeMap<String, Row>>,
    codes: HashMap<String, Grant>,
    /// access token → issued at
    access: HashMap<String, Instant>,
    refresh: HashMap<String, String>,
    locators: HashMap<String, (Vec<String>, &'static str, Vec<String>)>,
    api_used: u64,
    custom: Custom,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub client_id: String,
    pub client_secret: String,
    pub users: usize,
    pub accounts: usize,
    pub contacts: usize,
    pub opportunities: usize,
    pub leads: usize,
    /// Records of each activity type (tasks, calls, events, notes).
    pub activities: usize,
    /// Campaigns: the first of contacts, the second of leads, the rest
    /// of both.
    pub campaigns: usize,
    pub seed: u64,
    pub history_days: i64,
    /// The org's rolling daily API allocation.
    pub daily_limit: u64,
    /// Session timeout: access tokens older than this get 401.
    pub session: Duration,
    /// sObjects the connected user's profile cannot read (e.g.
    /// `Campaign`): SOQL on them answers what Salesforce answers then,
    /// 400 `INVALID_TYPE`.
    pub inaccessible: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            client_id: "sf-client".into(),
            client_secret: "sf-secret".into(),
            users: 3,
            accounts: 10,
            contacts: 30,
            opportunities: 12,
            leads: 8,
            activities: 5,
            campaigns: 3,
            seed: 11,
            history_days: 120,
            daily_limit: 100_000,
            session: Duration::from_secs(7200),
            inaccessible: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct Salesforce {
    db: Arc<Mutex<Db>>,
    opts: Arc<Options>,
    base: Arc<Mutex<String>>,
}

impl Salesforce {
    pub fn new(opts: Options) -> Self {
        let mut db = Db {
            seq: 0,
            rows: SOBJECTS.iter().map(|t| (*t, BTreeMap::new())).collect(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            locators: HashMap::new(),
            api_used: 0,
            custom: HashMap::new(),
        };
        generate(&mut db, &opts);
        Self {
            db: Arc::new(Mutex::new(db)),
            opts: Arc::new(opts),
            base: Arc::new(Mutex::new(String::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves the fake on a loopback port; returns its base URL (also the
    /// org's `instance_url`).
    pub async fn serve(&self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = base.clone();
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(base)
    }

    /// Ids of the rows of `t` that are not deleted.
    pub fn live_ids(&self, t: &str, where_subtype: Option<(&str, bool)>) -> Vec<String> {
        let db = self.lock();
        db.rows
            .get(t)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| !r.deleted)
            .filter(|r| match where_subtype {
                None => true,
                Some((s, eq)) => {
                    (r.fields.get("TaskSubtype").and_then(Value::as_str) == Some(s)) == eq
                }
            })
            .map(|r| r.id.clone())
            .collect()
    }

    /// Live rows of `t` whose `field` equals `value`.
    pub fn live_ids_where(&self, t: &str, field: &str, value: &Value) -> Vec<String> {
        let db = self.lock();
        db.rows
            .get(t)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| !r.deleted && r.fields.get(field) == Some(value))
            .map(|r| r.id.clone())
            .collect()
    }

    /// A field of a row, as the org holds it.
    pub fn field(&self, t: &str, id: &str, f: &str) -> Option<Value> {
        self.lock().rows.get(t)?.get(id)?.fields.get(f).cloned()
    }

    /// Ends every session, as a session timeout would.
    pub fn expire_sessions(&self) {
        self.lock().access.clear();
    }

    pub fn router(&self) -> Router {
        let data = Router::new()
            .route("/query", get(query))
            .route("/queryAll", get(query_all))
            .route("/query/{locator}", get(more))
            .route("/queryAll/{locator}", get(more))
            .route("/limits", get(limits))
            .route("/sobjects/{t}", post(create))
            .route("/sobjects/{t}/describe", get(describe))
            .route(
                "/ui-api/object-info/{t}/picklist-values/{rt}/{field}",
                get(picklist_values),
            )
            .route("/sobjects/{t}/{id}", get(read).patch(update).delete(delete))
            .route("/tooling/sobjects/CustomField", post(tooling_create))
            .route(
                "/tooling/sobjects/CustomField/{id}",
                axum::routing::patch(tooling_update),
            )
            .route("/tooling/query", get(tooling_query))
            .fallback(|| async {
                sf_error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "The requested resource does not exist",
                    &[],
                )
            })
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard));
        Router::new()
            .route("/services/oauth2/authorize", get(authorize))
            .route("/services/oauth2/token", post(token))
            .nest("/services/data/{version}", data)
            .with_state(self.clone())
    }

    fn base(&self) -> String {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn new_id(db: &mut Db, prefix: &str) -> String {
    db.seq += 1;
    // 18-character ids: 3-char key prefix, pod, then a counter.
    format!("{prefix}5g0{:09}AAA", db.seq)
}

fn m_org() -> BTreeMap<String, Value> {
    BTreeMap::from([
        ("Name".to_string(), json!("Acme Fake Org")),
        ("DefaultCurrencyIsoCode".to_string(), json!("EUR")),
    ])
}

fn generate(db: &mut Db, o: &Options) {
    let mut g = Gen::new(o.seed);
    let now = now_ms();
    let span = (o.history_days.max(1) * 86_400_000) as u64;
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    let add = |db: &mut Db,
               g: &mut Gen,
               ids: &mut HashMap<&str, Vec<String>>,
               t: &'static str,
               mut f: BTreeMap<String, Value>| {
        let created = now - 60_000 - g.below(span) as i64;
        let modstamp = created + g.below((now - 60_000 - created).max(1) as u64) as i64;
        let prefix = sobject(t).map(|s| s.1).unwrap_or("000");
        let id = new_id(db, prefix);
        let owned = all_fields(&Custom::new(), t)
            .iter()
            .any(|f| f.name == "OwnerId");
        if owned && let Some(us) = ids.get("User").filter(|u| !u.is_empty()) {
            f.insert(
                "OwnerId".into(),
                json!(us[g.below(us.len() as u64) as usize]),
            );
        }
        db.rows.get_mut(t).map(|m| {
            m.insert(
                id.clone(),
                Row {
                    id: id.clone(),
                    created,
                    modstamp,
                    deleted: false,
                    fields: f,
                },
            )
        });
        ids.entry(t).or_default().push(id.clone());
        id
    };
    let pick = |g: &mut Gen, ids: &HashMap<&str, Vec<String>>, t: &str| -> Value {
        ids.get(t)
            .filter(|v| !v.is_empty())
            .map_or(Value::Null, |v| json!(v[g.below(v.len() as u64) as usize]))
    };
    let m = |pairs: Vec<(&str, Value)>| -> BTreeMap<String, Value> {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    let org = new_id(db, "00D");
    db.rows.get_mut("Organization").map(|m| {
        m.insert(
            org.clone(),
            Row {
                id: org.clone(),
                created: now - span as i64,
                modstamp: now - span as i64,
                deleted: false,
                fields: m_org(),
            },
        )
    });
    for i in 0..o.users {
        let (f, l) = (g.pick(FIRST), g.pick(LAST));
        let fields = m(vec![
            ("FirstName", json!(f)),
            ("LastName", json!(l)),
            (
                "Email",
                json!(format!(
                    "{}.{}{i}@org.example",
                    f.to_lowercase(),
                    l.to_lowercase()
                )),
            ),
            ("IsActive", json!(true)),
        ]);
        add(db, &mut g, &mut ids, "User", fields);
    }
    for i in 0..o.accounts {
        let n = g.pick(COMPANY);
        let fields = m(vec![
            ("Name", json!(format!("{n} {i}"))),
            ("Industry", json!(g.pick(INDUSTRY))),
            (
                "Website",
                json!(format!("https://{}{i}.example.com", n.to_lowercase())),
            ),
            ("NumberOfEmployees", json!(10 + g.below(5000))),
            ("AnnualRevenue", json!(100_000 + g.below(9_000_000))),
            ("BillingCity", json!("Porto")),
            ("BillingCountry", json!("Portugal")),
        ]);
        add(db, &mut g, &mut ids, "Account", fields);
    }
    for i in 0..o.contacts {
        let (f, l) = (g.pick(FIRST), g.pick(LAST));
        let acct = pick(&mut g, &ids, "Account");
        let fields = m(vec![
            ("FirstName", json!(f)),
            ("LastName", json!(l)),
            (
                "Email",
                json!(format!(
                    "{}.{}{i}@customer.example",
                    f.to_lowercase(),
                    l.to_lowercase()
                )),
            ),
            ("Title", json!("Buyer")),
            ("AccountId", acct),
        ]);
        add(db, &mut g, &mut ids, "Contact", fields);
    }
    for i in 0..o.opportunities {
        let stage = g.pick(STAGES);
        let acct = pick(&mut g, &ids, "Account");
        let close = chrono::DateTime::from_timestamp_millis(now + g.below(90) as i64 * 86_400_000)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        let fields = m(vec![
            ("Name", json!(format!("Opportunity {i}"))),
            ("StageName", json!(stage)),
            ("CloseDate", json!(close)),
            ("Amount", json!(1000 + g.below(50_000))),
            ("Probability", json!(10 * (1 + g.below(9)))),
            ("IsWon", json!(stage == "Closed Won")),
            ("IsClosed", json!(stage.starts_with("Closed"))),
            ("AccountId", acct),
            ("RecordTypeId", json!(MASTER_RECORD_TYPE)),
        ]);
        add(db, &mut g, &mut ids, "Opportunity", fields);
    }
    for i in 0..o.leads {
        let (f, l) = (g.pick(FIRST), g.pick(LAST));
        let fields = m(vec![
            ("FirstName", json!(f)),
            ("LastName", json!(l)),
            ("Company", json!(g.pick(COMPANY))),
            ("Email", json!(format!("lead{i}@prospect.example"))),
        ]);
        add(db, &mut g, &mut ids, "Lead", fields);
    }
    for i in 0..o.activities {
        let due = chrono::DateTime::from_timestamp_millis(now + g.below(30) as i64 * 86_400_000)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        let (who, what) = (
            pick(&mut g, &ids, "Contact"),
            pick(&mut g, &ids, "Opportunity"),
        );
        let fields = m(vec![
            ("Subject", json!(format!("Follow up {i}"))),
            ("Status", json!(g.pick(&["Not Started", "Completed"]))),
            ("Priority", json!("Normal")),
            ("ActivityDate", json!(due)),
            ("TaskSubtype", json!("Task")),
            ("WhoId", who),
            ("WhatId", what),
        ]);
        add(db, &mut g, &mut ids, "Task", fields);
        let (who, what) = (pick(&mut g, &ids, "Contact"), pick(&mut g, &ids, "Account"));
        let fields = m(vec![
            ("Subject", json!(format!("Call {i}"))),
            ("Status", json!("Completed")),
            ("Priority", json!("Normal")),
            ("TaskSubtype", json!("Call")),
            ("CallType", json!("Outbound")),
            ("CallDurationInSeconds", json!(g.below(900))),
            ("CallDisposition", json!("Connected")),
            ("WhoId", who),
            ("WhatId", what),
        ]);
        add(db, &mut g, &mut ids, "Task", fields);
        let start = now - g.below(span) as i64;
        let (who, what) = (
            pick(&mut g, &ids, "Contact"),
            pick(&mut g, &ids, "Opportunity"),
        );
        let fields = m(vec![
            ("Subject", json!(format!("Demo {i}"))),
            ("StartDateTime", json!(sf_time(start))),
            ("EndDateTime", json!(sf_time(start + 3_600_000))),
            ("Location", json!("Zoom")),
            ("IsAllDayEvent", json!(false)),
            ("WhoId", who),
            ("WhatId", what),
        ]);
        add(db, &mut g, &mut ids, "Event", fields);
        let parent = pick(&mut g, &ids, "Contact");
        let fields = m(vec![
            ("Title", json!(format!("Note {i}"))),
            ("Body", json!("Discussed pricing")),
            ("ParentId", parent),
        ]);
        add(db, &mut g, &mut ids, "Note", fields);
    }
    // Emails and event invitees come after the rest, so the records above
    // are the same as before they existed.
    for i in 0..o.activities {
        let at = now - g.below(span) as i64;
        let incoming = g.below(2) == 0;
        let related = if i % 2 == 0 {
            pick(&mut g, &ids, "Opportunity")
        } else {
            pick(&mut g, &ids, "Account")
        };
        let fields = m(vec![
            (
                "FromAddress",
                json!(if incoming {
                    "buyer@customer.example"
                } else {
                    "rep@org.example"
                }),
            ),
            (
                "ToAddress",
                json!(if incoming {
                    "rep@org.example"
                } else {
                    "buyer@customer.example; cfo@customer.example"
                }),
            ),
            ("Subject", json!(format!("Proposal {i}"))),
            ("TextBody", json!("Please find the proposal attached.")),
            ("MessageDate", json!(sf_time(at))),
            ("Incoming", json!(incoming)),
            ("HasAttachment", json!(i % 3 == 0)),
            ("IsBounced", json!(false)),
            ("Status", json!(if incoming { "1" } else { "3" })),
            ("RelatedToId", related),
        ]);
        add(db, &mut g, &mut ids, "EmailMessage", fields);
    }
    // Contact roles: one or two per opportunity, the first primary.
    let opportunities = ids.get("Opportunity").cloned().unwrap_or_default();
    for (i, opp) in opportunities.iter().enumerate() {
        for k in 0..(1 + i % 2) {
            let fields = m(vec![
                ("OpportunityId", json!(opp)),
                ("ContactId", pick(&mut g, &ids, "Contact")),
                (
                    "Role",
                    json!(if k == 0 {
                        "Decision Maker"
                    } else {
                        "Influencer"
                    }),
                ),
                ("IsPrimary", json!(k == 0)),
            ]);
            add(db, &mut g, &mut ids, "OpportunityContactRole", fields);
        }
    }
    for i in 0..o.campaigns {
        let fields = m(vec![
            ("Name", json!(format!("Campaign {i}"))),
            ("Type", json!(g.pick(&["Email", "Webinar", "Conference"]))),
            ("Status", json!("In Progress")),
            ("IsActive", json!(true)),
        ]);
        let campaign = add(db, &mut g, &mut ids, "Campaign", fields);
        let kinds: &[&str] = match i {
            0 => &["Contact", "Contact", "Contact"],
            1 => &["Lead", "Lead"],
            _ => &["Contact", "Lead", "Contact"],
        };
        for kind in kinds {
            let member = pick(&mut g, &ids, kind);
            let field = if *kind == "Lead" {
                "LeadId"
            } else {
                "ContactId"
            };
            let fields = m(vec![
                ("CampaignId", json!(campaign)),
                (field, member),
                ("Status", json!("Sent")),
            ]);
            add(db, &mut g, &mut ids, "CampaignMember", fields);
        }
    }
    let events = ids.get("Event").cloned().unwrap_or_default();
    for (i, event) in events.iter().enumerate() {
        // The row Salesforce keeps for the event's own WhoId: not an
        // invitee, so not an attendee.
        let who = db
            .rows
            .get("Event")
            .and_then(|m| m.get(event))
            .and_then(|r| r.fields.get("WhoId").cloned())
            .unwrap_or(Value::Null);
        let fields = m(vec![
            ("EventId", json!(event)),
            ("RelationId", who),
            ("IsInvitee", json!(false)),
            ("IsParent", json!(true)),
            ("IsWhat", json!(false)),
        ]);
        add(db, &mut g, &mut ids, "EventRelation", fields);
        let (invitee, status) = if i % 3 == 2 {
            (pick(&mut g, &ids, "Lead"), "New")
        } else {
            (pick(&mut g, &ids, "Contact"), "Accepted")
        };
        let fields = m(vec![
            ("EventId", json!(event)),
            ("RelationId", invitee),
            ("Status", json!(status)),
            ("IsInvitee", json!(true)),
            ("IsParent", json!(false)),
            ("IsWhat", json!(false)),
        ]);
        add(db, &mut g, &mut ids, "EventRelation", fields);
    }
}

fn sf_error(status: StatusCode, code: &str, message: &str, fields: &[&str]) -> Response {
    let mut e = json!({"message": message, "errorCode": code});
    if !fields.is_empty() {
        e["fields"] = json!(fields);
    }
    (status, Json(json!([e]))).into_response()
}

/// Session check, the daily allocation and `Sforce-Limit-Info`.
async fn guard(State(s): State<Salesforce>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .unwrap_or("")
        .to_string();
    let (used, over) = {
        let mut db = s.lock();
        let valid = db
            .access
            .get(&token)
            .is_some_and(|t| t.elapsed() < s.opts.session);
        if !valid {
            drop(db);
            return sf_error(
                StatusCode::UNAUTHORIZED,
                "INVALID_SESSION_ID",
                "Session expired or invalid",
                &[],
            );
        }
        db.api_used += 1;
        (db.api_used, db.api_used > s.opts.daily_limit)
    };
    let info = HeaderValue::from_str(&format!("api-usage={used}/{}", s.opts.daily_limit)).ok();
    let mut r = if over {
        sf_error(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
            &[],
        )
    } else {
        next.run(req).await
    };
    if let Some(v) = info {
        r.headers_mut().insert("sforce-limit-info", v);
    }
    r
}

async fn authorize(
    State(s): State<Salesforce>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != s.opts.client_id {
        return (
            StatusCode::BAD_REQUEST,
            "error=invalid_client_id&error_description=client identifier invalid",
        )
            .into_response();
    }
    if get("response_type") != "code" || get("redirect_uri").is_empty() {
        return (StatusCode::BAD_REQUEST, "error=unsupported_response_type").into_response();
    }
    let code = format!(
        "aPrx{}",
        &hex::encode(Sha256::digest(
            format!("{}{}", now_ms(), get("state")).as_bytes()
        ))[..24]
    );
    s.lock().codes.insert(
        code.clone(),
        Grant {
            challenge: get("code_challenge"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
        },
    );
    let mut url = match url::Url::parse(&get("redirect_uri")) {
        Ok(u) => u,
        Err(_) => return (StatusCode::BAD_REQUEST, "error=redirect_uri_mismatch").into_response(),
    };
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"));
    Redirect::to(url.as_str()).into_response()
}

fn oauth_error(code: &str, desc: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": desc})),
    )
        .into_response()
}

async fn token(State(s): State<Salesforce>, Form(f): Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("client_id") != s.opts.client_id || get("client_secret") != s.opts.client_secret {
        return oauth_error("invalid_client", "invalid client credentials");
    }
    let base = s.base();
    let mut db = s.lock();
    let mint = |db: &mut Db| {
        db.seq += 1;
        let t = format!(
            "00D5g000001!AQ{}",
            hex::encode(Sha256::digest(
                format!("at{}{}", db.seq, now_ms()).as_bytes()
            ))
        );
        db.access.insert(t.clone(), Instant::now());
        t
    };
    let user = db.rows["User"].keys().next().cloned().unwrap_or_default();
    let org = db.rows["Organization"]
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    let identity = format!("{base}/id/{org}/{user}");
    let issued = now_ms().to_string();
    match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(g) = db.codes.remove(&get("code")) else {
                return oauth_error("invalid_grant", "authentication failure");
            };
            if g.redirect_uri != get("redirect_uri") {
                return oauth_error("invalid_grant", "redirect_uri must match configuration");
            }
            if !g.challenge.is_empty() {
                let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(Sha256::digest(get("code_verifier").as_bytes()));
                if verifier != g.challenge {
                    return oauth_error("invalid_grant", "invalid code verifier");
                }
            }
            let access = mint(&mut db);
            let mut body = json!({
                "access_token": access, "instance_url": base, "id": identity,
                "token_type": "Bearer", "issued_at": issued, "signature": "c2lnbmF0dXJl", "scope": g.scope,
            });
            if g.scope
                .split(' ')
                .any(|s| s == "refresh_token" || s == "offline_access")
            {
                db.seq += 1;
                let rt = format!(
                    "5Aep8{}",
                    hex::encode(Sha256::digest(format!("rt{}", db.seq).as_bytes()))
                );
                db.refresh.insert(rt.clone(), g.scope.clone());
                body["refresh_token"] = json!(rt);
            }
            Json(body).into_response()
        }
        "refresh_token" => {
            let Some(scope) = db.refresh.get(&get("refresh_token")).cloned() else {
                return oauth_error("invalid_grant", "expired access/refresh token");
            };
            let access = mint(&mut db);
            Json(json!({
                "access_token": access, "instance_url": base, "id": identity,
                "token_type": "Bearer", "issued_at": issued, "signature": "c2lnbmF0dXJl", "scope": scope,
            }))
            .into_response()
        }
        _ => oauth_error("unsupported_grant_type", "grant type not supported"),
    }
}

#[derive(Debug)]
enum Lit {
    Str(String),
    Num(f64),
    Time(i64),
    Bool(bool),
    Null,
    List(Vec<String>),
}

#[derive(Debug)]
struct Cond {
    field: String,
    op: String,
    value: Lit,
}

#[derive(Debug)]
struct Soql {
    fields: Vec<String>,
    from: &'static str,
    conds: Vec<Cond>,
    order: Vec<(String, bool)>,
    limit: Option<usize>,
}

fn tokens(q: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut it = q.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' | '(' | ')' => out.push(c.to_string()),
            '\'' => {
                let mut s = String::from("'");
                loop {
                    match it.next() {
                        Some('\\') => {
                            if let Some(n) = it.next() {
                                s.push(n);
                            }
                        }
                        Some('\'') => break,
                        Some(n) => s.push(n),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                out.push(s);
            }
            '<' | '>' | '=' | '!' => {
                let mut s = c.to_string();
                if it.peek() == Some(&'=') {
                    s.push('=');
                    it.next();
                }
                out.push(s);
            }
            _ => {
                let mut s = c.to_string();
                while let Some(&n) = it.peek() {
                    if n.is_whitespace() || ",()<>=!'".contains(n) {
                        break;
                    }
                    s.push(n);
                    it.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn literal(t: &str) -> Lit {
    if let Some(s) = t.strip_prefix('\'') {
        return Lit::Str(s.to_string());
    }
    match t.to_ascii_lowercase().as_str() {
        "true" => return Lit::Bool(true),
        "false" => return Lit::Bool(false),
        "null" => return Lit::Null,
        _ => {}
    }
    if let Ok(n) = t.parse::<f64>() {
        return Lit::Num(n);
    }
    match sf_parse(t) {
        Some(ms) => Lit::Time(ms),
        None => Lit::Str(format!("\u{0}{t}")),
    }
}

fn parse_soql(q: &str, custom: &Custom) -> Result<Soql, (String, String)> {
    let malformed = |m: &str| ("MALFORMED_QUERY".to_string(), m.to_string());
    let t = tokens(q).map_err(|e| malformed(&e))?;
    let kw = |i: usize, w: &str| t.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !kw(0, "SELECT") {
        return Err(malformed("unexpected token: expected SELECT"));
    }
    let mut i = 1;
    let mut fields = Vec::new();
    while i < t.len() && !kw(i, "FROM") {
        if t[i] != "," {
            fields.push(t[i].clone());
        }
        i += 1;
    }
    if fields.is_empty() || !kw(i, "FROM") {
        return Err(malformed("unexpected token: expected FROM"));
    }
    let obj = t.get(i + 1).cloned().unwrap_or_default();
    let Some((from, _, _)) = sobject(&obj) else {
        return Err((
            "INVALID_TYPE".into(),
            format!("sObject type '{obj}' is not supported."),
        ));
    };
    let known = all_fields(custom, from);
    let check = |f: &str| -> Result<String, (String, String)> {
        known
            .iter()
            .find(|k| k.name.eq_ignore_ascii_case(f))
            .map(|k| k.name.to_string())
            .ok_or_else(|| ("INVALID_FIELD".into(), format!("\nERROR at Row:1:Column:8\nNo such column '{f}' on entity '{from}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name.")))
    };
    let fields = fields
        .iter()
        .map(|f| check(f))
        .collect::<Result<Vec<_>, _>>()?;
    i += 2;
    let mut conds = Vec::new();
    if kw(i, "WHERE") {
        i += 1;
        loop {
            let field = check(
                t.get(i)
                    .ok_or_else(|| malformed("unexpected end of query"))?,
            )?;
            let op = t
                .get(i + 1)
                .cloned()
                .ok_or_else(|| malformed("unexpected end of query"))?;
            if op.eq_ignore_ascii_case("IN") {
                if t.get(i + 2).map(String::as_str) != Some("(") {
                    return Err(malformed("expected ( after IN"));
                }
                let mut j = i + 3;
                let mut vals = Vec::new();
                while j < t.len() && t[j] != ")" {
                    if t[j] != "," {
                        vals.push(t[j].trim_start_matches('\'').to_string());
                    }
                    j += 1;
                }
                conds.push(Cond {
                    field,
                    op: "IN".into(),
                    value: Lit::List(vals),
                });
                i = j + 1;
            } else {
                if !["=", "!=", "<", "<=", ">", ">="].contains(&op.as_str()) {
                    return Err(malformed(&format!("unexpected token: '{op}'")));
                }
                let v = t
                    .get(i + 2)
                    .ok_or_else(|| malformed("unexpected end of query"))?;
                let value = literal(v);
                if let Lit::Str(s) = &value
                    && s.starts_with('\u{0}')
                {
                    return Err(malformed(&format!("unexpected token: '{v}'")));
                }
                conds.push(Cond { field, op, value });
                i += 3;
            }
            if kw(i, "AND") {
                i += 1;
            } else {
                break;
            }
        }
    }
    let mut order = Vec::new();
    if kw(i, "ORDER") && kw(i + 1, "BY") {
        i += 2;
        loop {
            let f = check(
                t.get(i)
                    .ok_or_else(|| malformed("unexpected end of query"))?,
            )?;
            i += 1;
            let mut desc = false;
            if kw(i, "ASC") {
                i += 1;
            } else if kw(i, "DESC") {
                desc = true;
                i += 1;
            }
            order.push((f, desc));
            if t.get(i).map(String::as_str) == Some(",") {
                i += 1;
            } else {
                break;
            }
        }
    }
    let mut limit = None;
    if kw(i, "LIMIT") {
        limit = Some(
            t.get(i + 1)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| malformed("LIMIT needs a number"))?,
        );
        i += 2;
    }
    if i < t.len() {
        return Err(malformed(&format!("unexpected token: '{}'", t[i])));
    }
    Ok(Soql {
        fields,
        from,
        conds,
        order,
        limit,
    })
}

fn value_of(r: &Row, f: &str) -> Value {
    match f {
        "Id" => json!(r.id),
        "IsDeleted" => json!(r.deleted),
        "CreatedDate" => json!(sf_time(r.created)),
        "LastModifiedDate" | "SystemModstamp" => json!(sf_time(r.modstamp)),
        _ => r.fields.get(f).cloned().unwrap_or(Value::Null),
    }
}

fn cond_holds(r: &Row, c: &Cond) -> bool {
    let v = value_of(r, &c.field);
    use std::cmp::Ordering::*;
    let ord = match (&c.value, &v) {
        (Lit::Null, _) => return (c.op == "=") == v.is_null(),
        (Lit::List(vals), _) => return v.as_str().is_some_and(|s| vals.iter().any(|x| x == s)),
        (_, Value::Null) => return c.op == "!=",
        (Lit::Str(s), Value::String(a)) => a.as_str().cmp(s.as_str()),
        (Lit::Num(n), Value::Number(a)) => {
            a.as_f64().unwrap_or(0.0).partial_cmp(n).unwrap_or(Equal)
        }
        (Lit::Time(t), Value::String(a)) => sf_parse(a).unwrap_or(0).cmp(t),
        (Lit::Bool(b), Value::Bool(a)) => a.cmp(b),
        _ => return false,
    };
    match c.op.as_str() {
        "=" => ord == Equal,
        "!=" => ord != Equal,
        "<" => ord == Less,
        "<=" => ord != Greater,
        ">" => ord == Greater,
        _ => ord != Less,
    }
}

fn render(t: &str, r: &Row, fields: &[String], version: &str) -> Value {
    let mut m = Map::new();
    m.insert(
        "attributes".into(),
        json!({"type": t, "url": format!("/services/data/{version}/sobjects/{t}/{}", r.id)}),
    );
    for f in fields {
        m.insert(f.clone(), value_of(r, f));
    }
    Value::Object(m)
}

async fn query(
    s: State<Salesforce>,
    v: Path<String>,
    h: axum::http::HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    run_query(s, v, h, q, false).await
}

async fn query_all(
    s: State<Salesforce>,
    v: Path<String>,
    h: axum::http::HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Response {
    run_query(s, v, h, q, true).await
}

fn batch_size(h: &axum::http::HeaderMap) -> usize {
    h.get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().strip_prefix("batchSize="))
        })
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(2000, |n| n.clamp(200, 2000))
}

async fn run_query(
    State(s): State<Salesforce>,
    Path(version): Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    all: bool,
) -> Response {
    let Some(text) = q.get("q") else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "A query string has to be specified",
            &[],
        );
    };
    let from = text
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("FROM"))
        .nth(1)
        .unwrap_or_default();
    if s.opts
        .inaccessible
        .iter()
        .any(|o| o.eq_ignore_ascii_case(from))
    {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!(
                "\n{text}\n^\nERROR at Row:1:Column:1\nsObject type '{from}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names."
            ),
            &[],
        );
    }
    let mut db = s.lock();
    let soql = match parse_soql(text, &db.custom) {
        Ok(s) => s,
        Err((code, msg)) => return sf_error(StatusCode::BAD_REQUEST, &code, &msg, &[]),
    };
    let mut rows: Vec<&Row> = db.rows[soql.from]
        .values()
        .filter(|r| all || !r.deleted)
        .filter(|r| soql.conds.iter().all(|c| cond_holds(r, c)))
        .collect();
    if !soql.order.is_empty() {
        rows.sort_by(|a, b| {
            for (f, desc) in &soql.order {
                let (x, y) = (value_of(a, f), value_of(b, f));
                let o = match (&x, &y) {
                    (Value::Number(p), Value::Number(q)) => p
                        .as_f64()
                        .partial_cmp(&q.as_f64())
                        .unwrap_or(std::cmp::Ordering::Equal),
                    _ => {
                        let (p, q) = (x.as_str().unwrap_or(""), y.as_str().unwrap_or(""));
                        match (sf_parse(p), sf_parse(q)) {
                            (Some(p), Some(q)) => p.cmp(&q),
                            _ => p.cmp(q),
                        }
                    }
                };
                let o = if *desc { o.reverse() } else { o };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    if let Some(l) = soql.limit {
        rows.truncate(l);
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let batch = batch_size(&headers);
    page(
        &mut db,
        &version,
        soql.from,
        soql.fields,
        ids,
        0,
        batch,
        all,
    )
}

#[allow(clippy::too_many_arguments)]
fn page(
    db: &mut Db,
    version: &str,
    t: &'static str,
    fields: Vec<String>,
    ids: Vec<String>,
    start: usize,
    batch: usize,
    all: bool,
) -> Response {
    let total = ids.len();
    let end = (start + batch).min(total);
    let records: Vec<Value> = ids[start.min(total)..end]
        .iter()
        .filter_map(|id| db.rows[t].get(id))
        .map(|r| render(t, r, &fields, version))
        .collect();
    let mut body = json!({"totalSize": total, "done": end >= total, "records": records});
    if end < total {
        db.seq += 1;
        let loc = format!("01g5g00000{:08}", db.seq);
        db.locators.insert(loc.clone(), (ids, t, fields));
        let kind = if all { "queryAll" } else { "query" };
        body["nextRecordsUrl"] = json!(format!("/services/data/{version}/{kind}/{loc}-{end}"));
    }
    Json(body).into_response()
}

async fn more(
    State(s): State<Salesforce>,
    Path((version, locator)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some((loc, start)) = locator.rsplit_once('-') else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
            &[],
        );
    };
    let mut db = s.lock();
    let (Some((ids, t, fields)), Ok(start)) =
        (db.locators.get(loc).cloned(), start.parse::<usize>())
    else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
            &[],
        );
    };
    page(
        &mut db,
        &version,
        t,
        fields,
        ids,
        start,
        batch_size(&headers),
        false,
    )
}

/// A custom field's type from its Tooling `Metadata`, or the reason it is
/// refused (Salesforce's FIELD_INTEGRITY_EXCEPTION cases).
fn custom_type(m: &Value) -> Result<FType, String> {
    Ok(match m["type"].as_str().unwrap_or("") {
        "Text" => {
            if !m["length"].is_u64() {
                return Err("Must specify 'length' for a CustomField of type Text".into());
            }
            FType::Str
        }
        "Number" | "Currency" | "Percent" => {
            if !m["precision"].is_u64() {
                return Err(format!(
                    "Must specify 'precision' for a CustomField of type {}",
                    m["type"].as_str().unwrap_or_default()
                ));
            }
            FType::Num
        }
        "Checkbox" => FType::Bool,
        "Date" => FType::Date,
        "DateTime" => FType::DateTime,
        "Email" => FType::Email,
        "Picklist" => {
            let values: Vec<&'static str> = m["valueSet"]["valueSetDefinition"]["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["fullName"].as_str())
                .map(|v| leak(v.to_string()))
                .collect();
            if values.is_empty() {
                return Err("Must specify a valueSet for a CustomField of type Picklist".into());
            }
            FType::Pick(Box::leak(values.into_boxed_slice()))
        }
        other => return Err(format!("Invalid type: '{other}'")),
    })
}

fn tooling_error(code: &str, message: &str) -> Response {
    sf_error(StatusCode::BAD_REQUEST, code, message, &[])
}

async fn tooling_create(State(s): State<Salesforce>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return tooling_error("JSON_PARSER_ERROR", "The request body is not valid JSON");
    };
    let full = body["FullName"].as_str().unwrap_or("");
    let m = &body["Metadata"];
    let Some((obj, name)) = full.split_once('.') else {
        return tooling_error(
            "FIELD_INTEGRITY_EXCEPTION",
            "FullName must be ObjectName.FieldName__c",
        );
    };
    let Some((table, _, _)) = sobject(obj) else {
        return tooling_error(
            "INVALID_TYPE",
            &format!("sObject type '{obj}' is not supported."),
        );
    };
    let dev = name.strip_suffix("__c").unwrap_or("");
    if dev.is_empty()
        || !dev.starts_with(|c: char| c.is_ascii_alphabetic())
        || dev.contains("__")
        || dev.ends_with('_')
        || !dev.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return tooling_error(
            "FIELD_INTEGRITY_EXCEPTION",
            "The Field Name must end with __c, begin with a letter, use only alphanumerics and underscores, and not contain two consecutive underscores",
        );
    }
    let Some(label) = m["label"].as_str().filter(|l| !l.trim().is_empty()) else {
        return tooling_error(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [Label]",
        );
    };
    let ty = match custom_type(m) {
        Ok(t) => t,
        Err(e) => return tooling_error("FIELD_INTEGRITY_EXCEPTION", &e),
    };
    let mut db = s.lock();
    if all_fields(&db.custom, table)
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case(name))
    {
        return tooling_error(
            "DUPLICATE_DEVELOPER_NAME",
            &format!("There is already a field named {dev} on {table}."),
        );
    }
    let id = new_id(&mut db, "00N");
    let field = custom(leak(name.to_string()), leak(label.to_string()), ty);
    db.custom.entry(table).or_default().push(CustomDef {
        id: id.clone(),
        field,
        metadata: m.clone(),
    });
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "success": true, "errors": [], "warnings": [], "infos": []})),
    )
        .into_response()
}

/// The one Tooling query shape the fake answers: `SELECT Id[, Metadata]
/// FROM CustomField WHERE TableEnumOrId = '…' AND DeveloperName = '…'`.
async fn tooling_query(
    State(s): State<Salesforce>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let text = q.get("q").map(String::as_str).unwrap_or("");
    let quoted = |key: &str| -> Option<String> {
        let i = text.find(key)? + key.len();
        let rest = text[i..].trim_start().strip_prefix('=')?.trim_start();
        let rest = rest.strip_prefix('\'')?;
        Some(rest[..rest.find('\'')?].to_string())
    };
    if !text.contains("FROM CustomField") {
        return tooling_error(
            "INVALID_TYPE",
            "sObject type is not supported by this fake's Tooling API.",
        );
    }
    let (Some(table), Some(dev)) = (quoted("TableEnumOrId"), quoted("DeveloperName")) else {
        return tooling_error(
            "MALFORMED_QUERY",
            "This fake answers CustomField queries by TableEnumOrId and DeveloperName",
        );
    };
    let db = s.lock();
    let base = s.base();
    let records: Vec<Value> = sobject(&table)
        .and_then(|(t, _, _)| db.custom.get(t))
        .into_iter()
        .flatten()
        .filter(|c| c.field.name.strip_suffix("__c") == Some(dev.as_str()))
        .map(|c| json!({
            "attributes": {"type": "CustomField", "url": format!("{base}/services/data/v60.0/tooling/sobjects/CustomField/{}", c.id)},
            "Id": c.id, "DeveloperName": dev, "TableEnumOrId": table, "Metadata": c.metadata,
        }))
        .collect();
    Json(json!({"size": records.len(), "totalSize": records.len(), "done": true, "entityTypeName": "CustomField", "records": records})).into_response()
}

async fn tooling_update(
    State(s): State<Salesforce>,
    Path((_v, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return tooling_error("JSON_PARSER_ERROR", "The request body is not valid JSON");
    };
    let m = &body["Metadata"];
    let ty = match custom_type(m) {
        Ok(t) => t,
        Err(e) => return tooling_error("FIELD_INTEGRITY_EXCEPTION", &e),
    };
    let mut db = s.lock();
    let Some(def) = db.custom.values_mut().flatten().find(|c| c.id == id) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    if let Some(label) = m["label"].as_str() {
        def.field.label = leak(label.to_string());
    }
    def.field.ty = ty;
    def.metadata = m.clone();
    StatusCode::NO_CONTENT.into_response()
}

async fn limits(State(s): State<Salesforce>) -> Response {
    let used = s.lock().api_used;
    Json(json!({"DailyApiRequests": {"Max": s.opts.daily_limit, "Remaining": s.opts.daily_limit.saturating_sub(used)}})).into_response()
}

/// The master record type (every org has it) and a second Opportunity
/// record type whose sales process uses only some stages.
pub const MASTER_RECORD_TYPE: &str = "012000000000000AAA";
pub const RENEWAL_RECORD_TYPE: &str = "0125e000000RenwAAA";

/// `GET …/ui-api/object-info/{T}/picklist-values/{recordTypeId}/{field}`.
async fn picklist_values(
    State(_s): State<Salesforce>,
    Path((_v, t, rt, field)): Path<(String, String, String, String)>,
) -> Response {
    let not_found = || {
        sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        )
    };
    if t != "Opportunity" || field != "StageName" {
        return not_found();
    }
    let stages: Vec<&str> = match rt.as_str() {
        MASTER_RECORD_TYPE => STAGES.to_vec(),
        RENEWAL_RECORD_TYPE => vec!["Negotiation/Review", "Closed Won", "Closed Lost"],
        _ => return not_found(),
    };
    let values: Vec<Value> = stages
        .iter()
        .map(|v| json!({"label": v, "value": v, "validFor": [], "attributes": null}))
        .collect();
    Json(json!({"controllerValues": {}, "defaultValue": null, "eTag": "fake", "url": format!("/services/data/v60.0/ui-api/object-info/{t}/picklist-values/{rt}/{field}"), "values": values})).into_response()
}

async fn describe(State(s): State<Salesforce>, Path((_v, t)): Path<(String, String)>) -> Response {
    let Some((name, prefix, _)) = sobject(&t) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    let fields: Vec<Value> = all_fields(&s.lock().custom, name)
        .iter()
        .map(|f| {
            let (ty, refs, picks): (&str, &[&str], &[&str]) = match f.ty {
                FType::Id => ("id", &[], &[]),
                FType::Str => ("string", &[], &[]),
                FType::Email => ("email", &[], &[]),
                FType::Num => ("double", &[], &[]),
                FType::Bool => ("boolean", &[], &[]),
                FType::Date => ("date", &[], &[]),
                FType::DateTime => ("datetime", &[], &[]),
                FType::Pick(p) => ("picklist", &[], p),
                FType::Ref(r) => ("reference", r, &[]),
            };
            json!({
                "name": f.name, "label": f.label, "type": ty, "custom": f.custom,
                "nillable": !f.required, "createable": f.writable, "updateable": f.writable,
                "referenceTo": refs,
                "picklistValues": picks.iter().map(|p| json!({"value": p, "label": p, "active": true, "defaultValue": false})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"name": name, "label": name, "keyPrefix": prefix, "custom": false, "createable": true, "updateable": true, "deletable": true, "queryable": true, "fields": fields})).into_response()
}

async fn read(
    State(s): State<Salesforce>,
    Path((version, t, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((name, _, _)) = sobject(&t) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    let db = s.lock();
    let known = all_fields(&db.custom, name);
    let mut fields: Vec<String> = known.iter().map(|f| f.name.to_string()).collect();
    if let Some(list) = q.get("fields") {
        fields.clear();
        for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match known.iter().find(|k| k.name.eq_ignore_ascii_case(f)) {
                Some(k) => fields.push(k.name.to_string()),
                None => {
                    return sf_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FIELD",
                        &format!("No such column '{f}' on entity '{name}'"),
                        &[],
                    );
                }
            }
        }
    }
    match db.rows[name].get(&id).filter(|r| !r.deleted) {
        Some(r) => Json(render(name, r, &fields, &version)).into_response(),
        None => sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        ),
    }
}

/// Checks a write body against the sObject's fields.
fn check_write(
    db: &Db,
    t: &str,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<BTreeMap<String, Value>, Response> {
    let fields = all_fields(&db.custom, t);
    let mut out = BTreeMap::new();
    for (k, v) in body {
        let Some(f) = fields.iter().find(|f| f.name.eq_ignore_ascii_case(k)) else {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &format!("No such column '{k}' on sobject of type {t}"),
                &[],
            ));
        };
        if !f.writable {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                &format!(
                    "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    f.name
                ),
                &[f.name],
            ));
        }
        let bad = |what: &str| {
            sf_error(
                StatusCode::BAD_REQUEST,
                "JSON_PARSER_ERROR",
                &format!(
                    "Cannot deserialize instance of {what} from {v} value for field {}",
                    f.name
                ),
                &[],
            )
        };
        let v = match (f.ty, v) {
            (_, Value::Null) => Value::Null,
            (FType::Num, Value::Number(_)) | (FType::Bool, Value::Bool(_)) => v.clone(),
            (FType::Num, Value::String(s)) => match s.parse::<f64>() {
                Ok(n) => json!(n),
                Err(_) => return Err(bad("double")),
            },
            (FType::Num, _) => return Err(bad("double")),
            (FType::Bool, _) => return Err(bad("boolean")),
            (FType::Date, Value::String(s)) => {
                match chrono::NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d") {
                    Ok(d) => json!(d.format("%Y-%m-%d").to_string()),
                    Err(_) => return Err(bad("date")),
                }
            }
            (FType::DateTime, Value::String(s)) => match sf_parse(s) {
                Some(ms) => json!(sf_time(ms)),
                None => return Err(bad("datetime")),
            },
            (FType::Date | FType::DateTime, _) => return Err(bad("date")),
            (_, Value::String(s)) => {
                if let FType::Email = f.ty
                    && !s.is_empty()
                    && !s.contains('@')
                {
                    return Err(sf_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_EMAIL_ADDRESS",
                        &format!("{}: invalid email address: {s}", f.label),
                        &[f.name],
                    ));
                }
                if let FType::Pick(opts) = f.ty
                    && !opts.contains(&s.as_str())
                {
                    return Err(sf_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        &format!("{}: bad value for restricted picklist field: {s}", f.label),
                        &[f.name],
                    ));
                }
                if let FType::Ref(targets) = f.ty {
                    let found = targets
                        .iter()
                        .any(|t| db.rows[t].get(s).is_some_and(|r| !r.deleted));
                    if !found {
                        return Err(sf_error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_CROSS_REFERENCE_KEY",
                            &format!("{} ID: id value of incorrect type: {s}", f.label),
                            &[f.name],
                        ));
                    }
                }
                v.clone()
            }
            _ => return Err(bad("string")),
        };
        out.insert(f.name.to_string(), v);
    }
    if creating {
        let missing: Vec<&str> = fields
            .iter()
            .filter(|f| {
                f.required
                    && f.writable
                    && out
                        .get(f.name)
                        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
            })
            .map(|f| f.name)
            .collect();
        if !missing.is_empty() {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "REQUIRED_FIELD_MISSING",
                &format!("Required fields are missing: [{}]", missing.join(", ")),
                &missing,
            ));
        }
    }
    Ok(out)
}

/// Fields Salesforce derives on save.
fn derive(t: &str, f: &mut BTreeMap<String, Value>) {
    match t {
        "Opportunity" => {
            let stage = f
                .get("StageName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            f.insert("IsWon".into(), json!(stage == "Closed Won"));
            f.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            if let (Some(a), Some(p)) = (
                f.get("Amount").and_then(Value::as_f64),
                f.get("Probability").and_then(Value::as_f64),
            ) {
                f.insert("ExpectedRevenue".into(), json!(a * p / 100.0));
            }
        }
        "Task" => {
            let done = f.get("Status").and_then(Value::as_str) == Some("Completed");
            f.insert("IsClosed".into(), json!(done));
        }
        _ => {}
    }
}

fn body_object(body: &axum::body::Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(sf_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "Unexpected character: was expecting a JSON object",
            &[],
        )),
    }
}

async fn create(
    State(s): State<Salesforce>,
    Path((_v, t)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some((name, prefix, _)) = sobject(&t) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    let body = match body_object(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut db = s.lock();
    let mut fields = match check_write(&db, name, &body, true) {
        Ok(f) => f,
        Err(r) => return r,
    };
    fields.retain(|_, v| !v.is_null());
    if let Some(u) = db.rows["User"].keys().next().cloned() {
        fields.entry("OwnerId".into()).or_insert(json!(u));
    }
    derive(name, &mut fields);
    let id = new_id(&mut db, prefix);
    let now = now_ms();
    db.rows.get_mut(name).map(|m| {
        m.insert(
            id.clone(),
            Row {
                id: id.clone(),
                created: now,
                modstamp: now,
                deleted: false,
                fields,
            },
        )
    });
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "success": true, "errors": []})),
    )
        .into_response()
}

async fn update(
    State(s): State<Salesforce>,
    Path((_v, t, id)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some((name, _, _)) = sobject(&t) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    let body = match body_object(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut db = s.lock();
    if db.rows[name].get(&id).is_none_or(|r| r.deleted) {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    }
    let changes = match check_write(&db, name, &body, false) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let now = now_ms();
    if let Some(r) = db.rows.get_mut(name).and_then(|m| m.get_mut(&id)) {
        for (k, v) in changes {
            if v.is_null() {
                r.fields.remove(&k);
            } else {
                r.fields.insert(k, v);
            }
        }
        derive(name, &mut r.fields);
        r.modstamp = now.max(r.modstamp + 1);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete(
    State(s): State<Salesforce>,
    Path((_v, t, id)): Path<(String, String, String)>,
) -> Response {
    let Some((name, _, _)) = sobject(&t) else {
        return sf_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
            &[],
        );
    };
    let mut db = s.lock();
    match db
        .rows
        .get_mut(name)
        .and_then(|m| m.get_mut(&id))
        .filter(|r| !r.deleted)
    {
        Some(r) => {
            r.deleted = true;
            r.modstamp = now_ms().max(r.modstamp + 1);
            StatusCode::NO_CONTENT.into_response()
        }
        None => sf_error(
            StatusCode::NOT_FOUND,
            "ENTITY_IS_DELETED",
            "entity is deleted",
            &[],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_soql(q: &str) -> Result<Soql, (String, String)> {
        super::parse_soql(q, &Custom::new())
    }

    #[test]
    fn parses_the_soql_the_connector_sends() {
        let q = parse_soql(
            "SELECT Id, LastName, SystemModstamp FROM Contact WHERE SystemModstamp >= 2024-01-01T00:00:00.000Z AND TaskSubtype != 'Call' ORDER BY SystemModstamp ASC, Id ASC LIMIT 10",
        );
        assert!(q.is_err(), "TaskSubtype is not a Contact field");
        let q = parse_soql("SELECT Id, Subject FROM Task WHERE SystemModstamp >= 2024-01-01T00:00:00.000Z AND TaskSubtype != 'Call' ORDER BY SystemModstamp ASC, Id ASC LIMIT 10").unwrap();
        assert_eq!(q.from, "Task");
        assert_eq!(q.conds.len(), 2);
        assert_eq!(q.order.len(), 2);
        assert_eq!(q.limit, Some(10));
        assert_eq!(
            parse_soql("SELECT Nope FROM Contact").unwrap_err().0,
            "INVALID_FIELD"
        );
        assert_eq!(
            parse_soql("SELECT Id FROM Nope").unwrap_err().0,
            "INVALID_TYPE"
        );
        assert_eq!(
            parse_soql("SELECT Id FROM Contact WHERE").unwrap_err().0,
            "MALFORMED_QUERY"
        );
        assert_eq!(
            parse_soql("SELECT Id FROM Contact WHERE Id = 'x")
                .unwrap_err()
                .0,
            "MALFORMED_QUERY"
        );
    }
}
