//! The unified CRM model (Vessel's v1 `/crm` and v2 `/unifications/crm`).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The type of a unified field, for filters and `details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Num,
    Bool,
    Date,
    List,
    Obj,
}

impl Kind {
    /// The `type` of a Field in `details`.
    pub fn field_type(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Num => "number",
            Kind::Bool => "boolean",
            Kind::Date => "datetime",
            Kind::List => "string",
            Kind::Obj => "object",
        }
    }
}

/// One unified field: its canonical (v1) key, its v2 key, its type.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub key: &'static str,
    pub v2: &'static str,
    pub kind: Kind,
    pub required_on_create: bool,
}

const fn f(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        v2: key,
        kind,
        required_on_create: false,
    }
}

const fn req(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        v2: key,
        kind,
        required_on_create: true,
    }
}

const fn v2(key: &'static str, v2: &'static str, kind: Kind) -> Field {
    Field {
        key,
        v2,
        kind,
        required_on_create: false,
    }
}

/// A unified CRM object type.
#[derive(Debug)]
pub struct Object {
    /// Store key and v2 path segment (`contacts`, `attendees`).
    pub name: &'static str,
    /// v1 collection path after `/crm/` (`contacts`, `event/attendees`).
    pub v1_plural: &'static str,
    /// v1 single-record path after `/crm/` (`contact`, `event/attendee`).
    pub v1_singular: &'static str,
    /// The response key of a v1 list (`contacts`, `eventAttendees`).
    pub v1_list_key: &'static str,
    /// The response key of one v1 record (`contact`, `eventAttendee`).
    pub v1_one_key: &'static str,
    /// `<type>` of the v1 id `v.<type>.<hex>`.
    pub v1_type: &'static str,
    /// v2 singular key (`contact`, `eventAttendee`).
    pub v2_one_key: &'static str,
    /// The v1 webhook objectType (`Contact`).
    pub v1_object_type: &'static str,
    pub fields: &'static [Field],
    /// Association keys shown in v1 (canonical names).
    pub v1_associations: &'static [&'static str],
    /// Association keys shown in v2.
    pub v2_associations: &'static [&'static str],
    pub writable: bool,
}

use Kind::*;

pub static OBJECTS: &[Object] = &[
    Object {
        name: "users",
        v1_plural: "users",
        v1_singular: "user",
        v1_list_key: "users",
        v1_one_key: "user",
        v1_type: "user",
        v2_one_key: "user",
        v1_object_type: "User",
        fields: &[
            f("firstName", Str),
            f("lastName", Str),
            f("email", Str),
            f("archived", Bool),
        ],
        v1_associations: &[],
        v2_associations: &[],
        writable: false,
    },
    Object {
        name: "contacts",
        v1_plural: "contacts",
        v1_singular: "contact",
        v1_list_key: "contacts",
        v1_one_key: "contact",
        v1_type: "contact",
        v2_one_key: "contact",
        v1_object_type: "Contact",
        fields: &[
            f("email", Str),
            f("firstName", Str),
            req("lastName", Str),
            f("jobTitle", Str),
            f("phone", Str),
            f("mobilePhone", Str),
        ],
        v1_associations: &[
            "accountIds",
            "dealIds",
            "leadIds",
            "noteIds",
            "taskIds",
            "eventIds",
            "eventAttendeeIds",
            "emailIds",
            "callIds",
            "ownerUserId",
        ],
        v2_associations: &["ownerUserId", "dealIds", "accountIds", "leadIds"],
        writable: true,
    },
    Object {
        name: "deals",
        v1_plural: "deals",
        v1_singular: "deal",
        v1_list_key: "deals",
        v1_one_key: "deal",
        v1_type: "deal",
        v2_one_key: "deal",
        v1_object_type: "Deal",
        fields: &[
            req("name", Str),
            f("stage", Str),
            f("amount", Num),
            req("closeDate", Date),
            f("probability", Str),
            f("expectedRevenue", Num),
            f("isWon", Bool),
            f("isClosed", Bool),
            f("currency", Str),
        ],
        v1_associations: &[
            "contactIds",
            "accountIds",
            "noteIds",
            "taskIds",
            "eventIds",
            "emailIds",
            "callIds",
            "ownerUserId",
        ],
        v2_associations: &["ownerUserId", "contactIds", "accountIds"],
        writable: true,
    },
    Object {
        name: "accounts",
        v1_plural: "accounts",
        v1_singular: "account",
        v1_list_key: "accounts",
        v1_one_key: "account",
        v1_type: "account",
        v2_one_key: "account",
        v1_object_type: "Account",
        fields: &[
            req("name", Str),
            f("description", Str),
            f("industry", Str),
            f("annualRevenue", Num),
            f("numberOfEmployees", Num),
            f("website", Str),
            f("phone", Str),
            f("address", Obj),
        ],
        v1_associations: &[
            "dealIds",
            "contactIds",
            "noteIds",
            "taskIds",
            "leadIds",
            "eventIds",
            "emailIds",
            "callIds",
            "ownerUserId",
        ],
        v2_associations: &["ownerUserId", "contactIds", "dealIds", "leadIds"],
        writable: true,
    },
    Object {
        name: "leads",
        v1_plural: "leads",
        v1_singular: "lead",
        v1_list_key: "leads",
        v1_one_key: "lead",
        v1_type: "lead",
        v2_one_key: "lead",
        v1_object_type: "Lead",
        fields: &[
            f("firstName", Str),
            req("lastName", Str),
            f("jobTitle", Str),
            f("email", Str),
            v2("account", "accountName", Str),
            f("phone", Str),
            f("mobilePhone", Str),
        ],
        v1_associations: &[
            "contactIds",
            "accountIds",
            "noteIds",
            "taskIds",
            "eventIds",
            "eventAttendeeIds",
            "emailIds",
            "callIds",
        ],
        v2_associations: &["ownerUserId", "contactIds", "accountIds"],
        writable: true,
    },
    Object {
        name: "notes",
        v1_plural: "notes",
        v1_singular: "note",
        v1_list_key: "notes",
        v1_one_key: "note",
        v1_type: "note",
        v2_one_key: "note",
        v1_object_type: "Note",
        fields: &[f("contentHtml", Str), f("contentText", Str)],
        v1_associations: &[
            "dealIds",
            "contactIds",
            "accountIds",
            "leadIds",
            "ownerUserId",
        ],
        v2_associations: &[
            "ownerUserId",
            "contactIds",
            "dealIds",
            "accountIds",
            "leadIds",
        ],
        writable: true,
    },
    Object {
        name: "tasks",
        v1_plural: "tasks",
        v1_singular: "task",
        v1_list_key: "tasks",
        v1_one_key: "task",
        v1_type: "task",
        v2_one_key: "task",
        v1_object_type: "Task",
        fields: &[
            f("body", Str),
            f("subject", Str),
            f("isDone", Bool),
            f("dueDate", Date),
            f("status", Str),
            f("priority", Str),
            f("type", Str),
        ],
        v1_associations: &[
            "dealIds",
            "contactIds",
            "accountIds",
            "leadIds",
            "ownerUserId",
        ],
        v2_associations: &[
            "ownerUserId",
            "contactIds",
            "dealIds",
            "accountIds",
            "leadIds",
        ],
        writable: true,
    },
    Object {
        name: "events",
        v1_plural: "events",
        v1_singular: "event",
        v1_list_key: "events",
        v1_one_key: "event",
        v1_type: "event",
        v2_one_key: "event",
        v1_object_type: "Event",
        fields: &[
            f("subject", Str),
            f("description", Str),
            f("type", Str),
            f("location", Str),
            req("startDateTime", Date),
            req("endDateTime", Date),
            f("isAllDayEvent", Bool),
        ],
        v1_associations: &[
            "accountIds",
            "leadIds",
            "contactIds",
            "dealIds",
            "eventAttendeeIds",
            "ownerUserId",
        ],
        v2_associations: &[
            "ownerUserId",
            "contactIds",
            "dealIds",
            "accountIds",
            "leadIds",
            "eventAttendeeIds",
        ],
        writable: true,
    },
    Object {
        name: "attendees",
        v1_plural: "event/attendees",
        v1_singular: "event/attendee",
        v1_list_key: "eventAttendees",
        v1_one_key: "eventAttendee",
        v1_type: "eventAttendee",
        v2_one_key: "eventAttendee",
        v1_object_type: "EventAttendee",
        fields: &[
            f("status", Str),
            req("associatedObjectType", Str),
            f("email", Str),
        ],
        v1_associations: &["eventId", "associationId"],
        v2_associations: &["eventId", "associationId"],
        writable: true,
    },
    Object {
        name: "emails",
        v1_plural: "emails",
        v1_singular: "email",
        v1_list_key: "emails",
        v1_one_key: "email",
        v1_type: "email",
        v2_one_key: "email",
        v1_object_type: "Email",
        fields: &[
            req("from", Str),
            req("to", List),
            f("cc", List),
            f("bcc", List),
            req("subject", Str),
            v2("body", "bodyText", Str),
            f("bodyHtml", Str),
            f("messageDate", Date),
            f("isIncoming", Bool),
            f("isBounced", Bool),
            f("hasAttachment", Bool),
            f("status", Str),
        ],
        v1_associations: &[
            "accountIds",
            "leadIds",
            "contactIds",
            "dealIds",
            "ownerUserId",
        ],
        v2_associations: &[
            "ownerUserId",
            "contactIds",
            "dealIds",
            "accountIds",
            "leadIds",
        ],
        writable: true,
    },
    Object {
        name: "calls",
        v1_plural: "calls",
        v1_singular: "call",
        v1_list_key: "calls",
        v1_one_key: "call",
        v1_type: "call",
        v2_one_key: "call",
        v1_object_type: "Call",
        fields: &[
            f("subject", Str),
            f("disposition", Str),
            req("direction", Str),
            f("description", Str),
            req("date", Date),
            f("status", Str),
            f("duration", Num),
            f("to", Str),
            f("from", Str),
            f("recordingUrl", Str),
        ],
        v1_associations: &[
            "accountIds",
            "contactIds",
            "dealIds",
            "leadIds",
            "ownerUserId",
        ],
        v2_associations: &[
            "ownerUserId",
            "contactIds",
            "dealIds",
            "accountIds",
            "leadIds",
        ],
        writable: true,
    },
    Object {
        name: "lists",
        v1_plural: "lists",
        v1_singular: "list",
        v1_list_key: "lists",
        v1_one_key: "list",
        v1_type: "list",
        v2_one_key: "list",
        v1_object_type: "List",
        fields: &[f("name", Str), f("objectType", Str)],
        v1_associations: &["contactIds", "leadIds", "ownerUserId"],
        v2_associations: &["contactIds", "leadIds", "ownerUserId"],
        writable: false,
    },
];

/// The object stored (and served in v2) as `name`.
pub fn object(name: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.name == name)
}

pub fn by_v1_plural(path: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.v1_plural == path)
}

pub fn by_v1_singular(path: &str) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.v1_singular == path)
}

impl Object {
    pub fn field(&self, key: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.key == key)
    }

    pub fn field_v2(&self, key: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.v2 == key)
    }

    /// The key of a v2 list or batch answer (Vessel's: the same as v1's,
    /// `eventAttendees` for attendees).
    pub fn v2_list_key(&self) -> &'static str {
        self.v1_list_key
    }

    /// The body key of a v2 write: Vessel's (`eventAttendee`), and the
    /// spellings Berth answered to before (`attendee`).
    pub fn v2_write_keys(&self) -> &[&'static str] {
        match self.name {
            "attendees" => &["eventAttendee", "attendee"],
            _ => std::slice::from_ref(&self.v2_one_key),
        }
    }

    /// The event type prefix of this object's changes.
    pub fn event_prefix(&self) -> String {
        format!("object.crm.{}", self.name)
    }
}

/// The fields the filter index holds (when they are strings): the ones
/// people look records up by.
const INDEXED_FIELDS: &[&str] = &[
    "email",
    "phone",
    "mobilePhone",
    "name",
    "website",
    "account",
    "subject",
    "from",
];

/// How many characters of a value the filter index keeps.
const INDEX_VALUE_CHARS: usize = 128;

/// A value as the filter index holds it: lower-cased (one entry serves
/// exact and case-insensitive conditions) and cut short. Candidates are
/// always checked again by the filter itself.
pub fn index_value(s: &str) -> String {
    s.to_lowercase().chars().take(INDEX_VALUE_CHARS).collect()
}

/// Whether the filter index holds `key` of `o`'s records.
pub fn indexed_field(o: &Object, key: &str) -> bool {
    INDEXED_FIELDS.contains(&key) && o.field(key).is_some_and(|f| f.kind == Kind::Str)
}

/// The association keys a filter may name on `o` (Berth's extension):
/// those its answers show, for ids of one target object.
pub fn association_filter_target(o: &Object, key: &str, v2: bool) -> Option<&'static str> {
    let shown = if v2 {
        o.v2_associations
    } else {
        o.v1_associations
    };
    shown
        .contains(&key)
        .then(|| association_object(key))
        .flatten()
}

/// The filter index entries of a record: its indexed fields, and each
/// association as the uid of the record it points at (v1 and v2 ids of
/// that record both lead to it).
pub fn index_keys(
    o: &Object,
    connection_id: &str,
    data: &Map<String, Value>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for fd in o.fields.iter().filter(|f| indexed_field(o, f.key)) {
        if let Some(v) = data.get(fd.key).and_then(Value::as_str) {
            out.push((fd.key, index_value(v)));
        }
    }
    let Some(assoc) = assoc_of(data) else {
        return out;
    };
    let mut keys: Vec<&'static str> = o
        .v1_associations
        .iter()
        .chain(o.v2_associations)
        .copied()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let Some(target) = association_object(key) else {
            continue;
        };
        let ids: Vec<&str> = match assoc.get(key) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        for id in ids {
            let entry = (key, uid(connection_id, target, id));
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    out
}

/// The v1 id type (`v.<type>.`) of the object an association key points at.
pub fn association_type(key: &str) -> Option<&'static str> {
    Some(match key {
        "ownerUserId" => "user",
        "accountIds" => "account",
        "contactIds" => "contact",
        "dealIds" => "deal",
        "leadIds" => "lead",
        "noteIds" => "note",
        "taskIds" => "task",
        "eventIds" | "eventId" => "event",
        "eventAttendeeIds" => "eventAttendee",
        "emailIds" => "email",
        "callIds" => "call",
        _ => return None,
    })
}

/// The store object an association key points at.
pub fn association_object(key: &str) -> Option<&'static str> {
    Some(match key {
        "ownerUserId" => "users",
        "accountIds" => "accounts",
        "contactIds" => "contacts",
        "dealIds" => "deals",
        "leadIds" => "leads",
        "noteIds" => "notes",
        "taskIds" => "tasks",
        "eventIds" | "eventId" => "events",
        "eventAttendeeIds" => "attendees",
        "emailIds" => "emails",
        "callIds" => "calls",
        _ => return None,
    })
}

/// The association key that lists records of `object` (`notes` →
/// `noteIds`).
fn ids_key(object: &str) -> Option<&'static str> {
    Some(match object {
        "accounts" => "accountIds",
        "contacts" => "contactIds",
        "deals" => "dealIds",
        "leads" => "leadIds",
        "notes" => "noteIds",
        "tasks" => "taskIds",
        "events" => "eventIds",
        "attendees" => "eventAttendeeIds",
        "emails" => "emailIds",
        "calls" => "callIds",
        _ => return None,
    })
}

fn shows(o: &Object, key: &str) -> bool {
    o.v1_associations.contains(&key) || o.v2_associations.contains(&key)
}

/// A link a record of `source` implies on another record: record
/// `native_id` of `object` lists it under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseLink {
    pub object: &'static str,
    pub native_id: String,
    pub key: &'static str,
}

/// The reverse associations of a `source` record: for each association of
/// `data` (`associations.accountIds`, `associations.eventId`, ...) whose
/// target object shows a key for `source` (a note's `contactIds` → the
/// contacts' `noteIds`), one link per target. `two_way(key)` names the
/// keys the provider already fills on both sides, which need none.
pub fn reverse_links(
    source: &str,
    data: &Map<String, Value>,
    two_way: impl Fn(&str) -> bool,
) -> Vec<ReverseLink> {
    let Some(back) = ids_key(source) else {
        return Vec::new();
    };
    let Some(assoc) = assoc_of(data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, v) in assoc {
        if key == "ownerUserId" || two_way(key) {
            continue;
        }
        // An attendee's associationId is a contact or a lead, as its
        // associatedObjectType says.
        let target_name = if key == "associationId" {
            match data.get("associatedObjectType").and_then(Value::as_str) {
                Some("contact") => Some("contacts"),
                Some("lead") => Some("leads"),
                _ => None,
            }
        } else {
            association_object(key)
        };
        let Some(target) = target_name.and_then(object) else {
            continue;
        };
        if !shows(target, back) {
            continue;
        }
        let ids: Vec<&str> = match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        for id in ids.into_iter().filter(|s| !s.is_empty()) {
            let link = ReverseLink {
                object: target.name,
                native_id: id.to_string(),
                key: back,
            };
            if !out.contains(&link) {
                out.push(link);
            }
        }
    }
    out
}

/// The objects whose records can add reverse associations to `target`'s
/// (so its rendered records change when theirs do).
pub fn reverse_sources(target: &Object) -> Vec<&'static str> {
    let Some(key) = ids_key(target.name) else {
        return Vec::new();
    };
    OBJECTS
        .iter()
        .filter(|s| {
            ids_key(s.name).is_some_and(|back| shows(target, back))
                && (shows(s, key) || (target.name == "events" && shows(s, "eventId")))
        })
        .map(|s| s.name)
        .collect()
}

/// Adds reverse associations (`(key, source native id)`) to a record's
/// `data.associations`, after its own, without duplicates.
pub fn merge_reverse(data: &mut Map<String, Value>, links: &[(&str, &str)]) {
    if links.is_empty() {
        return;
    }
    let assoc = data
        .entry("associations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !assoc.is_object() {
        *assoc = Value::Object(Map::new());
    }
    let Value::Object(assoc) = assoc else { return };
    for (key, id) in links {
        let e = assoc
            .entry((*key).to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !e.is_array() {
            *e = Value::Array(Vec::new());
        }
        if let Value::Array(a) = e
            && !a.iter().any(|x| x.as_str() == Some(id))
        {
            a.push(Value::String((*id).to_string()));
        }
    }
}

/// The 32-hex uid of a record, stable for (connection, object, native id),
/// so association ids can be shown as v1 ids without a lookup.
pub fn uid(connection_id: &str, object: &str, native_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(connection_id.as_bytes());
    h.update([0]);
    h.update(object.as_bytes());
    h.update([0]);
    h.update(native_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// `v.<type>.<uid>`.
pub fn v1_id(v1_type: &str, uid: &str) -> String {
    format!("v.{v1_type}.{uid}")
}

/// The uid inside a v1 id of the given type, if it is one.
pub fn parse_v1_id<'a>(v1_type: &str, id: &'a str) -> Option<&'a str> {
    let rest = id
        .strip_prefix("v.")?
        .strip_prefix(v1_type)?
        .strip_prefix('.')?;
    (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(rest)
}

/// The content hash that decides whether a record changed.
pub fn content_hash(data: &Value, native: &Value) -> String {
    content_hash_of(&data.to_string(), &native.to_string())
}

/// [`content_hash`] of the two already serialised.
pub fn content_hash_of(data: &str, native: &str) -> String {
    let mut h = Sha256::new();
    h.update(data.as_bytes());
    h.update([0]);
    h.update(native.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Milliseconds → ISO 8601 (`2024-01-02T03:04:05.000Z`).
pub fn iso(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// A stored record as the renderers need it.
pub struct RecordView<'a> {
    pub connection_id: &'a str,
    pub native_id: &'a str,
    pub uid: &'a str,
    pub data: &'a Map<String, Value>,
    pub native: &'a Value,
    pub created_time: Option<i64>,
    pub modified_time: Option<i64>,
}

fn assoc_of(data: &Map<String, Value>) -> Option<&Map<String, Value>> {
    data.get("associations").and_then(Value::as_object)
}

/// The v1 shape: v1 ids, associations as v1 ids, `additional` when
/// `all_fields`.
pub fn render_v1(o: &Object, r: &RecordView<'_>, all_fields: bool) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(v1_id(o.v1_type, r.uid)));
    m.insert("nativeId".into(), json!(r.native_id));
    for fd in o.fields {
        m.insert(
            fd.key.into(),
            r.data.get(fd.key).cloned().unwrap_or(Value::Null),
        );
    }
    m.insert("createdTime".into(), iso(r.created_time));
    m.insert("modifiedTime".into(), iso(r.modified_time));
    // Always there, `{}` for users: Vessel's schemas require it.
    let assoc = assoc_of(r.data);
    let mut a = Map::new();
    for key in o.v1_associations {
        let v = assoc.and_then(|a| a.get(*key));
        a.insert((*key).into(), v1_assoc(r, key, v));
    }
    m.insert("associations".into(), Value::Object(a));
    if all_fields {
        m.insert("additional".into(), r.native.clone());
    }
    Value::Object(m)
}

fn v1_assoc(r: &RecordView<'_>, key: &str, v: Option<&Value>) -> Value {
    let map_one = |target: &str, t: &str, id: &Value| -> Value {
        match id.as_str() {
            Some(n) => json!(v1_id(t, &uid(r.connection_id, target, n))),
            None => Value::Null,
        }
    };
    if key == "associationId" {
        // Points at a contact or a lead, per associatedObjectType.
        let target = match r.data.get("associatedObjectType").and_then(Value::as_str) {
            Some("lead") => ("leads", "lead"),
            _ => ("contacts", "contact"),
        };
        return v.map_or(Value::Null, |id| map_one(target.0, target.1, id));
    }
    let (Some(t), Some(target)) = (association_type(key), association_object(key)) else {
        return v.cloned().unwrap_or(Value::Null);
    };
    match v {
        Some(Value::Array(ids)) => {
            Value::Array(ids.iter().map(|id| map_one(target, t, id)).collect())
        }
        Some(id @ Value::String(_)) => map_one(target, t, id),
        _ if key.ends_with("Ids") => json!([]),
        _ => Value::Null,
    }
}

/// The association names a v2 caller may ask for, and the keys they fill.
pub fn v2_association_keys(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "users" => &["ownerUserId"],
        "deals" => &["dealIds"],
        "accounts" => &["accountIds"],
        "leads" => &["leadIds"],
        "contacts" => &["contactIds"],
        "attendees" => &["eventAttendeeIds"],
        _ => return None,
    })
}

/// The v2 shape: native ids, v2 field names, `$native` when asked,
/// `associations` limited to the requested ones (all when `None`).
pub fn render_v2(
    o: &Object,
    r: &RecordView<'_>,
    include_native: bool,
    associations: Option<&[&str]>,
) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.native_id));
    for fd in o.fields {
        let v = r.data.get(fd.key).cloned().unwrap_or(Value::Null);
        // v2 names an attendee's object in the plural (`contacts`,
        // `leads`, `other`); the canonical form is v1's singular.
        let v = match (o.name, fd.key, v) {
            ("attendees", "associatedObjectType", Value::String(t)) if t != "other" => {
                Value::String(format!("{t}s"))
            }
            (_, _, v) => v,
        };
        m.insert(fd.v2.into(), v);
    }
    m.insert("createdTime".into(), iso(r.created_time));
    m.insert("modifiedTime".into(), iso(r.modified_time));
    // Every key the object's schema lists is always there, `[]` or `null`
    // when empty; keys the caller did not ask for are left empty, except
    // `ownerUserId`, which Vessel always includes.
    let assoc = assoc_of(r.data);
    let mut a = Map::new();
    for key in o.v2_associations {
        let wanted = *key == "ownerUserId" || associations.is_none_or(|want| want.contains(key));
        let v = if wanted {
            assoc.and_then(|a| a.get(*key)).cloned()
        } else {
            None
        };
        let v = match v {
            Some(v) => v,
            None if key.ends_with("Ids") => json!([]),
            None => Value::Null,
        };
        a.insert((*key).into(), v);
    }
    m.insert("associations".into(), Value::Object(a));
    m.insert(
        "$native".into(),
        if include_native {
            r.native.clone()
        } else {
            Value::Null
        },
    );
    Value::Object(m)
}

/// The `details` Field list of an object: unified fields first, then the
/// provider's own (`custom: true` when the connector says so).
pub fn details(o: &Object, v2_names: bool) -> Vec<Value> {
    o.fields
        .iter()
        .map(|fd| {
            json!({
                "key": if v2_names { fd.v2 } else { fd.key },
                "name": fd.key,
                "type": fd.kind.field_type(),
                "isArray": fd.kind == Kind::List,
                "custom": false,
                "universal": true,
                "required": fd.required_on_create,
                "creatable": o.writable,
                "updatable": o.writable,
            })
        })
        .collect()
}

/// The association keys a write body may carry, flat (Berth's and v1's
/// shape) or under `associations` (Vessel v2's `*Create`/`*Update`
/// schemas): one id (`accountId`) or several (`contactIds`).
const WRITE_ASSOCIATIONS: &[&str] = &[
    "accountId",
    "contactId",
    "dealId",
    "leadId",
    "ownerUserId",
    "eventId",
    "associationId",
    "contactIds",
    "accountIds",
    "dealIds",
    "leadIds",
];

/// Keys of a record as it is read back that a write body may repeat and
/// that are ignored: Vessel's own `accounts/update` example sends
/// `createdTime` and `modifiedTime`.
const READ_ONLY: &[&str] = &["id", "nativeId", "createdTime", "modifiedTime"];

/// The write-body keys holding ids of other records, for callers that
/// translate them (v1 ids to native ids), with the store object each
/// points at; `associationId` follows `associatedObjectType`.
pub fn write_association_target(key: &str, canonical: &Map<String, Value>) -> Option<&'static str> {
    match key {
        "accountId" | "accountIds" => Some("accounts"),
        "contactId" | "contactIds" => Some("contacts"),
        "dealId" | "dealIds" => Some("deals"),
        "leadId" | "leadIds" => Some("leads"),
        "ownerUserId" => Some("users"),
        "eventId" => Some("events"),
        "associationId" => match canonical
            .get("associatedObjectType")
            .and_then(Value::as_str)
        {
            Some("lead") => Some("leads"),
            _ => Some("contacts"),
        },
        _ => None,
    }
}

/// An email's participant (`contact: {id, role}`, `leads: [{id, role}]`):
/// its id, or why it is refused.
fn participant_ids(v: &Value) -> Result<Vec<Value>, String> {
    let one = |p: &Value| -> Result<Value, String> {
        match p {
            Value::String(_) => Ok(p.clone()),
            Value::Object(m) => match m.get("id") {
                Some(id @ Value::String(_)) => match m.get("role").and_then(Value::as_str) {
                    None | Some("from" | "to" | "cc" | "bcc") => Ok(id.clone()),
                    Some(r) => Err(format!(
                        "role `{}` is not one of from, to, cc, bcc",
                        r.escape_debug()
                    )),
                },
                _ => Err("needs an `id` string".into()),
            },
            _ => Err("must be `{id, role}`".into()),
        }
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        Value::Null => Ok(Vec::new()),
        other => one(other).map(|id| vec![id]),
    }
}

/// Adds one association of a write body to the canonical map: email
/// participants become `contactId`/`contactIds` (`leadId`/`leadIds`),
/// the rest is kept under its own key.
fn put_association(
    o: &Object,
    out: &mut Map<String, Value>,
    errors: &mut Vec<(String, String)>,
    shown: &str,
    key: &str,
    v: &Value,
) {
    let participant = match key {
        "contact" | "contacts" => Some(("contactId", "contactIds")),
        "lead" | "leads" => Some(("leadId", "leadIds")),
        _ => None,
    };
    if let Some((single, many)) = participant.filter(|_| o.name == "emails") {
        match participant_ids(v) {
            Ok(ids) => {
                if let Some(first) = ids.first() {
                    out.entry(single).or_insert_with(|| first.clone());
                }
                let e = out.entry(many).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = e {
                    a.extend(ids);
                }
            }
            Err(why) => errors.push((shown.to_string(), why)),
        }
        return;
    }
    if !WRITE_ASSOCIATIONS.contains(&key) {
        errors.push((
            shown.to_string(),
            format!("is not an association of {}", o.name),
        ));
        return;
    }
    let ok = if key.ends_with("Ids") {
        v.is_null() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    } else {
        v.is_null() || v.is_string()
    };
    if !ok {
        let want = if key.ends_with("Ids") {
            "an array of id strings"
        } else {
            "an id string"
        };
        errors.push((shown.to_string(), format!("must be {want}")));
        return;
    }
    out.insert(key.to_string(), v.clone());
}

/// Converts a write body in the caller's generation's names into the
/// canonical field map; unknown keys are refused by name. Associations
/// are taken flat or nested under `associations`, read-only keys of the
/// read shape are ignored, and an attendee's `associatedObjectType` is
/// singular (`contacts` → `contact`).
pub fn input_to_canonical(
    o: &Object,
    input: &Map<String, Value>,
    v2_names: bool,
    creating: bool,
) -> Result<Map<String, Value>, Vec<(String, String)>> {
    let mut out = Map::new();
    let mut errors = Vec::new();
    for (k, v) in input {
        if k == "additional" || k == "$native" {
            if v.is_null() {
                continue;
            }
            if !v.is_object() {
                errors.push((k.clone(), "must be an object".into()));
            } else {
                out.insert("$native".into(), v.clone());
            }
            continue;
        }
        if READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        if k == "associations" {
            match v {
                Value::Null => {}
                Value::Object(m) => {
                    for (ak, av) in m {
                        let shown = format!("associations.{ak}");
                        put_association(o, &mut out, &mut errors, &shown, ak, av);
                    }
                }
                _ => errors.push((k.clone(), "must be an object".into())),
            }
            continue;
        }
        if WRITE_ASSOCIATIONS.contains(&k.as_str())
            || (o.name == "emails"
                && matches!(k.as_str(), "contact" | "contacts" | "lead" | "leads"))
        {
            put_association(o, &mut out, &mut errors, k, k, v);
            continue;
        }
        // Notes accept `content` on create.
        let key = if o.name == "notes" && k == "content" {
            "contentText"
        } else {
            k.as_str()
        };
        let fd = if v2_names {
            o.field_v2(key)
        } else {
            o.field(key)
        };
        let Some(fd) = fd else {
            errors.push((k.clone(), format!("unknown field of {}", o.name)));
            continue;
        };
        if !v.is_null() && !kind_accepts(fd.kind, v) {
            errors.push((k.clone(), format!("must be {}", describe(fd.kind))));
            continue;
        }
        let v = match (o.name, fd.key, v) {
            ("attendees", "associatedObjectType", Value::String(t)) => {
                Value::String(t.strip_suffix('s').unwrap_or(t).to_string())
            }
            _ => v.clone(),
        };
        out.insert(fd.key.into(), v);
    }
    if creating {
        for fd in o.fields.iter().filter(|f| f.required_on_create) {
            if out.get(fd.key).is_none_or(Value::is_null) {
                let shown = if v2_names { fd.v2 } else { fd.key };
                errors.push((shown.into(), "is required".into()));
            }
        }
        if o.name == "attendees" && out.get("eventId").is_none_or(Value::is_null) {
            errors.push(("associations.eventId".into(), "is required".into()));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

pub fn kind_accepts(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Str => v.is_string(),
        Kind::Num => v.is_number() || v.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
        Kind::Bool => v.is_boolean(),
        Kind::Date => v.as_str().is_some_and(|s| {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
                || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        }),
        Kind::List => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Kind::Obj => v.is_object(),
    }
}

pub fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Num => "a number",
        Kind::Bool => "a boolean",
        Kind::Date => "an ISO 8601 date or date-time",
        Kind::List => "an array of strings",
        Kind::Obj => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_links_name_the_key_the_target_shows() {
        let data = serde_json::json!({"associations": {
            "contactIds": ["c1", "c2", "c1"], "accountIds": ["a1"], "ownerUserId": "u1",
        }});
        let links = reverse_links("notes", data.as_object().unwrap(), |_| false);
        let got: Vec<(&str, &str, &str)> = links
            .iter()
            .map(|l| (l.object, l.native_id.as_str(), l.key))
            .collect();
        assert_eq!(
            got,
            [
                ("accounts", "a1", "noteIds"),
                ("contacts", "c1", "noteIds"),
                ("contacts", "c2", "noteIds"),
            ],
            "owners are not linked back; duplicates collapse"
        );
        // Keys the provider fills on both sides need no link.
        assert!(
            reverse_links("notes", data.as_object().unwrap(), |k| k != "accountIds")
                .iter()
                .all(|l| l.object == "accounts")
        );
        // An attendee's scalar eventId lists it on the event, and its
        // associationId on the contact or lead it is.
        let a = serde_json::json!({"associatedObjectType": "lead",
            "associations": {"eventId": "e1", "associationId": "l1"}});
        let links = reverse_links("attendees", a.as_object().unwrap(), |_| false);
        let got: Vec<(&str, &str, &str)> = links
            .iter()
            .map(|l| (l.object, l.native_id.as_str(), l.key))
            .collect();
        assert_eq!(
            got,
            [
                ("leads", "l1", "eventAttendeeIds"),
                ("events", "e1", "eventAttendeeIds")
            ]
        );
        // Lists show contacts; contacts show no lists.
        let l = serde_json::json!({"associations": {"contactIds": ["c1"]}});
        assert!(reverse_links("lists", l.as_object().unwrap(), |_| false).is_empty());
    }

    #[test]
    fn reverse_sources_feed_each_target() {
        let contacts = reverse_sources(object("contacts").unwrap());
        for s in [
            "accounts", "deals", "leads", "notes", "tasks", "events", "emails", "calls",
        ] {
            assert!(contacts.contains(&s), "{s} in {contacts:?}");
        }
        assert!(reverse_sources(object("events").unwrap()).contains(&"attendees"));
        // A provider that fills contact.noteIds alone still shows the
        // note's contactIds.
        assert!(reverse_sources(object("notes").unwrap()).contains(&"contacts"));
        assert!(reverse_sources(object("lists").unwrap()).is_empty());
        assert!(reverse_sources(object("users").unwrap()).is_empty());
    }

    #[test]
    fn v1_ids_round_trip() {
        let u = uid("conn", "contacts", "23");
        assert_eq!(u.len(), 32);
        let id = v1_id("contact", &u);
        assert_eq!(parse_v1_id("contact", &id), Some(u.as_str()));
        assert_eq!(parse_v1_id("deal", &id), None);
        assert_eq!(parse_v1_id("contact", "v.contact.xyz"), None);
    }

    #[test]
    fn renders_both_generations() {
        let o = object("emails").unwrap();
        let data = json!({"from": "a@x", "to": ["b@x"], "subject": "s", "body": "hi",
            "associations": {"contactIds": ["7"], "ownerUserId": "1"}});
        let native = json!({"raw": true});
        let r = RecordView {
            connection_id: "c",
            native_id: "9",
            uid: &uid("c", "emails", "9"),
            data: data.as_object().unwrap(),
            native: &native,
            created_time: Some(0),
            modified_time: Some(1000),
        };
        let v1 = render_v1(o, &r, true);
        assert_eq!(v1["body"], "hi");
        assert_eq!(v1["additional"]["raw"], true);
        assert_eq!(
            v1["associations"]["contactIds"][0],
            json!(v1_id("contact", &uid("c", "contacts", "7")))
        );
        assert_eq!(v1["associations"]["accountIds"], json!([]));
        let v2 = render_v2(o, &r, false, Some(&["contactIds"]));
        assert_eq!(v2["id"], "9");
        assert_eq!(v2["bodyText"], "hi");
        assert_eq!(v2["$native"], Value::Null);
        assert_eq!(
            v2["associations"],
            json!({"ownerUserId": "1", "contactIds": ["7"], "dealIds": [], "accountIds": [], "leadIds": []}),
            "every key, the unasked ones empty, the owner always"
        );
        assert_eq!(v2["modifiedTime"], "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn vessels_write_shapes_are_taken() {
        // v2: associations nested; read-only keys of the read shape ignored.
        let o = object("contacts").unwrap();
        let body = json!({"lastName": "L", "createdTime": "2019-08-24T14:15:22Z",
            "modifiedTime": "x", "id": "9",
            "associations": {"accountId": "4", "ownerUserId": "7"}});
        let m = input_to_canonical(o, body.as_object().unwrap(), true, true).unwrap();
        assert_eq!(m["accountId"], "4");
        assert_eq!(m["ownerUserId"], "7");
        assert!(!m.contains_key("createdTime") && !m.contains_key("associations"));
        // Emails: participants as one object or arrays, with roles.
        let e = object("emails").unwrap();
        let body = json!({"from": "a@x", "to": ["b@x"], "subject": "s",
            "contact": {"id": "c1", "role": "to"}, "leads": [{"id": "l1", "role": "cc"}, {"id": "l2"}]});
        let m = input_to_canonical(e, body.as_object().unwrap(), false, true).unwrap();
        assert_eq!(m["contactId"], "c1");
        assert_eq!(m["contactIds"], json!(["c1"]));
        assert_eq!(m["leadIds"], json!(["l1", "l2"]));
        let bad = json!({"from": "a@x", "to": ["b@x"], "subject": "s",
            "contact": {"id": "c1", "role": "boss"}, "associations": {"colour": "red"}});
        let errs = input_to_canonical(e, bad.as_object().unwrap(), false, true).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(fields, ["associations.colour", "contact"]);
        // Attendees: the plural object type, and the event is required.
        let a = object("attendees").unwrap();
        let body =
            json!({"associatedObjectType": "contacts", "associations": {"associationId": "c1"}});
        let errs = input_to_canonical(a, body.as_object().unwrap(), true, true).unwrap_err();
        assert_eq!(errs[0].0, "associations.eventId");
        let body = json!({"associatedObjectType": "leads",
            "associations": {"associationId": "l1", "eventId": "e1"}});
        let m = input_to_canonical(a, body.as_object().unwrap(), true, true).unwrap();
        assert_eq!(m["associatedObjectType"], "lead");
        assert_eq!(write_association_target("associationId", &m), Some("leads"));
    }

    #[test]
    fn inputs_are_checked_by_name_and_type() {
        let o = object("contacts").unwrap();
        let ok = json!({"lastName": "L", "email": "e@x", "accountId": "4"});
        let m = input_to_canonical(o, ok.as_object().unwrap(), false, true).unwrap();
        assert_eq!(m["lastName"], "L");
        let bad = json!({"email": 5, "nope": 1});
        let errs = input_to_canonical(o, bad.as_object().unwrap(), false, true).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.0.as_str()).collect();
        assert!(
            fields.contains(&"email") && fields.contains(&"nope") && fields.contains(&"lastName")
        );
    }
}
