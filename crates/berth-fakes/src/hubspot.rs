//! A HubSpot CRM v3 fake: `/crm/v3/objects/{type}` list/get/create/update/
//! archive and search, `/crm/v3/owners`, `/crm/v3/properties/{type}`
//! (including custom property creation), `/crm/v3/pipelines/deals`, and
//! `/crm/v4/associations/{from}/{to}/batch/read`.
//!
//! Behaviour taken from the official specs and docs: every property value
//! is a string; lists page by `after` (the next id) with `limit` ≤ 100;
//! search pages by offset with `limit` ≤ 200 and refuses to page past
//! 10,000 results; `archived=true` lists tombstones; private-app tokens are
//! Bearer tokens; the ten-second burst limit answers 429 with
//! `policyName: TEN_SECONDLY_ROLLING` and the `X-HubSpot-RateLimit-*`
//! headers; search has its own per-second limit; errors are
//! `{status: "error", message, correlationId, category, errors: [{message,
//! code, context}]}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::{
    COMPANY, FIRST, Gen, INDUSTRY, LAST, Rolling, correlation_id, iso, now_ms, parse_time,
};

/// The object types the fake serves, with their singular names.
pub const TYPES: &[(&str, &str)] = &[
    ("contacts", "contact"),
    ("companies", "company"),
    ("deals", "deal"),
    ("notes", "note"),
    ("tasks", "task"),
    ("meetings", "meeting"),
    ("calls", "call"),
    ("emails", "email"),
    ("leads", "lead"),
];

/// HubSpot-defined association type ids (from HubSpot's association type
/// reference) for the pairs the fake knows.
pub fn association_type_id(from: &str, to: &str) -> Option<u32> {
    Some(match (from, to) {
        ("contacts", "companies") => 279,
        ("companies", "contacts") => 280,
        // A lead's primary contact and company.
        ("leads", "contacts") => 578,
        ("contacts", "leads") => 579,
        ("leads", "companies") => 610,
        ("companies", "leads") => 611,
        ("deals", "contacts") => 3,
        ("contacts", "deals") => 4,
        ("deals", "companies") => 341,
        ("companies", "deals") => 342,
        ("contacts", "notes") => 201,
        ("notes", "contacts") => 202,
        ("notes", "companies") => 190,
        ("companies", "notes") => 189,
        ("notes", "deals") => 214,
        ("deals", "notes") => 213,
        ("tasks", "contacts") => 204,
        ("contacts", "tasks") => 203,
        ("tasks", "companies") => 192,
        ("companies", "tasks") => 191,
        ("tasks", "deals") => 216,
        ("deals", "tasks") => 215,
        ("meetings", "contacts") => 200,
        ("contacts", "meetings") => 199,
        ("meetings", "companies") => 188,
        ("companies", "meetings") => 187,
        ("meetings", "deals") => 212,
        ("deals", "meetings") => 211,
        ("calls", "contacts") => 194,
        ("contacts", "calls") => 193,
        ("calls", "companies") => 182,
        ("companies", "calls") => 181,
        ("calls", "deals") => 206,
        ("deals", "calls") => 205,
        ("emails", "contacts") => 198,
        ("contacts", "emails") => 197,
        ("emails", "companies") => 186,
        ("companies", "emails") => 185,
        ("emails", "deals") => 210,
        ("deals", "emails") => 209,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PType {
    Str,
    Number,
    DateTime,
    Enum(&'static [&'static str]),
    Bool,
}

#[derive(Debug, Clone)]
struct Prop {
    name: String,
    label: String,
    ptype: PType,
    read_only: bool,
    custom: bool,
}

const DEAL_STAGES: &[&str] = &[
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
];

fn builtin_props(t: &str) -> Vec<(&'static str, &'static str, PType)> {
    use PType::*;
    let mut v: Vec<(&str, &str, PType)> = match t {
        "contacts" => vec![
            ("email", "Email", Str),
            ("firstname", "First Name", Str),
            ("lastname", "Last Name", Str),
            ("jobtitle", "Job Title", Str),
            ("phone", "Phone Number", Str),
            ("mobilephone", "Mobile Phone Number", Str),
            ("company", "Company Name", Str),
            (
                "lifecyclestage",
                "Lifecycle Stage",
                Enum(&["subscriber", "lead", "opportunity", "customer"]),
            ),
        ],
        "companies" => vec![
            ("name", "Name", Str),
            ("domain", "Company Domain Name", Str),
            ("description", "Description", Str),
            ("industry", "Industry", Str),
            ("annualrevenue", "Annual Revenue", Number),
            ("numberofemployees", "Number of Employees", Number),
            ("phone", "Phone Number", Str),
            ("address", "Street Address", Str),
            ("city", "City", Str),
            ("state", "State/Region", Str),
            ("zip", "Postal Code", Str),
            ("country", "Country/Region", Str),
        ],
        "deals" => vec![
            ("dealname", "Deal Name", Str),
            ("dealstage", "Deal Stage", Enum(DEAL_STAGES)),
            ("pipeline", "Pipeline", Enum(&["default", "partner"])),
            ("amount", "Amount", Number),
            ("closedate", "Close Date", DateTime),
            ("deal_currency_code", "Currency", Str),
            (
                "hs_deal_stage_probability",
                "Deal Stage Probability",
                Number,
            ),
            ("hs_is_closed", "Is Deal Closed?", Bool),
            ("hs_is_closed_won", "Is Closed Won", Bool),
        ],
        "notes" => vec![("hs_note_body", "Note Body", Str)],
        "tasks" => vec![
            ("hs_task_subject", "Task Title", Str),
            ("hs_task_body", "Task Notes", Str),
            (
                "hs_task_status",
                "Task Status",
                Enum(&[
                    "NOT_STARTED",
                    "IN_PROGRESS",
                    "WAITING",
                    "COMPLETED",
                    "DEFERRED",
                ]),
            ),
            (
                "hs_task_priority",
                "Priority",
                Enum(&["NONE", "LOW", "MEDIUM", "HIGH"]),
            ),
            (
                "hs_task_type",
                "Task Type",
                Enum(&["TODO", "CALL", "EMAIL", "LINKED_IN", "MEETING"]),
            ),
        ],
        "meetings" => vec![
            ("hs_meeting_title", "Meeting Name", Str),
            ("hs_meeting_body", "Meeting Description", Str),
            ("hs_meeting_location", "Location", Str),
            ("hs_meeting_start_time", "Start Time", DateTime),
            ("hs_meeting_end_time", "End Time", DateTime),
            ("hs_meeting_outcome", "Meeting Outcome", Str),
        ],
        "calls" => vec![
            ("hs_call_title", "Call Title", Str),
            ("hs_call_body", "Call Notes", Str),
            (
                "hs_call_direction",
                "Call Direction",
                Enum(&["INBOUND", "OUTBOUND"]),
            ),
            ("hs_call_disposition", "Call Outcome", Str),
            ("hs_call_duration", "Call Duration", Number),
            ("hs_call_from_number", "From Number", Str),
            ("hs_call_to_number", "To Number", Str),
            ("hs_call_recording_url", "Recording URL", Str),
        ],
        "emails" => vec![
            ("hs_email_subject", "Email Subject", Str),
            ("hs_email_text", "Email Body", Str),
            ("hs_email_html", "Email HTML Body", Str),
            (
                "hs_email_direction",
                "Email Direction",
                Enum(&["EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"]),
            ),
            (
                "hs_email_status",
                "Email Send Status",
                Enum(&["BOUNCED", "FAILED", "SCHEDULED", "SENDING", "SENT"]),
            ),
            ("hs_email_headers", "Email Headers", Str),
            ("hs_attachment_ids", "Attachment IDs", Str),
        ],
        "leads" => vec![
            ("hs_lead_name", "Lead name", Str),
            (
                "hs_lead_type",
                "Lead type",
                Enum(&["NEW_BUSINESS", "UPSELL", "RE_ATTEMPTING"]),
            ),
            (
                "hs_lead_label",
                "Lead label",
                Enum(&["COLD", "WARM", "HOT"]),
            ),
            ("hs_pipeline_stage", "Lead stage", Str),
        ],
        _ => vec![],
    };
    v.push(("hubspot_owner_id", "Owner", Str));
    if !matches!(t, "contacts" | "companies" | "deals" | "leads") {
        v.push(("hs_timestamp", "Activity Date", DateTime));
    }
    v
}

/// The property holding an object's last-modified time.
pub fn modified_property(t: &str) -> &'static str {
    if t == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

fn schema(t: &str) -> Vec<Prop> {
    let mut out: Vec<Prop> = builtin_props(t)
        .into_iter()
        .map(|(n, l, p)| Prop {
            name: n.into(),
            label: l.into(),
            ptype: p,
            read_only: false,
            custom: false,
        })
        .collect();
    for (n, l) in [
        ("hs_object_id", "Record ID"),
        ("createdate", "Create Date"),
        (modified_property(t), "Last Modified Date"),
    ] {
        out.push(Prop {
            name: n.into(),
            label: l.into(),
            ptype: if n == "hs_object_id" {
                PType::Number
            } else {
                PType::DateTime
            },
            read_only: true,
            custom: false,
        });
    }
    out
}

#[derive(Debug, Clone)]
struct Rec {
    id: u64,
    created: i64,
    modified: i64,
    archived_at: Option<i64>,
    props: BTreeMap<String, String>,
}

type Key = (&'static str, u64);

struct Db {
    next_id: u64,
    objects: HashMap<&'static str, BTreeMap<u64, Rec>>,
    assoc: BTreeMap<Key, BTreeSet<Key>>,
    schemas: HashMap<&'static str, Vec<Prop>>,
    owners: Vec<Value>,
    burst: HashMap<String, Rolling>,
    search: HashMap<String, Rolling>,
    calls: u64,
    /// `GET /crm/v3/objects/{type}` pages served, per type.
    list_pages: HashMap<&'static str, u64>,
    /// Moves on every change to records or associations.
    version: u64,
    /// The last search's (version, query, sorted hit ids).
    search_cache: Option<(u64, String, std::sync::Arc<Vec<u64>>)>,
    /// Lists (segments) of the v3 Lists API.
    lists: Vec<HsList>,
}

/// A list: its definition and its members (record id, when added).
struct HsList {
    id: u64,
    name: String,
    /// `0-1` contacts, `0-2` companies.
    object_type_id: &'static str,
    processing_type: &'static str,
    created: i64,
    updated: i64,
    members: Vec<(u64, i64)>,
}

/// How big and how strict the fake is.
#[derive(Debug, Clone)]
pub struct Options {
    /// The private-app tokens accepted as Bearer tokens.
    pub tokens: Vec<String>,
    pub owners: usize,
    pub contacts: usize,
    pub companies: usize,
    pub deals: usize,
    /// Records of each engagement type (notes, tasks, meetings, calls, emails).
    pub engagements: usize,
    /// Leads, each with a primary contact and most with its company.
    pub leads: usize,
    /// Associate every contact with the first company (to page past
    /// HubSpot's inline association limit).
    pub crowded_company: bool,
    pub seed: u64,
    /// Records were created over this many days before now.
    pub history_days: i64,
    /// Requests per rolling 10 s per token (0 = unlimited). Private apps
    /// on Pro/Enterprise get 190.
    pub burst_per_10s: usize,
    /// Search requests per second per token (0 = unlimited).
    pub search_per_sec: usize,
    /// Object types (`leads`, `companies`…) whose scopes the token was not
    /// granted: every `/crm/v3/objects/{type}` call answers HubSpot's 403
    /// `MISSING_SCOPES` (a portal without the Leads object answers so too).
    pub missing_scopes: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tokens: vec!["pat-na1-test".into()],
            owners: 3,
            contacts: 40,
            companies: 12,
            deals: 15,
            engagements: 6,
            leads: 4,
            crowded_company: false,
            seed: 7,
            history_days: 120,
            burst_per_10s: 190,
            search_per_sec: 5,
            missing_scopes: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct HubSpot {
    db: Arc<Mutex<Db>>,
    opts: Arc<Options>,
    delay: Arc<Mutex<Duration>>,
}

fn type_of(t: &str) -> Option<&'static str> {
    TYPES
        .iter()
        .find(|(p, s)| *p == t || *s == t)
        .map(|(p, _)| *p)
}

fn singular(t: &str) -> &'static str {
    TYPES
        .iter()
        .find(|(p, _)| *p == t)
        .map(|(_, s)| *s)
        .unwrap_or("object")
}

impl HubSpot {
    pub fn new(opts: Options) -> Self {
        let mut db = Db {
            next_id: 1000,
            objects: TYPES.iter().map(|(t, _)| (*t, BTreeMap::new())).collect(),
            assoc: BTreeMap::new(),
            schemas: TYPES.iter().map(|(t, _)| (*t, schema(t))).collect(),
            owners: Vec::new(),
            burst: HashMap::new(),
            search: HashMap::new(),
            calls: 0,
            list_pages: HashMap::new(),
            version: 0,
            search_cache: None,
            lists: Vec::new(),
        };
        generate(&mut db, &opts);
        Self {
            db: Arc::new(Mutex::new(db)),
            opts: Arc::new(opts),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slows every list and search page by `d` (to catch a sync mid-run).
    pub fn set_page_delay(&self, d: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Requests served so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// List pages (`GET /crm/v3/objects/{t}`) served for `t` so far.
    pub fn list_pages(&self, t: &str) -> u64 {
        let db = self.lock();
        type_of(t)
            .and_then(|t| db.list_pages.get(t).copied())
            .unwrap_or(0)
    }

    /// Ids of the live (not archived) records of `t`.
    pub fn live_ids(&self, t: &str) -> Vec<String> {
        let db = self.lock();
        let Some(t) = type_of(t) else { return vec![] };
        db.objects[t]
            .values()
            .filter(|r| r.archived_at.is_none())
            .map(|r| r.id.to_string())
            .collect()
    }

    /// The lists as (id, name, objectTypeId, member ids).
    pub fn lists(&self) -> Vec<(String, String, String, Vec<String>)> {
        self.lock()
            .lists
            .iter()
            .map(|l| {
                (
                    l.id.to_string(),
                    l.name.clone(),
                    l.object_type_id.to_string(),
                    l.members.iter().map(|(m, _)| m.to_string()).collect(),
                )
            })
            .collect()
    }

    /// The ids of `to` records associated with record `id` of `t`.
    pub fn associated(&self, t: &str, id: &str, to: &str) -> Vec<String> {
        let db = self.lock();
        let (Some(t), Some(to), Ok(id)) = (type_of(t), type_of(to), id.parse::<u64>()) else {
            return Vec::new();
        };
        let mut out: Vec<String> = db
            .assoc
            .get(&(t, id))
            .into_iter()
            .flatten()
            .filter(|(tt, _)| *tt == to)
            .map(|(_, i)| i.to_string())
            .collect();
        out.sort();
        out
    }

    /// A property of a record, as the provider holds it.
    pub fn property(&self, t: &str, id: &str, prop: &str) -> Option<String> {
        let db = self.lock();
        let t = type_of(t)?;
        let id: u64 = id.parse().ok()?;
        db.objects[t].get(&id)?.props.get(prop).cloned()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/crm/v3/owners", get(owners))
            .route("/crm/v3/owners/", get(owners))
            .route("/crm/v3/owners/{id}", get(owner))
            .route(
                "/crm/v4/objects/{t}/{id}/associations/default/{to}/{to_id}",
                axum::routing::put(associate),
            )
            .route(
                "/crm/v4/objects/{t}/{id}/associations/{to}/{to_id}",
                axum::routing::delete(dissociate),
            )
            .route(
                "/crm/v4/objects/{t}/{id}/associations/{to}",
                get(assoc_list),
            )
            .route("/crm/v3/objects/{t}/batch/read", post(batch_read))
            .route("/crm/v3/lists/search", post(lists_search))
            .route("/crm/v3/lists/{id}", get(list_get))
            .route("/crm/v3/lists/{id}/memberships", get(list_memberships))
            .route(
                "/crm/v3/lists/{id}/memberships/add",
                axum::routing::put(list_add),
            )
            .route("/crm/v3/objects/{t}", get(list).post(create))
            .route("/crm/v3/objects/{t}/search", post(search))
            .route("/crm/v3/objects/{t}/gdpr-delete", post(gdpr_delete))
            .route(
                "/crm/v3/objects/{t}/{id}",
                get(read).patch(update).delete(archive),
            )
            .route(
                "/crm/v3/properties/{t}",
                get(properties).post(create_property),
            )
            .route(
                "/crm/v3/properties/{t}/{name}",
                axum::routing::patch(update_property),
            )
            .route("/account-info/v3/details", get(account_details))
            .route("/crm/v3/pipelines/{t}", get(pipelines))
            .route("/crm/v3/pipelines/{t}/{id}", get(pipeline))
            .route(
                "/crm/v4/associations/{from}/{to}/batch/read",
                post(assoc_batch_read),
            )
            .fallback(|| async {
                error(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    "resource not found",
                    vec![],
                )
            })
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }
}

fn generate(db: &mut Db, o: &Options) {
    let mut g = Gen::new(o.seed);
    let now = now_ms();
    let day = 86_400_000i64;
    let span = o.history_days.max(1) * day;
    let times = |g: &mut Gen| {
        let created = now - 60_000 - g.below(span as u64) as i64;
        let modified = created + g.below((now - 60_000 - created).max(1) as u64) as i64;
        (created, modified)
    };
    for i in 0..o.owners {
        let (c, m) = times(&mut g);
        let (f, l) = (g.pick(FIRST), g.pick(LAST));
        db.owners.push(json!({
            "id": (100_001 + i).to_string(),
            "email": format!("{}.{}{}@example.com", f.to_lowercase(), l.to_lowercase(), i),
            "firstName": f, "lastName": l, "userId": 9_000_001 + i,
            "createdAt": iso(c), "updatedAt": iso(m), "archived": false, "teams": [],
        }));
    }
    let owner = |g: &mut Gen| {
        if o.owners == 0 {
            String::new()
        } else {
            (100_001 + g.below(o.owners as u64)).to_string()
        }
    };
    let mut ids: HashMap<&str, Vec<u64>> = HashMap::new();
    let add = |db: &mut Db, t: &'static str, g: &mut Gen, props: Vec<(&str, String)>| {
        let (c, m) = times(g);
        let id = db.next_id;
        db.next_id += 1;
        let mut p: BTreeMap<String, String> = props
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let ow = owner(g);
        if !ow.is_empty() {
            p.insert("hubspot_owner_id".into(), ow);
        }
        let rec = Rec {
            id,
            created: c,
            modified: m,
            archived_at: None,
            props: p,
        };
        db.objects.get_mut(t).map(|m| m.insert(id, rec));
        id
    };
    for i in 0..o.companies {
        let n = g.pick(COMPANY);
        let props = vec![
            ("name", format!("{n} {i}")),
            ("domain", format!("{}{i}.example.com", n.to_lowercase())),
            ("industry", g.pick(INDUSTRY).to_string()),
            ("numberofemployees", (10 + g.below(5000)).to_string()),
            ("annualrevenue", (100_000 + g.below(10_000_000)).to_string()),
            ("city", "Lisbon".into()),
            ("country", "Portugal".into()),
        ];
        let id = add(db, "companies", &mut g, props);
        ids.entry("companies").or_default().push(id);
    }
    for i in 0..o.contacts {
        let (f, l) = (g.pick(FIRST), g.pick(LAST));
        let props = vec![
            ("firstname", f.to_string()),
            ("lastname", l.to_string()),
            (
                "email",
                format!("{}.{}{i}@example.org", f.to_lowercase(), l.to_lowercase()),
            ),
            ("jobtitle", "Engineer".into()),
            ("phone", format!("+1555{:07}", g.below(10_000_000))),
        ];
        let id = add(db, "contacts", &mut g, props);
        ids.entry("contacts").or_default().push(id);
        if let Some(cs) = ids.get("companies").filter(|c| !c.is_empty()) {
            let c = cs[g.below(cs.len() as u64) as usize];
            link(db, ("contacts", id), ("companies", c));
        }
    }
    for i in 0..o.deals {
        let stage = g.pick(DEAL_STAGES).to_string();
        let props = vec![
            ("dealname", format!("Deal {i}")),
            ("dealstage", stage.clone()),
            ("pipeline", "default".into()),
            ("amount", (1000 + g.below(90_000)).to_string()),
            ("closedate", iso(now + g.below(90) as i64 * day)),
            ("deal_currency_code", "USD".into()),
            ("hs_is_closed", stage.starts_with("closed").to_string()),
            ("hs_is_closed_won", (stage == "closedwon").to_string()),
        ];
        let id = add(db, "deals", &mut g, props);
        ids.entry("deals").or_default().push(id);
        if let Some(cs) = ids.get("companies").filter(|c| !c.is_empty()) {
            let c = cs[g.below(cs.len() as u64) as usize];
            link(db, ("deals", id), ("companies", c));
        }
        if let Some(cs) = ids.get("contacts").filter(|c| !c.is_empty()) {
            for _ in 0..=g.below(2) {
                let c = cs[g.below(cs.len() as u64) as usize];
                link(db, ("deals", id), ("contacts", c));
            }
        }
    }
    for t in ["notes", "tasks", "meetings", "calls", "emails"] {
        for i in 0..o.engagements {
            let ts = iso(now - g.below(span as u64) as i64);
            let mut props = vec![("hs_timestamp", ts.clone())];
            match t {
                "notes" => props.push(("hs_note_body", format!("<p>Note {i}</p>"))),
                "tasks" => {
                    props.push(("hs_task_subject", format!("Follow up {i}")));
                    props.push((
                        "hs_task_status",
                        g.pick(&["NOT_STARTED", "COMPLETED"]).into(),
                    ));
                    props.push(("hs_task_priority", g.pick(&["LOW", "HIGH"]).into()));
                    props.push(("hs_task_type", "TODO".into()));
                }
                "meetings" => {
                    props.push(("hs_meeting_title", format!("Meeting {i}")));
                    props.push(("hs_meeting_start_time", ts.clone()));
                    props.push(("hs_meeting_end_time", ts.clone()));
                    props.push(("hs_meeting_location", "Zoom".into()));
                }
                "calls" => {
                    props.push(("hs_call_title", format!("Call {i}")));
                    props.push(("hs_call_direction", g.pick(&["INBOUND", "OUTBOUND"]).into()));
                    props.push(("hs_call_duration", (g.below(600_000)).to_string()));
                }
                _ => {
                    props.push(("hs_email_subject", format!("Hello {i}")));
                    props.push(("hs_email_text", "Hi there".into()));
                    props.push(("hs_email_direction", "EMAIL".into()));
                    props.push(("hs_email_status", "SENT".into()));
                    props.push((
                        "hs_email_headers",
                        json!({"from": {"email": "rep@example.com"}, "to": [{"email": "buyer@example.org"}], "cc": [], "bcc": []}).to_string(),
                    ));
                }
            }
            let id = add(db, t, &mut g, props);
            for to in ["contacts", "deals"] {
                if let Some(cs) = ids.get(to).filter(|c| !c.is_empty()) {
                    let c = cs[g.below(cs.len() as u64) as usize];
                    link(db, (t, id), (to, c));
                }
            }
        }
    }
    if o.crowded_company
        && let Some(first) = db.objects["companies"].keys().next().copied()
    {
        let contacts: Vec<u64> = db.objects["contacts"].keys().copied().collect();
        for c in contacts {
            link(db, ("contacts", c), ("companies", first));
        }
    }
    // Leads come after the rest so earlier records stay as they were.
    let contacts: Vec<u64> = db.objects["contacts"].keys().copied().collect();
    for i in 0..o.leads {
        if contacts.is_empty() {
            break;
        }
        let c = contacts[g.below(contacts.len() as u64) as usize];
        let name = {
            let r = &db.objects["contacts"][&c];
            format!(
                "{} {}",
                r.props.get("firstname").cloned().unwrap_or_default(),
                r.props.get("lastname").cloned().unwrap_or_default()
            )
        };
        let label = g.pick(&["COLD", "WARM", "HOT"]).to_string();
        let id = add(
            db,
            "leads",
            &mut g,
            vec![
                ("hs_lead_name", name),
                ("hs_lead_type", "NEW_BUSINESS".into()),
                ("hs_lead_label", label),
            ],
        );
        link(db, ("leads", id), ("contacts", c));
        let company = db
            .assoc
            .get(&("contacts", c))
            .and_then(|s| s.iter().find(|(t, _)| *t == "companies").copied());
        if let Some(co) = company.filter(|_| i % 3 != 2) {
            link(db, ("leads", id), co);
        }
    }
    generate_lists(db, &mut g, now);
}

/// Lists come after every record, so the records are the same as before
/// lists existed: two of contacts, one of companies.
fn generate_lists(db: &mut Db, g: &mut Gen, now: i64) {
    let contacts: Vec<u64> = db.objects["contacts"].keys().copied().collect();
    let companies: Vec<u64> = db.objects["companies"].keys().copied().collect();
    for (i, (name, otype, ptype)) in [
        ("Newsletter", "0-1", "MANUAL"),
        ("Active buyers", "0-1", "DYNAMIC"),
        ("Target accounts", "0-2", "MANUAL"),
    ]
    .into_iter()
    .enumerate()
    {
        let pool = if otype == "0-1" {
            &contacts
        } else {
            &companies
        };
        let mut members: Vec<(u64, i64)> = Vec::new();
        for _ in 0..(3 + i) {
            if pool.is_empty() {
                break;
            }
            let id = pool[g.below(pool.len() as u64) as usize];
            if !members.iter().any(|(m, _)| *m == id) {
                members.push((id, now - 3_600_000));
            }
        }
        db.next_id += 1;
        db.lists.push(HsList {
            id: db.next_id,
            name: name.into(),
            object_type_id: otype,
            processing_type: ptype,
            created: now - 86_400_000,
            updated: now - 86_400_000,
            members,
        });
    }
}

fn list_json(l: &HsList) -> Value {
    json!({"listId": l.id.to_string(), "listVersion": 1, "name": l.name,
        "objectTypeId": l.object_type_id, "processingStatus": "COMPLETE",
        "processingType": l.processing_type, "createdAt": iso(l.created),
        "updatedAt": iso(l.updated), "additionalProperties": {}})
}

/// `POST /crm/v3/lists/search {query, offset, count, ...}`.
async fn lists_search(State(h): State<HubSpot>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON");
    };
    let query = body["query"].as_str().unwrap_or("").to_lowercase();
    let offset = body["offset"].as_u64().unwrap_or(0) as usize;
    let count = body["count"].as_u64().unwrap_or(20).clamp(1, 500) as usize;
    let db = h.lock();
    let hits: Vec<&HsList> = db
        .lists
        .iter()
        .filter(|l| l.name.to_lowercase().contains(&query))
        .collect();
    let page: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(count)
        .map(|l| list_json(l))
        .collect();
    let next = offset + page.len();
    Json(json!({"lists": page, "offset": next, "hasMore": next < hits.len(), "total": hits.len()}))
        .into_response()
}

fn list_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        &format!("List {id} does not exist."),
        vec![],
    )
}

async fn list_get(State(h): State<HubSpot>, Path(id): Path<String>) -> Response {
    let db = h.lock();
    match db.lists.iter().find(|l| l.id.to_string() == id) {
        Some(l) => Json(json!({"list": list_json(l)})).into_response(),
        None => list_not_found(&id),
    }
}

/// `GET /crm/v3/lists/{id}/memberships?after&limit`, in join order.
async fn list_memberships(
    State(h): State<HubSpot>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .clamp(1, 250);
    let db = h.lock();
    let Some(l) = db.lists.iter().find(|l| l.id.to_string() == id) else {
        return list_not_found(&id);
    };
    let results: Vec<Value> = l
        .members
        .iter()
        .skip(after)
        .take(limit)
        .map(|(m, at)| json!({"recordId": m.to_string(), "membershipTimestamp": iso(*at)}))
        .collect();
    let mut out = json!({"results": results});
    if after + limit < l.members.len() {
        out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    Json(out).into_response()
}

/// `PUT /crm/v3/lists/{id}/memberships/add ["<record id>", ...]` (manual
/// lists only).
async fn list_add(
    State(h): State<HubSpot>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(ids) = serde_json::from_slice::<Vec<String>>(&body) else {
        return bad_body("Invalid input JSON: an array of record ids");
    };
    let now = now_ms();
    let mut db = h.lock();
    db.version += 1;
    let Some(pos) = db.lists.iter().position(|l| l.id.to_string() == id) else {
        return list_not_found(&id);
    };
    let t = if db.lists[pos].object_type_id == "0-1" {
        "contacts"
    } else {
        "companies"
    };
    let (mut added, mut missing) = (Vec::new(), Vec::new());
    for rid in ids {
        let live = rid.parse::<u64>().ok().filter(|n| {
            db.objects[t]
                .get(n)
                .is_some_and(|r| r.archived_at.is_none())
        });
        match live {
            Some(n) => {
                let l = &mut db.lists[pos];
                if !l.members.iter().any(|(m, _)| *m == n) {
                    l.members.push((n, now));
                }
                added.push(rid);
            }
            None => missing.push(rid),
        }
    }
    Json(json!({"recordIdsAdded": added, "recordsIdsMissing": missing})).into_response()
}

fn link(db: &mut Db, a: Key, b: Key) {
    db.assoc.entry(a).or_default().insert(b);
    db.assoc.entry(b).or_default().insert(a);
}

fn error(status: StatusCode, category: &str, message: &str, errors: Vec<Value>) -> Response {
    let mut body = json!({
        "status": "error", "message": message,
        "correlationId": correlation_id(), "category": category,
    });
    if !errors.is_empty() {
        body["errors"] = Value::Array(errors);
    }
    (status, Json(body)).into_response()
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        "Object not found.  objectId are usually numeric.",
        vec![],
    )
}

fn bad_type(t: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        &format!("Unable to infer object type from: {t}"),
        vec![],
    )
}

/// Authentication, the ten-second burst limit and its headers.
async fn guard(State(h): State<HubSpot>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = token.filter(|t| h.opts.tokens.contains(t)) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            vec![],
        );
    };
    if let Some(t) = req
        .uri()
        .path()
        .strip_prefix("/crm/v3/objects/")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .and_then(type_of)
        && h.opts.missing_scopes.iter().any(|m| m == t)
    {
        return error(
            StatusCode::FORBIDDEN,
            "MISSING_SCOPES",
            "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
            vec![json!({
                "message": "One or more of the following scopes are required.",
                "context": {"requiredGranularScopes": [format!("crm.objects.{t}.read")]},
            })],
        );
    }
    let limit = h.opts.burst_per_10s;
    let remaining = {
        let mut db = h.lock();
        db.calls += 1;
        db.burst
            .entry(token)
            .or_insert_with(|| Rolling::new(limit, Duration::from_secs(10)))
            .hit()
    };
    let Ok(remaining) = remaining else {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": correlation_id(),
                "policyName": "TEN_SECONDLY_ROLLING",
            })),
        )
            .into_response();
        rate_headers(r.headers_mut(), limit, 0);
        return r;
    };
    let mut r = next.run(req).await;
    if limit > 0 {
        rate_headers(r.headers_mut(), limit, remaining);
    }
    r
}

fn rate_headers(h: &mut HeaderMap, max: usize, remaining: usize) {
    for (k, v) in [
        ("x-hubspot-ratelimit-max", max.to_string()),
        ("x-hubspot-ratelimit-remaining", remaining.to_string()),
        ("x-hubspot-ratelimit-interval-milliseconds", "10000".into()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
}

async fn page_delay(h: &HubSpot) {
    let d = *h.delay.lock().unwrap_or_else(|e| e.into_inner());
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn owners(State(h): State<HubSpot>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 500",
                vec![],
            );
        }
    };
    let start: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let db = h.lock();
    let results: Vec<Value> = db.owners.iter().skip(start).take(limit).cloned().collect();
    let mut body = json!({"results": results});
    if start + limit < db.owners.len() {
        let next = (start + limit).to_string();
        body["paging"] = json!({"next": {"after": next, "link": format!("?after={next}")}});
    }
    Json(body).into_response()
}

fn default_props(t: &str) -> &'static [&'static str] {
    match t {
        "contacts" => &["firstname", "lastname", "email"],
        "companies" => &["name", "domain"],
        "deals" => &["dealname", "amount", "closedate", "dealstage", "pipeline"],
        "leads" => &["hs_lead_name"],
        _ => &["hs_timestamp"],
    }
}

fn requested(q: &HashMap<String, String>, key: &str) -> Option<Vec<String>> {
    q.get(key).map(|p| {
        p.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

fn render(db: &Db, t: &'static str, r: &Rec, props: Option<&[String]>, assoc: &[String]) -> Value {
    let mut p = Map::new();
    let want: Vec<String> = match props {
        Some(ps) => ps.to_vec(),
        None => default_props(t).iter().map(|s| s.to_string()).collect(),
    };
    let schema = &db.schemas[t];
    for name in want {
        if schema.iter().any(|s| s.name == name) {
            p.insert(
                name.clone(),
                r.props.get(&name).map_or(Value::Null, |v| json!(v)),
            );
        }
    }
    p.insert("hs_object_id".into(), json!(r.id.to_string()));
    p.insert("createdate".into(), json!(iso(r.created)));
    p.insert(modified_property(t).into(), json!(iso(r.modified)));
    let mut out = json!({
        "id": r.id.to_string(), "properties": p,
        "createdAt": iso(r.created), "updatedAt": iso(r.modified),
        "archived": r.archived_at.is_some(),
    });
    if let Some(a) = r.archived_at {
        out["archivedAt"] = json!(iso(a));
    }
    let mut assocs = Map::new();
    for to in assoc {
        let Some(to_t) = type_of(to) else { continue };
        let linked: Vec<Value> = db
            .assoc
            .get(&(t, r.id))
            .into_iter()
            .flatten()
            .filter(|(tt, id)| {
                *tt == to_t
                    && db.objects[to_t]
                        .get(id)
                        .is_some_and(|x| x.archived_at.is_none())
            })
            .map(|(_, id)| {
                json!({"id": id.to_string(), "type": format!("{}_to_{}", singular(t), singular(to_t))})
            })
            .collect();
        // As at HubSpot, a record's inline associations stop at the first
        // INLINE_ASSOCIATIONS; the rest are paged by the v4 API.
        if !linked.is_empty() {
            let more = linked.len() > INLINE_ASSOCIATIONS;
            let first: Vec<Value> = linked.into_iter().take(INLINE_ASSOCIATIONS).collect();
            let mut entry = json!({"results": first});
            if more {
                let after = INLINE_ASSOCIATIONS.to_string();
                entry["paging"] = json!({"next": {"after": after, "link": format!(
                    "https://api.hubapi.com/crm/v4/objects/{t}/{}/associations/{to_t}?after={after}", r.id)}});
            }
            assocs.insert(to_t.into(), entry);
        }
    }
    if !assocs.is_empty() {
        out["associations"] = Value::Object(assocs);
    }
    out
}

async fn list(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 100",
                vec![],
            );
        }
    };
    let after: u64 = match q.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "after must be a valid paging cursor",
                vec![],
            );
        }
    };
    page_delay(&h).await;
    let archived = q.get("archived").is_some_and(|a| a == "true");
    let props = requested(&q, "properties");
    let assoc = requested(&q, "associations").unwrap_or_default();
    let mut db = h.lock();
    *db.list_pages.entry(t).or_default() += 1;
    let db = db;
    let mut it = db.objects[t]
        .range(after..)
        .filter(|(_, r)| r.archived_at.is_some() == archived);
    let results: Vec<Value> = it
        .by_ref()
        .take(limit)
        .map(|(_, r)| render(&db, t, r, props.as_deref(), &assoc))
        .collect();
    let mut body = json!({"results": results});
    if let Some((next, _)) = it.next() {
        body["paging"] = json!({"next": {"after": next.to_string(),
            "link": format!("https://api.hubapi.com/crm/v3/objects/{t}?after={next}")}});
    }
    Json(body).into_response()
}

/// `POST /crm/v3/objects/{t}/batch/read {properties, inputs: [{id}]}`:
/// the live records among the ids, in input order.
async fn batch_read(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON");
    };
    let Some(inputs) = body["inputs"].as_array() else {
        return bad_body("inputs is required");
    };
    if inputs.len() > 100 {
        return bad_body("Too many inputs: at most 100");
    }
    let props: Option<Vec<String>> = body["properties"].as_array().map(|ps| {
        ps.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    let started = iso(now_ms());
    let db = h.lock();
    let results: Vec<Value> = inputs
        .iter()
        .filter_map(|i| i["id"].as_str()?.parse::<u64>().ok())
        .filter_map(|id| db.objects[t].get(&id))
        .filter(|r| r.archived_at.is_none())
        .map(|r| render(&db, t, r, props.as_deref(), &[]))
        .collect();
    Json(json!({"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": iso(now_ms())}))
        .into_response()
}

async fn read(
    State(h): State<HubSpot>,
    Path((t, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let archived = q.get("archived").is_some_and(|a| a == "true");
    let props = requested(&q, "properties");
    let assoc = requested(&q, "associations").unwrap_or_default();
    let db = h.lock();
    match id.parse::<u64>().ok().and_then(|id| db.objects[t].get(&id)) {
        Some(r) if r.archived_at.is_some() == archived => {
            Json(render(&db, t, r, props.as_deref(), &assoc)).into_response()
        }
        _ => not_found(),
    }
}

/// Checks and normalises property values (HubSpot stores strings).
fn validate(
    db: &Db,
    t: &'static str,
    input: &Map<String, Value>,
    creating: bool,
) -> Result<BTreeMap<String, String>, Vec<Value>> {
    let schema = &db.schemas[t];
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let mut fail = |code: &str, name: &str, msg: String| {
        errors.push(json!({"message": msg, "code": code, "context": {"propertyName": [name]}}))
    };
    for (name, v) in input {
        let Some(p) = schema.iter().find(|p| &p.name == name) else {
            fail(
                "PROPERTY_DOESNT_EXIST",
                name,
                format!("Property \"{name}\" does not exist"),
            );
            continue;
        };
        if p.read_only {
            fail(
                "READ_ONLY_VALUE",
                name,
                format!("\"{name}\" is a read only property; its value cannot be set."),
            );
            continue;
        }
        let s = match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                fail(
                    "INVALID_OPTION",
                    name,
                    format!("{name} must be a string, number or boolean"),
                );
                continue;
            }
        };
        if !s.is_empty() {
            match p.ptype {
                PType::Number if s.parse::<f64>().is_err() => {
                    fail(
                        "INVALID_DOUBLE",
                        name,
                        format!("{s} was not a valid number."),
                    );
                    continue;
                }
                PType::DateTime => match parse_time(&s) {
                    Some(ms) => {
                        out.insert(name.clone(), iso(ms));
                        continue;
                    }
                    None => {
                        fail(
                            "INVALID_DATE",
                            name,
                            format!("{s} was not a valid long or date."),
                        );
                        continue;
                    }
                },
                PType::Enum(opts) if !opts.contains(&s.as_str()) => {
                    fail(
                        "INVALID_OPTION",
                        name,
                        format!(
                            "{s} was not one of the allowed options: {}",
                            opts.join(", ")
                        ),
                    );
                    continue;
                }
                PType::Bool if s != "true" && s != "false" => {
                    fail(
                        "INVALID_BOOLEAN",
                        name,
                        format!("{s} is not a valid boolean"),
                    );
                    continue;
                }
                _ => {}
            }
            if name == "email" && !s.contains('@') {
                fail(
                    "INVALID_EMAIL",
                    name,
                    format!("Email address {s} is invalid"),
                );
                continue;
            }
        }
        out.insert(name.clone(), s);
    }
    if creating {
        let required: &[&str] = match t {
            "deals" => &["dealname", "dealstage"],
            "leads" => &["hs_lead_name"],
            "contacts" | "companies" => &[],
            _ => &["hs_timestamp"],
        };
        for r in required {
            if out.get(*r).is_none_or(|v| v.is_empty()) {
                fail("REQUIRED_PROPERTY", r, format!("{r} is required"));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn invalid(errors: Vec<Value>) -> Response {
    let detail: Vec<Value> = errors
        .iter()
        .map(|e| json!({"isValid": false, "message": e["message"], "error": e["code"], "name": e["context"]["propertyName"][0]}))
        .collect();
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        &format!("Property values were not valid: {}", Value::Array(detail)),
        errors,
    )
}

fn bad_body(msg: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", msg, vec![])
}

async fn create(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let Some(props) = body.get("properties").and_then(Value::as_object) else {
        return bad_body("Invalid input JSON: `properties` is required");
    };
    let mut db = h.lock();
    db.version += 1;
    let props = match validate(&db, t, props, true) {
        Ok(p) => p,
        Err(e) => return invalid(e),
    };
    // Associations are checked before anything is written.
    let mut links = Vec::new();
    for a in body
        .get("associations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let to_id = a["to"]["id"]
            .as_str()
            .map(str::to_string)
            .or_else(|| a["to"]["id"].as_u64().map(|n| n.to_string()));
        let type_id = a["types"][0]["associationTypeId"].as_u64();
        let target = TYPES.iter().find_map(|(tt, _)| {
            let tid = association_type_id(t, tt)? as u64;
            (Some(tid) == type_id).then_some(*tt)
        });
        let (Some(to_id), Some(target)) = (to_id.and_then(|i| i.parse::<u64>().ok()), target)
        else {
            return bad_body(
                "Invalid association: `to.id` and a HUBSPOT_DEFINED `associationTypeId` for this pair are required",
            );
        };
        if db.objects[target]
            .get(&to_id)
            .is_none_or(|r| r.archived_at.is_some())
        {
            return bad_body(&format!("No {} with ID {to_id} exists", singular(target)));
        }
        links.push((target, to_id));
    }
    if t == "leads" && !links.iter().any(|(tt, _)| *tt == "contacts") {
        return bad_body(
            "A lead must be associated with an existing contact (associationTypeId 578)",
        );
    }
    if t == "contacts"
        && let Some(email) = props.get("email").filter(|e| !e.is_empty())
        && let Some(existing) = db.objects[t].values().find(|r| {
            r.archived_at.is_none()
                && r.props
                    .get("email")
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
    {
        let msg = format!("Contact already exists. Existing ID: {}", existing.id);
        return error(StatusCode::CONFLICT, "CONFLICT", &msg, vec![]);
    }
    let now = now_ms();
    let id = db.next_id;
    db.next_id += 1;
    let rec = Rec {
        id,
        created: now,
        modified: now,
        archived_at: None,
        props: props.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
    };
    db.objects.get_mut(t).map(|m| m.insert(id, rec.clone()));
    for l in links {
        link(&mut db, (t, id), l);
    }
    let all: Vec<String> = db.schemas[t].iter().map(|p| p.name.clone()).collect();
    (
        StatusCode::CREATED,
        Json(render(&db, t, &rec, Some(&all), &[])),
    )
        .into_response()
}

async fn update(
    State(h): State<HubSpot>,
    Path((t, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let Some(props) = body.get("properties").and_then(Value::as_object) else {
        return bad_body("Invalid input JSON: `properties` is required");
    };
    let mut db = h.lock();
    db.version += 1;
    let Some(id) = id.parse::<u64>().ok().filter(|id| {
        db.objects[t]
            .get(id)
            .is_some_and(|r| r.archived_at.is_none())
    }) else {
        return not_found();
    };
    let props = match validate(&db, t, props, false) {
        Ok(p) => p,
        Err(e) => return invalid(e),
    };
    let now = now_ms();
    let rec = {
        let Some(r) = db.objects.get_mut(t).and_then(|m| m.get_mut(&id)) else {
            return not_found();
        };
        for (k, v) in props {
            if v.is_empty() {
                r.props.remove(&k);
            } else {
                r.props.insert(k, v);
            }
        }
        r.modified = now.max(r.modified + 1);
        r.clone()
    };
    let all: Vec<String> = db.schemas[t].iter().map(|p| p.name.clone()).collect();
    Json(render(&db, t, &rec, Some(&all), &[])).into_response()
}

async fn archive(State(h): State<HubSpot>, Path((t, id)): Path<(String, String)>) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let mut db = h.lock();
    db.version += 1;
    // Archiving an archived or unknown id is a 204 at HubSpot too.
    if let Some(r) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| db.objects.get_mut(t).and_then(|m| m.get_mut(&id)))
        && r.archived_at.is_none()
    {
        let now = now_ms();
        r.archived_at = Some(now);
        r.modified = now.max(r.modified + 1);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /crm/v3/objects/contacts/gdpr-delete`: the contact is erased, and
/// unlike an archive it leaves no tombstone for `archived=true` to list.
async fn gdpr_delete(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if type_of(&t) != Some("contacts") {
        return bad_type(&t);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = body["objectId"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "objectId is required",
            vec![],
        );
    };
    let mut db = h.lock();
    db.version += 1;
    let contacts = db.objects.get_mut("contacts");
    let found = match body["idProperty"].as_str() {
        Some("email") => contacts.and_then(|m| {
            let k = m
                .iter()
                .find(|(_, r)| r.props.get("email").map(String::as_str) == Some(id))
                .map(|(k, _)| *k)?;
            m.remove(&k)
        }),
        _ => id
            .parse::<u64>()
            .ok()
            .and_then(|id| contacts.and_then(|m| m.remove(&id))),
    };
    match found {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "resource not found",
            vec![],
        ),
    }
}

fn filter_matches(r: &Rec, t: &str, f: &Value) -> Result<bool, String> {
    let name = f["propertyName"]
        .as_str()
        .ok_or("a filter needs propertyName")?;
    let op = f["operator"].as_str().ok_or("a filter needs operator")?;
    // Numeric columns against a number: compared as numbers without
    // allocating (incremental syncs search every record by modified time;
    // the fake should not be the slow part of a benchmark).
    let column = match name {
        "hs_object_id" => Some(r.id as i64),
        "createdate" => Some(r.created),
        n if n == modified_property(t) => Some(r.modified),
        _ => None,
    };
    let number = f["value"]
        .as_i64()
        .or_else(|| f["value"].as_str().and_then(|v| v.parse::<i64>().ok()));
    if let (Some(a), Some(b)) = (column, number) {
        match op {
            "EQ" => return Ok(a == b),
            "NEQ" => return Ok(a != b),
            "LT" => return Ok(a < b),
            "LTE" => return Ok(a <= b),
            "GT" => return Ok(a > b),
            "GTE" => return Ok(a >= b),
            _ => {}
        }
    }
    let actual: Option<String> = match name {
        "hs_object_id" => Some(r.id.to_string()),
        "createdate" => Some(r.created.to_string()),
        n if n == modified_property(t) => Some(r.modified.to_string()),
        n => r.props.get(n).cloned(),
    };
    let cmp = |want: &str| -> Option<std::cmp::Ordering> {
        let a = actual.as_deref()?;
        if let (Ok(x), Ok(y)) = (a.parse::<f64>(), want.parse::<f64>()) {
            return x.partial_cmp(&y);
        }
        if let (Some(x), Some(y)) = (parse_time(a), parse_time(want)) {
            return Some(x.cmp(&y));
        }
        Some(a.to_lowercase().cmp(&want.to_lowercase()))
    };
    let value = f["value"]
        .as_str()
        .map(str::to_string)
        .or_else(|| f["value"].as_i64().map(|n| n.to_string()));
    use std::cmp::Ordering::*;
    Ok(match op {
        "HAS_PROPERTY" => actual.is_some(),
        "NOT_HAS_PROPERTY" => actual.is_none(),
        "IN" | "NOT_IN" => {
            let vals: Vec<String> = f["values"]
                .as_array()
                .ok_or("IN needs values")?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_lowercase))
                .collect();
            let hit = actual
                .as_deref()
                .is_some_and(|a| vals.contains(&a.to_lowercase()));
            (op == "IN") == hit
        }
        _ => {
            let v = value.ok_or_else(|| format!("operator {op} needs a value"))?;
            let o = cmp(&v);
            match op {
                "EQ" => o == Some(Equal),
                "NEQ" => o != Some(Equal),
                "LT" => o == Some(Less),
                "LTE" => matches!(o, Some(Less | Equal)),
                "GT" => o == Some(Greater),
                "GTE" => matches!(o, Some(Greater | Equal)),
                "CONTAINS_TOKEN" => actual.is_some_and(|a| {
                    a.to_lowercase()
                        .contains(&v.to_lowercase().replace('*', ""))
                }),
                _ => return Err(format!("Unknown operator {op}")),
            }
        }
    })
}

async fn search(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let per_sec = h.opts.search_per_sec;
    let limited = h
        .lock()
        .search
        .entry(token)
        .or_insert_with(|| Rolling::new(per_sec, Duration::from_secs(1)))
        .hit()
        .is_err();
    if limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"status": "error", "message": "You have reached your secondly limit.",
                "errorType": "RATE_LIMIT", "correlationId": correlation_id(), "policyName": "SECONDLY"})),
        )
            .into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let limit = match body.get("limit") {
        None => 10,
        Some(v) => match v.as_u64() {
            Some(l) if (1..=200).contains(&l) => l as usize,
            _ => return bad_body("limit must be between 1 and 200"),
        },
    };
    let after: usize = match body.get("after") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(Value::String(s)) => match s.parse() {
            Ok(n) => n,
            Err(_) => return bad_body("after must be a valid paging cursor"),
        },
        Some(v) => match v.as_u64() {
            Some(n) => n as usize,
            None => return bad_body("after must be a valid paging cursor"),
        },
    };
    if after + limit > 10_000 {
        return bad_body(
            "Search results are limited to 10,000 total; refine the filters to page further.",
        );
    }
    page_delay(&h).await;
    let mut db = h.lock();
    let known = |n: &str| db.schemas[t].iter().any(|p| p.name == n);
    let groups = body
        .get("filterGroups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for g in &groups {
        for f in g["filters"].as_array().into_iter().flatten() {
            let n = f["propertyName"].as_str().unwrap_or("");
            if !known(n) {
                return bad_body(&format!(
                    "There was a problem with the request. Property \"{n}\" does not exist"
                ));
            }
        }
    }
    // The sorted hits of a query are kept while no record changes, so the
    // pages of one search cost a slice each, not a scan of every record
    // (a benchmark pages incremental searches through tens of thousands of
    // hits; the fake should not be the slow part of it).
    let key = json!([t, groups, body.get("sorts")]).to_string();
    let cached = db
        .search_cache
        .as_ref()
        .filter(|c| c.0 == db.version && c.1 == key)
        .map(|c| c.2.clone());
    let ids = match cached {
        Some(ids) => ids,
        None => match search_ids(&db, t, &groups, &body) {
            Ok(ids) => {
                let ids = std::sync::Arc::new(ids);
                let version = db.version;
                db.search_cache = Some((version, key, ids.clone()));
                ids
            }
            Err(r) => return r,
        },
    };
    let total = ids.len();
    let hits: Vec<&Rec> = ids
        .iter()
        .skip(after)
        .take(limit)
        .filter_map(|id| db.objects[t].get(id))
        .collect();
    let props: Option<Vec<String>> = body
        .get("properties")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .filter(|p: &Vec<String>| !p.is_empty());
    let results: Vec<Value> = hits
        .iter()
        .map(|r| render(&db, t, r, props.as_deref(), &[]))
        .collect();
    let mut out = json!({"total": total, "results": results});
    if after + limit < total {
        out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    Json(out).into_response()
}

/// The ids of the records a search matches, in its order.
fn search_ids(db: &Db, t: &str, groups: &[Value], body: &Value) -> Result<Vec<u64>, Response> {
    let known = |n: &str| db.schemas[t].iter().any(|p| p.name == n);
    let mut hits: Vec<&Rec> = Vec::new();
    for r in db.objects[t].values().filter(|r| r.archived_at.is_none()) {
        let mut any = groups.is_empty();
        for g in groups {
            let mut all = true;
            for f in g["filters"].as_array().into_iter().flatten() {
                match filter_matches(r, t, f) {
                    Ok(true) => {}
                    Ok(false) => {
                        all = false;
                        break;
                    }
                    Err(e) => return Err(bad_body(&e)),
                }
            }
            if all {
                any = true;
                break;
            }
        }
        if any {
            hits.push(r);
        }
    }
    // Sorts: strings (`-name` descending) or {propertyName, direction}.
    if let Some(s) = body
        .get("sorts")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
    {
        let (name, desc) = match s {
            Value::String(n) => (n.trim_start_matches('-').to_string(), n.starts_with('-')),
            o => (
                o["propertyName"].as_str().unwrap_or("").to_string(),
                o["direction"].as_str() == Some("DESCENDING"),
            ),
        };
        if !known(&name) {
            return Err(bad_body(&format!("Property \"{name}\" does not exist")));
        }
        let key = |r: &Rec| -> (i64, String) {
            match name.as_str() {
                "createdate" => (r.created, String::new()),
                n if n == modified_property(t) => (r.modified, String::new()),
                "hs_object_id" => (r.id as i64, String::new()),
                n => (0, r.props.get(n).cloned().unwrap_or_default()),
            }
        };
        let order = |a: &&Rec, b: &&Rec| {
            let o = key(a).cmp(&key(b)).then(a.id.cmp(&b.id));
            if desc { o.reverse() } else { o }
        };
        hits.sort_by(order);
    }
    Ok(hits.iter().map(|r| r.id).collect())
}

async fn properties(State(h): State<HubSpot>, Path(t): Path<String>) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let db = h.lock();
    let results: Vec<Value> = db.schemas[t].iter().map(property_json).collect();
    Json(json!({"results": results})).into_response()
}

fn property_json(p: &Prop) -> Value {
    let (ty, field) = match p.ptype {
        PType::Str => ("string", "text"),
        PType::Number => ("number", "number"),
        PType::DateTime => ("datetime", "date"),
        PType::Enum(_) => ("enumeration", "select"),
        PType::Bool => ("bool", "booleancheckbox"),
    };
    let options: Vec<Value> = match p.ptype {
        PType::Enum(o) => o
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"label": v, "value": v, "displayOrder": i, "hidden": false}))
            .collect(),
        _ => vec![],
    };
    json!({
        "name": p.name, "label": p.label, "type": ty, "fieldType": field,
        "description": "", "groupName": "information", "options": options,
        "hidden": false, "formField": !p.read_only, "calculated": false,
        "hasUniqueValue": p.name == "hs_object_id", "hubspotDefined": !p.custom,
        "modificationMetadata": {"readOnlyValue": p.read_only, "readOnlyDefinition": !p.custom, "archivable": p.custom},
    })
}

async fn create_property(
    State(h): State<HubSpot>,
    Path(t): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let (Some(name), Some(label), Some(ty)) = (
        body["name"].as_str(),
        body["label"].as_str(),
        body["type"].as_str(),
    ) else {
        return bad_body("name, label, type, fieldType and groupName are required");
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return bad_body("Property names must be lowercase letters, digits and underscores");
    }
    let ptype = match ty {
        "string" => PType::Str,
        "number" => PType::Number,
        "datetime" | "date" => PType::DateTime,
        "bool" => PType::Bool,
        "enumeration" => match options_of(&body) {
            Ok(o) if !o.is_empty() => PType::Enum(o),
            Ok(_) => return bad_body("Enumeration properties require at least one option"),
            Err(r) => return r,
        },
        _ => return bad_body(&format!("Unsupported property type {ty}")),
    };
    let mut db = h.lock();
    db.version += 1;
    let Some(schema) = db.schemas.get_mut(t) else {
        return bad_type(t);
    };
    if schema.iter().any(|p| p.name == name) {
        return error(
            StatusCode::CONFLICT,
            "OBJECT_ALREADY_EXISTS",
            &format!("A property named '{name}' already exists."),
            vec![],
        );
    }
    let p = Prop {
        name: name.into(),
        label: label.into(),
        ptype,
        read_only: false,
        custom: true,
    };
    let out = property_json(&p);
    schema.push(p);
    (StatusCode::CREATED, Json(out)).into_response()
}

/// The `value`s of a property body's `options`. Option values live as long
/// as the fake (a few per test) and are leaked to fit the static tables.
fn options_of(body: &Value) -> Result<&'static [&'static str], Response> {
    let mut out: Vec<&'static str> = Vec::new();
    for o in body["options"].as_array().into_iter().flatten() {
        match (o["label"].as_str(), o["value"].as_str()) {
            (Some(_), Some(v)) if !v.is_empty() => {
                out.push(Box::leak(v.to_string().into_boxed_str()));
            }
            _ => return Err(bad_body("Each option needs a label and a value")),
        }
    }
    Ok(Box::leak(out.into_boxed_slice()))
}

async fn update_property(
    State(h): State<HubSpot>,
    Path((t, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(t) = type_of(&t) else {
        return bad_type(&t);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let mut db = h.lock();
    db.version += 1;
    let Some(p) = db
        .schemas
        .get_mut(t)
        .and_then(|s| s.iter_mut().find(|p| p.name == name))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("Unable to find property {name} for object type {t}"),
            vec![],
        );
    };
    if !p.custom {
        return bad_body(&format!(
            "{name} is a HubSpot defined property and cannot be modified"
        ));
    }
    if let Some(label) = body["label"].as_str() {
        p.label = label.to_string();
    }
    if body.get("options").is_some() {
        if !matches!(p.ptype, PType::Enum(_)) {
            return bad_body("Only enumeration properties have options");
        }
        match options_of(&body) {
            Ok(o) if !o.is_empty() => p.ptype = PType::Enum(o),
            Ok(_) => return bad_body("Enumeration properties require at least one option"),
            Err(r) => return r,
        }
    }
    Json(property_json(p)).into_response()
}

/// The portal: its id, currency and UI domain.
async fn account_details(State(_h): State<HubSpot>) -> Response {
    Json(json!({
        "portalId": 62515, "accountType": "STANDARD", "timeZone": "US/Eastern",
        "companyCurrency": "USD", "additionalCurrencies": [], "utcOffset": "-05:00",
        "utcOffsetMilliseconds": -18000000, "uiDomain": "app.hubspot.com",
        "dataHostingLocation": "na1",
    }))
    .into_response()
}

/// When the portal's built-in definitions (pipelines, owners) were made.
const PORTAL_CREATED: &str = "2024-01-02T09:00:00.000Z";

/// The portal's deal pipelines: the default one over `DEAL_STAGES`, and a
/// partner pipeline whose stages (ids unique across pipelines, as at
/// HubSpot) no generated deal uses.
fn deal_pipelines() -> Vec<Value> {
    let stage = |i: usize, id: &str, label: &str, p: f64, closed: bool| {
        json!({"id": id, "label": label, "displayOrder": i, "archived": false,
            "createdAt": PORTAL_CREATED, "updatedAt": PORTAL_CREATED,
            "metadata": {"probability": format!("{p:.1}"), "isClosed": closed.to_string()}})
    };
    let default: Vec<Value> = DEAL_STAGES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = match *s {
                "closedwon" => 1.0,
                "closedlost" => 0.0,
                _ => (i as f64 + 1.0) / 10.0,
            };
            stage(i, s, s, p, s.starts_with("closed"))
        })
        .collect();
    let partner = vec![
        stage(0, "partner_sourced", "Partner sourced", 0.2, false),
        stage(1, "partner_negotiation", "Negotiation", 0.6, false),
        stage(2, "partner_won", "Won through partner", 1.0, true),
    ];
    vec![
        json!({"id": "default", "label": "Sales Pipeline", "displayOrder": 0, "archived": false,
            "createdAt": PORTAL_CREATED, "updatedAt": PORTAL_CREATED, "stages": default}),
        json!({"id": "partner", "label": "Partner Pipeline", "displayOrder": 1, "archived": false,
            "createdAt": PORTAL_CREATED, "updatedAt": PORTAL_CREATED, "stages": partner}),
    ]
}

async fn pipelines(State(_h): State<HubSpot>, Path(t): Path<String>) -> Response {
    if t != "deals" {
        return bad_type(&t);
    }
    Json(json!({"results": deal_pipelines()})).into_response()
}

async fn pipeline(State(_h): State<HubSpot>, Path((t, id)): Path<(String, String)>) -> Response {
    if t != "deals" {
        return bad_type(&t);
    }
    match deal_pipelines()
        .into_iter()
        .find(|p| p["id"] == id.as_str())
    {
        Some(p) => Json(p).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            &format!("Unable to find pipeline {id}"),
            vec![],
        ),
    }
}

/// How many associations of one type a record carries inline.
const INLINE_ASSOCIATIONS: usize = 100;
/// How many associations of one record a v4 batch read returns.
const BATCH_ASSOCIATIONS: usize = 500;

/// `GET /crm/v4/objects/{t}/{id}/associations/{to}?after&limit`: one
/// record's associations of one type, paged (limit at most 500).
async fn assoc_list(
    State(h): State<HubSpot>,
    Path((t, id, to)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (Some(t), Some(to)) = (type_of(&t), type_of(&to)) else {
        return bad_body("Unknown object type");
    };
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(500)
        .clamp(1, 500);
    let db = h.lock();
    if db.objects[t]
        .get(&id)
        .is_none_or(|r| r.archived_at.is_some())
    {
        return not_found();
    }
    let type_id = association_type_id(t, to).unwrap_or(0);
    let all: Vec<u64> = db
        .assoc
        .get(&(t, id))
        .into_iter()
        .flatten()
        .filter(|(tt, tid)| {
            *tt == to
                && db.objects[to]
                    .get(tid)
                    .is_some_and(|r| r.archived_at.is_none())
        })
        .map(|(_, tid)| *tid)
        .collect();
    let results: Vec<Value> = all
        .iter()
        .skip(after)
        .take(limit)
        .map(|tid| json!({"toObjectId": tid, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": null}]}))
        .collect();
    let mut out = json!({"results": results});
    if after + limit < all.len() {
        out["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    Json(out).into_response()
}

async fn assoc_batch_read(
    State(h): State<HubSpot>,
    Path((from, to)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let (Some(from), Some(to)) = (type_of(&from), type_of(&to)) else {
        return bad_body("Unknown object type");
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_body("Invalid input JSON on line 1");
    };
    let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
        return bad_body("inputs is required");
    };
    if inputs.len() > 1000 {
        return bad_body("Batch size cannot exceed 1000");
    }
    let started = iso(now_ms());
    let db = h.lock();
    let type_id = association_type_id(from, to).unwrap_or(0);
    let mut results = Vec::new();
    for i in inputs {
        let Some(id) = i["id"].as_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let targets: Vec<Value> = db
            .assoc
            .get(&(from, id))
            .into_iter()
            .flatten()
            .filter(|(tt, tid)| *tt == to && db.objects[to].get(tid).is_some_and(|r| r.archived_at.is_none()))
            .map(|(_, tid)| json!({"toObjectId": tid, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": null}]}))
            .collect();
        if !targets.is_empty() {
            let more = targets.len() > BATCH_ASSOCIATIONS;
            let first: Vec<Value> = targets.into_iter().take(BATCH_ASSOCIATIONS).collect();
            let mut r = json!({"from": {"id": id.to_string()}, "to": first});
            if more {
                r["paging"] = json!({"next": {"after": BATCH_ASSOCIATIONS.to_string()}});
            }
            results.push(r);
        }
    }
    Json(json!({"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": iso(now_ms())})).into_response()
}

async fn owner(State(h): State<HubSpot>, Path(id): Path<String>) -> Response {
    let db = h.lock();
    match db.owners.iter().find(|o| o["id"] == id.as_str()) {
        Some(o) => Json(o.clone()).into_response(),
        None => not_found(),
    }
}

/// `PUT /crm/v4/objects/{t}/{id}/associations/default/{to}/{to_id}`: the
/// default (unlabeled) association between two records.
/// Removes every association between two records (204).
async fn dissociate(
    State(h): State<HubSpot>,
    Path((t, id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (Some(t), Some(to)) = (type_of(&t), type_of(&to)) else {
        return bad_body("Unknown object type");
    };
    let (Ok(a), Ok(b)) = (id.parse::<u64>(), to_id.parse::<u64>()) else {
        return not_found();
    };
    let mut db = h.lock();
    db.version += 1;
    if let Some(s) = db.assoc.get_mut(&(t, a)) {
        s.remove(&(to, b));
    }
    if let Some(s) = db.assoc.get_mut(&(to, b)) {
        s.remove(&(t, a));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn associate(
    State(h): State<HubSpot>,
    Path((t, id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (Some(t), Some(to)) = (type_of(&t), type_of(&to)) else {
        return bad_body("Unknown object type");
    };
    let mut db = h.lock();
    db.version += 1;
    let live = |db: &Db, t: &'static str, id: &str| -> Option<u64> {
        let id = id.parse::<u64>().ok()?;
        db.objects[t]
            .get(&id)
            .filter(|r| r.archived_at.is_none())
            .map(|r| r.id)
    };
    let (Some(a), Some(b)) = (live(&db, t, &id), live(&db, to, &to_id)) else {
        return not_found();
    };
    link(&mut db, (t, a), (to, b));
    let type_id = association_type_id(t, to).unwrap_or(0);
    let at = iso(now_ms());
    Json(json!({"status": "COMPLETE", "results": [{"from": {"id": a.to_string()}, "to": {"id": b.to_string()},
        "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}],
        "startedAt": at, "completedAt": at}))
    .into_response()
}
