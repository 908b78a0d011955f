//! The event catalogue, subscription filters and the payload shapes each
//! endpoint flavor receives.

use berth_store::{Event, EventFilter};
use serde_json::{Value, json};

/// Event types that are not object or provider events.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    (
        "connection.created",
        "A connection was created (connect flow or link exchange).",
    ),
    (
        "connection.deleted",
        "A connection was deleted; its access token no longer works.",
    ),
    (
        "connection.status_changed",
        "A connection's status moved (NEW_CONNECTION → INITIAL_SYNCED → READY); v1 endpoints get it as STATUS_CHANGE.",
    ),
    (
        "connection.auth_failed",
        "The provider refused the connection's credentials (refresh token revoked, password changed); the end user must re-authenticate.",
    ),
    (
        "connection.reauthorized",
        "A connection was re-authenticated and works again (same id).",
    ),
    (
        "system.sync.initial.complete",
        "The first 30 days of every synced object of a connection are in the cache (Vessel v2's name).",
    ),
    ("sync.completed", "A sync run finished."),
    ("sync.failed", "A sync run failed; `data.error` says why."),
    (
        "sync.object_unavailable",
        "The provider refused one object for good (403, 404: a missing scope or an object the account lacks); `data.object` and `data.error` say which and why. The other objects go on syncing; this one is tried again at the next full re-sync.",
    ),
    (
        "webhook.disabled",
        "A webhook endpoint was disabled (410 Gone, or failing for longer than the configured time).",
    ),
];

/// Object event verticals and the plurals each has.
pub const OBJECTS: &[(&str, &[&str])] = &[
    (
        "crm",
        &[
            "users",
            "contacts",
            "accounts",
            "deals",
            "leads",
            "notes",
            "tasks",
            "events",
            "attendees",
            "emails",
            "calls",
            "lists",
        ],
    ),
    (
        "engagement",
        &[
            "users",
            "accounts",
            "contacts",
            "emails",
            "sequences",
            "mailboxes",
        ],
    ),
    ("chat", &["users", "channels", "messages"]),
    ("marketing-automation", &["contacts", "lists", "users"]),
    ("dialer", &["users", "contacts", "calls"]),
];

pub const ACTIONS: &[&str] = &["created", "updated", "deleted"];

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `t` is an event type Berth can emit.
pub fn known_type(t: &str) -> bool {
    if EVENT_TYPES.iter().any(|(n, _)| *n == t) {
        return true;
    }
    let parts: Vec<&str> = t.split('.').collect();
    match parts.as_slice() {
        ["object", v, p, a] => {
            OBJECTS.iter().any(|(ov, ps)| ov == v && ps.contains(p)) && ACTIONS.contains(a)
        }
        ["provider", id, rest @ ..] => {
            is_slug(id)
                && !rest.is_empty()
                && rest.iter().all(|r| {
                    !r.is_empty()
                        && r.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
                })
        }
        _ => false,
    }
}

/// Parses one subscription filter: an event type, a prefix wildcard
/// (`object.crm.*`) or `*`.
pub fn parse_filter(f: &str) -> Result<EventFilter, String> {
    let f = f.trim();
    if f == "*" {
        return Ok(EventFilter {
            pattern: "*".into(),
            prefix: Some(String::new()),
        });
    }
    if let Some(prefix) = f.strip_suffix('*') {
        let ok = prefix.ends_with('.')
            && (EVENT_TYPES.iter().any(|(n, _)| n.starts_with(prefix))
                || object_prefix(prefix)
                || provider_prefix(prefix));
        return if ok {
            Ok(EventFilter {
                pattern: f.into(),
                prefix: Some(prefix.into()),
            })
        } else {
            Err(format!(
                "`{f}` matches no event type; a wildcard is a dotted prefix of one, such as `object.crm.*` or `connection.*`"
            ))
        };
    }
    if known_type(f) {
        Ok(EventFilter {
            pattern: f.into(),
            prefix: None,
        })
    } else {
        Err(format!(
            "unknown event type `{f}`; the catalogue is in the README (`connection.created`, `object.crm.contacts.updated`, `object.crm.*`, `*`, ...)"
        ))
    }
}

fn object_prefix(p: &str) -> bool {
    let parts: Vec<&str> = p.trim_end_matches('.').split('.').collect();
    match parts.as_slice() {
        ["object"] => true,
        ["object", v] => OBJECTS.iter().any(|(ov, _)| ov == v),
        ["object", v, pl] => OBJECTS.iter().any(|(ov, ps)| ov == v && ps.contains(pl)),
        _ => false,
    }
}

fn provider_prefix(p: &str) -> bool {
    let parts: Vec<&str> = p.trim_end_matches('.').split('.').collect();
    match parts.as_slice() {
        ["provider"] => true,
        ["provider", id] => is_slug(id),
        _ => false,
    }
}

/// The filters of a subscription, validated and de-duplicated.
pub fn parse_filters(fs: &[String]) -> Result<Vec<EventFilter>, String> {
    if fs.is_empty() {
        return Err("at least one event type is required (`*` for all)".into());
    }
    let mut out: Vec<EventFilter> = Vec::new();
    for f in fs {
        let p = parse_filter(f)?;
        if !out.iter().any(|o| o.pattern == p.pattern) {
            out.push(p);
        }
    }
    Ok(out)
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What an endpoint flavor receives for `event`.
pub fn render(flavor: &str, event: &Event) -> Value {
    let data: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    match flavor {
        "v2" => {
            let mut body = json!({
                "connectionId": event.connection_id,
                "eventId": event.id,
                "eventTime": iso(event.created_at),
                "eventType": event.event_type,
            });
            if event.event_type.starts_with("object.") {
                // Vessel v2 sends only the id of the changed object.
                body["data"] = json!({ "id": data.get("id").cloned().unwrap_or(Value::Null) });
            } else if event.event_type != "system.sync.initial.complete" {
                body["data"] = data;
            }
            body
        }
        "v1" => v1_body(event, data),
        _ => json!({
            "id": event.id,
            "type": event.event_type,
            "timestamp": iso(event.created_at),
            "connectionId": event.connection_id,
            "data": data,
        }),
    }
}

fn v1_body(event: &Event, data: Value) -> Value {
    let parts: Vec<&str> = event.event_type.split('.').collect();
    if let ["object", _, plural, action] = parts.as_slice() {
        let object_type = match *plural {
            "contacts" => "Contact",
            "accounts" => "Account",
            "deals" => "Deal",
            "leads" => "Lead",
            "users" => "User",
            "notes" => "Note",
            "tasks" => "Task",
            "events" => "Event",
            "attendees" => "EventAttendee",
            "emails" => "Email",
            "calls" => "Call",
            other => other,
        };
        let event_type = match *action {
            "created" => "CREATE",
            "updated" => "UPDATE",
            _ => "DELETE",
        };
        let record = if *action == "deleted" {
            json!({
                "id": data.get("v1Id").or_else(|| data.get("id")).cloned().unwrap_or(Value::Null),
                "nativeId": data.get("nativeId").or_else(|| data.get("id")).cloned().unwrap_or(Value::Null),
                "connectionId": event.connection_id,
            })
        } else {
            data.get("record").cloned().unwrap_or(data)
        };
        return json!({
            "eventId": event.id,
            "type": "OBJECT_CHANGE",
            "data": {"objectType": object_type, "eventType": event_type, "record": record},
        });
    }
    if event.event_type == "connection.status_changed" {
        return json!({
            "eventId": event.id,
            "type": "STATUS_CHANGE",
            "data": {"status": data.get("status").cloned().unwrap_or(Value::Null)},
        });
    }
    json!({"eventId": event.id, "type": event.event_type, "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "*",
            "connection.created",
            "connection.*",
            "object.*",
            "object.crm.*",
            "object.crm.contacts.*",
            "object.crm.deals.deleted",
            "object.chat.messages.created",
            "system.sync.initial.complete",
            "system.*",
            "provider.hubspot.contact.creation",
            "provider.hubspot.*",
            "provider.*",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "connection",
            "connection.made",
            "object.crm.widgets.created",
            "object.crm.contacts.merged",
            "objec*",
            "object.nope.*",
            "provider.",
            "provider.HubSpot.x",
            "**",
            "connection.*.x",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_filter("object.crm.*").unwrap().prefix.as_deref(),
            Some("object.crm.")
        );
        assert!(parse_filters(&[]).is_err());
    }

    fn event(t: &str, payload: Value) -> Event {
        Event {
            seq: 1,
            id: "evt_1".into(),
            environment_id: "env".into(),
            connection_id: Some("conn".into()),
            event_type: t.into(),
            payload: payload.to_string(),
            created_at: 0,
        }
    }

    #[test]
    fn shapes() {
        let e = event(
            "object.crm.deals.deleted",
            json!({"id": "d1", "record": {"id": "d1"}}),
        );
        assert_eq!(render("v2", &e)["data"], json!({"id": "d1"}));
        assert_eq!(render("v2", &e)["eventType"], "object.crm.deals.deleted");
        let v1 = render("v1", &e);
        assert_eq!(v1["type"], "OBJECT_CHANGE");
        assert_eq!(v1["data"]["objectType"], "Deal");
        assert_eq!(v1["data"]["eventType"], "DELETE");
        assert_eq!(v1["data"]["record"]["connectionId"], "conn");
        let s = event("connection.status_changed", json!({"status": "READY"}));
        assert_eq!(
            render("v1", &s),
            json!({"eventId": "evt_1", "type": "STATUS_CHANGE", "data": {"status": "READY"}})
        );
        let i = event("system.sync.initial.complete", json!({}));
        assert!(render("v2", &i).get("data").is_none());
        assert_eq!(render("berth", &s)["type"], "connection.status_changed");
    }
}
