//! The sandbox's native object schemas and its deterministic data generator.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::Account;

/// Object types, as they appear in the sandbox's URL paths.
pub const OBJECTS: &[&str] = &[
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

#[derive(Clone, Copy)]
pub enum FieldType {
    Str,
    Num,
    Bool,
    Time,
    StrList,
}

impl FieldType {
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            FieldType::Str => v.is_string(),
            FieldType::Num => v.is_number(),
            FieldType::Bool => v.is_boolean(),
            FieldType::Time => v
                .as_str()
                .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok()),
            FieldType::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FieldType::Str => "a string",
            FieldType::Num => "a number",
            FieldType::Bool => "a boolean",
            FieldType::Time => "an RFC 3339 timestamp",
            FieldType::StrList => "an array of strings",
        }
    }
}

pub struct Schema {
    pub fields: &'static [(&'static str, FieldType)],
    pub required: &'static [&'static str],
}

use FieldType::*;

pub fn schema_of(object: &str) -> &'static Schema {
    match object {
        "users" => &Schema {
            fields: &[
                ("first_name", Str),
                ("last_name", Str),
                ("email", Str),
                ("active", Bool),
            ],
            required: &[],
        },
        "accounts" => &Schema {
            fields: &[
                ("name", Str),
                ("domain", Str),
                ("industry", Str),
                ("employees", Num),
                ("annual_revenue", Num),
                ("phone", Str),
                ("street", Str),
                ("city", Str),
                ("state", Str),
                ("postal_code", Str),
                ("country", Str),
                ("description", Str),
                ("owner_id", Str),
            ],
            required: &["name"],
        },
        "contacts" => &Schema {
            fields: &[
                ("first_name", Str),
                ("last_name", Str),
                ("email", Str),
                ("title", Str),
                ("phone", Str),
                ("mobile", Str),
                ("account_id", Str),
                ("owner_id", Str),
            ],
            required: &["last_name"],
        },
        "deals" => &Schema {
            fields: &[
                ("name", Str),
                ("stage", Str),
                ("amount", Num),
                ("currency", Str),
                ("close_date", Str),
                ("probability", Num),
                ("won", Bool),
                ("closed", Bool),
                ("account_id", Str),
                ("contact_ids", StrList),
                ("owner_id", Str),
            ],
            required: &["name", "close_date"],
        },
        "leads" => &Schema {
            fields: &[
                ("first_name", Str),
                ("last_name", Str),
                ("email", Str),
                ("title", Str),
                ("phone", Str),
                ("mobile", Str),
                ("company", Str),
                ("status", Str),
                ("owner_id", Str),
            ],
            required: &["last_name"],
        },
        "notes" => &Schema {
            fields: &[
                ("body_html", Str),
                ("body_text", Str),
                ("contact_id", Str),
                ("account_id", Str),
                ("deal_id", Str),
                ("lead_id", Str),
                ("owner_id", Str),
            ],
            required: &[],
        },
        "tasks" => &Schema {
            fields: &[
                ("subject", Str),
                ("body", Str),
                ("status", Str),
                ("priority", Str),
                ("due_date", Time),
                ("done", Bool),
                ("contact_id", Str),
                ("account_id", Str),
                ("deal_id", Str),
                ("lead_id", Str),
                ("owner_id", Str),
            ],
            required: &["subject"],
        },
        "events" => &Schema {
            fields: &[
                ("subject", Str),
                ("description", Str),
                ("kind", Str),
                ("location", Str),
                ("starts_at", Time),
                ("ends_at", Time),
                ("all_day", Bool),
                ("contact_ids", StrList),
                ("account_id", Str),
                ("deal_id", Str),
                ("lead_id", Str),
                ("owner_id", Str),
            ],
            required: &["starts_at", "ends_at"],
        },
        "attendees" => &Schema {
            fields: &[
                ("event_id", Str),
                ("email", Str),
                ("response", Str),
                ("contact_id", Str),
                ("lead_id", Str),
            ],
            required: &["event_id"],
        },
        "emails" => &Schema {
            fields: &[
                ("from", Str),
                ("to", StrList),
                ("cc", StrList),
                ("bcc", StrList),
                ("subject", Str),
                ("body_text", Str),
                ("body_html", Str),
                ("sent_at", Time),
                ("incoming", Bool),
                ("bounced", Bool),
                ("has_attachment", Bool),
                ("status", Str),
                ("contact_id", Str),
                ("contact_ids", StrList),
                ("account_id", Str),
                ("deal_id", Str),
                ("lead_id", Str),
                ("owner_id", Str),
            ],
            required: &["from", "to", "subject"],
        },
        "calls" => &Schema {
            fields: &[
                ("subject", Str),
                ("notes", Str),
                ("at", Time),
                ("disposition", Str),
                ("direction", Str),
                ("duration_seconds", Num),
                ("from_number", Str),
                ("to_number", Str),
                ("recording_url", Str),
                ("contact_id", Str),
                ("contact_ids", StrList),
                ("account_id", Str),
                ("deal_id", Str),
                ("lead_id", Str),
                ("owner_id", Str),
            ],
            required: &["at", "direction"],
        },
        "lists" => &Schema {
            fields: &[
                ("name", Str),
                ("object_type", Str),
                ("member_ids", StrList),
                ("owner_id", Str),
            ],
            required: &["name", "object_type"],
        },
        _ => &Schema {
            fields: &[],
            required: &[],
        },
    }
}

pub struct Record {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub fields: Map<String, Value>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Record {
    /// Sort key for keyset paging: modification time, then id.
    pub fn sort_key(&self) -> (i64, String) {
        (
            self.updated_at.timestamp_millis(),
            format!("{:0>12}", self.id),
        )
    }

    pub fn to_json(&self, with_deleted: bool) -> Value {
        let mut m = self.fields.clone();
        m.insert("id".into(), json!(self.id));
        m.insert("created_at".into(), json!(ts(self.created_at)));
        m.insert("updated_at".into(), json!(ts(self.updated_at)));
        if with_deleted {
            m.insert(
                "deleted_at".into(),
                self.deleted_at.map(ts).map_or(Value::Null, Value::String),
            );
        }
        Value::Object(m)
    }
}

pub fn encode_cursor(key: &(i64, String)) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", key.0, key.1))
}

pub fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (t, id) = raw.split_once('|')?;
    Some((t.parse().ok()?, id.to_string()))
}

const FIRST: &[&str] = &[
    "Ava", "Liam", "Maya", "Noah", "Zara", "Ethan", "Priya", "Lucas", "Chloe", "Mateo", "Hana",
    "Omar", "Ingrid", "Kenji", "Sofia", "Diego", "Amara", "Felix", "Leila", "Tomas",
];
const LAST: &[&str] = &[
    "Okafor",
    "Lindqvist",
    "Patel",
    "Nguyen",
    "Garcia",
    "Schmidt",
    "Kowalski",
    "Haddad",
    "Tanaka",
    "Moreau",
    "Brennan",
    "Silva",
    "Adeyemi",
    "Rossi",
    "Novak",
    "Chen",
    "Larsen",
    "Dubois",
];
const COMPANY_A: &[&str] = &[
    "Northwind",
    "Bluefin",
    "Cedar",
    "Helix",
    "Quarry",
    "Lumen",
    "Atlas",
    "Ridge",
    "Orbit",
    "Kestrel",
    "Maple",
    "Vertex",
    "Harbor",
    "Summit",
    "Pioneer",
];
const COMPANY_B: &[&str] = &[
    "Labs",
    "Logistics",
    "Analytics",
    "Health",
    "Systems",
    "Foods",
    "Energy",
    "Robotics",
    "Capital",
    "Media",
];
const INDUSTRIES: &[&str] = &[
    "Software",
    "Logistics",
    "Healthcare",
    "Manufacturing",
    "Financial Services",
    "Retail",
    "Energy",
    "Media",
];
const TITLES: &[&str] = &[
    "VP Sales",
    "Head of RevOps",
    "CTO",
    "Account Executive",
    "Marketing Manager",
    "CFO",
    "SDR Lead",
    "Procurement Manager",
];
const STAGES: &[(&str, u32)] = &[
    ("qualification", 10),
    ("discovery", 25),
    ("proposal", 50),
    ("negotiation", 75),
    ("closed_won", 100),
    ("closed_lost", 0),
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Austin", "TX", "US"),
    ("Berlin", "BE", "DE"),
    ("Toronto", "ON", "CA"),
    ("Lisbon", "11", "PT"),
    ("Denver", "CO", "US"),
    ("Sydney", "NSW", "AU"),
];

fn pick<'a>(rng: &mut StdRng, xs: &'a [&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// Builds a new account's data deterministically from its id.
pub fn generate(account_id: &str) -> Account {
    let seed = u64::from_str_radix(&account_id[..16], 16).unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Utc::now();
    let mut next_id = 1000u64;
    let mut objects: std::collections::HashMap<&'static str, BTreeMap<String, Record>> =
        Default::default();
    // Timestamps come from their own generator so that the closure does not
    // borrow the one the field values are drawn from.
    let mut time_rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut add = |object: &'static str, fields: Value| -> String {
        let rng = &mut time_rng;
        next_id += 1;
        let id = next_id.to_string();
        // Spread creation over the last 180 days so that "the last 30 days"
        // and "everything" are different sets.
        let created = now - Duration::minutes(rng.random_range(60..180 * 24 * 60));
        let span = (now - created).num_minutes().max(1);
        let updated = created + Duration::minutes(rng.random_range(0..span));
        let Value::Object(fields) = fields else {
            unreachable!("fields are objects")
        };
        objects.entry(object).or_default().insert(
            id.clone(),
            Record {
                id: id.clone(),
                created_at: created,
                updated_at: updated,
                deleted_at: None,
                fields,
            },
        );
        id
    };
    let mut users = Vec::new();
    for i in 0..6 {
        let (f, l) = (pick(&mut rng, FIRST), pick(&mut rng, LAST));
        users.push(add(
            "users",
            json!({
                "first_name": f, "last_name": l,
                "email": format!("{}.{}{}@sandbox-crm.test", f.to_lowercase(), l.to_lowercase(), i),
                "active": i != 5,
            }),
        ));
    }
    let mut accounts = Vec::new();
    for _ in 0..30 {
        let name = format!(
            "{} {}",
            pick(&mut rng, COMPANY_A),
            pick(&mut rng, COMPANY_B)
        );
        let (city, state, country) = CITIES[rng.random_range(0..CITIES.len())];
        let owner = users[rng.random_range(0..users.len())].clone();
        accounts.push((name.clone(), add("accounts", json!({
            "name": name,
            "domain": format!("{}.example", name.to_lowercase().replace(' ', "-")),
            "industry": pick(&mut rng, INDUSTRIES),
            "employees": rng.random_range(5..5000),
            "annual_revenue": rng.random_range(1..500) * 100_000,
            "phone": format!("+1-555-{:04}", rng.random_range(0..10000)),
            "street": format!("{} Market St", rng.random_range(1..999)),
            "city": city, "state": state, "postal_code": format!("{:05}", rng.random_range(10000..99999)),
            "country": country,
            "description": "Generated sandbox account.",
            "owner_id": owner,
        }))));
    }
    let mut contacts = Vec::new();
    for i in 0..90 {
        let (f, l) = (pick(&mut rng, FIRST), pick(&mut rng, LAST));
        let (company, account) = accounts[rng.random_range(0..accounts.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        contacts.push(add("contacts", json!({
            "first_name": f, "last_name": l,
            "email": format!("{}.{}{}@{}.example", f.to_lowercase(), l.to_lowercase(), i, company.to_lowercase().replace(' ', "-")),
            "title": pick(&mut rng, TITLES),
            "phone": format!("+1-555-{:04}", rng.random_range(0..10000)),
            "mobile": format!("+1-555-{:04}", rng.random_range(0..10000)),
            "account_id": account, "owner_id": owner,
        })));
    }
    let mut deals = Vec::new();
    for _ in 0..40 {
        let (company, account) = accounts[rng.random_range(0..accounts.len())].clone();
        let (stage, prob) = STAGES[rng.random_range(0..STAGES.len())];
        let owner = users[rng.random_range(0..users.len())].clone();
        let c1 = contacts[rng.random_range(0..contacts.len())].clone();
        let close = (now + Duration::days(rng.random_range(-60..120))).date_naive();
        deals.push(add("deals", json!({
            "name": format!("{company} - {}", pick(&mut rng, &["Expansion", "Renewal", "New business", "Pilot"])),
            "stage": stage, "amount": rng.random_range(5..400) * 1000, "currency": "USD",
            "close_date": close.to_string(), "probability": prob,
            "won": stage == "closed_won", "closed": stage.starts_with("closed"),
            "account_id": account, "contact_ids": [c1], "owner_id": owner,
        })));
    }
    let mut leads = Vec::new();
    for i in 0..35 {
        let (f, l) = (pick(&mut rng, FIRST), pick(&mut rng, LAST));
        let owner = users[rng.random_range(0..users.len())].clone();
        let company = format!(
            "{} {}",
            pick(&mut rng, COMPANY_A),
            pick(&mut rng, COMPANY_B)
        );
        leads.push(add("leads", json!({
            "first_name": f, "last_name": l,
            "email": format!("{}{}@lead{}.example", f.to_lowercase(), i, i),
            "title": pick(&mut rng, TITLES), "phone": format!("+1-555-{:04}", rng.random_range(0..10000)),
            "company": company, "status": pick(&mut rng, &["new", "working", "nurturing", "qualified"]),
            "owner_id": owner,
        })));
    }
    for _ in 0..60 {
        let contact = contacts[rng.random_range(0..contacts.len())].clone();
        let deal = deals[rng.random_range(0..deals.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        let text = pick(
            &mut rng,
            &[
                "Discussed pricing tiers.",
                "Sent security questionnaire.",
                "Champion is changing roles.",
                "Asked for a case study.",
            ],
        );
        add(
            "notes",
            json!({
                "body_html": format!("<p>{text}</p>"), "body_text": text,
                "contact_id": contact, "deal_id": deal, "owner_id": owner,
            }),
        );
    }
    for _ in 0..50 {
        let contact = contacts[rng.random_range(0..contacts.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        let done = rng.random_bool(0.4);
        add(
            "tasks",
            json!({
                "subject": pick(&mut rng, &["Follow up", "Send proposal", "Book demo", "Check in after trial"]),
                "body": "Generated sandbox task.", "status": if done { "completed" } else { "open" },
                "priority": pick(&mut rng, &["low", "normal", "high"]),
                "due_date": ts(now + Duration::days(rng.random_range(-20..30))), "done": done,
                "contact_id": contact, "owner_id": owner,
            }),
        );
    }
    let mut events = Vec::new();
    for _ in 0..30 {
        let start = now + Duration::hours(rng.random_range(-24 * 60..24 * 30));
        let contact = contacts[rng.random_range(0..contacts.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        events.push(add("events", json!({
            "subject": pick(&mut rng, &["Discovery call", "Demo", "QBR", "Contract review"]),
            "description": "Generated sandbox meeting.", "kind": "meeting",
            "location": pick(&mut rng, &["Zoom", "Google Meet", "HQ, room 4"]),
            "starts_at": ts(start), "ends_at": ts(start + Duration::minutes(45)), "all_day": false,
            "contact_ids": [contact], "owner_id": owner,
        })));
    }
    for event in &events {
        for _ in 0..2 {
            let contact = contacts[rng.random_range(0..contacts.len())].clone();
            add(
                "attendees",
                json!({
                    "event_id": event, "email": format!("attendee{}@example.com", rng.random_range(0..1000)),
                    "response": pick(&mut rng, &["accepted", "tentative", "declined", "needs_action"]),
                    "contact_id": contact,
                }),
            );
        }
    }
    for _ in 0..60 {
        let contact = contacts[rng.random_range(0..contacts.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        let incoming = rng.random_bool(0.5);
        add(
            "emails",
            json!({
                "from": if incoming { "buyer@customer.example" } else { "rep@sandbox-crm.test" },
                "to": [if incoming { "rep@sandbox-crm.test" } else { "buyer@customer.example" }],
                "cc": [], "bcc": [],
                "subject": pick(&mut rng, &["Re: pricing", "Next steps", "Intro", "Contract redlines"]),
                "body_text": "Hi, following up on our conversation.", "body_html": "<p>Hi, following up on our conversation.</p>",
                "sent_at": ts(now - Duration::hours(rng.random_range(1..24 * 90))),
                "incoming": incoming, "bounced": false, "has_attachment": rng.random_bool(0.2), "status": "sent",
                "contact_id": contact, "owner_id": owner,
            }),
        );
    }
    for _ in 0..40 {
        let contact = contacts[rng.random_range(0..contacts.len())].clone();
        let owner = users[rng.random_range(0..users.len())].clone();
        add(
            "calls",
            json!({
                "subject": "Call", "notes": "Generated sandbox call.",
                "at": ts(now - Duration::hours(rng.random_range(1..24 * 90))),
                "disposition": pick(&mut rng, &["connected", "left_voicemail", "no_answer", "busy"]),
                "direction": pick(&mut rng, &["inbound", "outbound"]),
                "duration_seconds": rng.random_range(0..1800),
                "from_number": "+1-555-0100", "to_number": format!("+1-555-{:04}", rng.random_range(0..10000)),
                "contact_id": contact, "owner_id": owner,
            }),
        );
    }
    let members: Vec<String> = contacts.iter().take(12).cloned().collect();
    let lead_members: Vec<String> = leads.iter().take(8).cloned().collect();
    let owner = users[0].clone();
    add(
        "lists",
        json!({"name": "Q3 webinar attendees", "object_type": "contacts", "member_ids": members, "owner_id": owner}),
    );
    add(
        "lists",
        json!({"name": "Inbound MQLs", "object_type": "leads", "member_ids": lead_members, "owner_id": owner}),
    );
    Account { next_id, objects }
}
