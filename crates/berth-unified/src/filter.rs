//! Vessel's Prisma-style filters (v1 search, v2 list), parsed against an
//! object's fields and evaluated on the rendered record.

use serde_json::{Map, Value};

use crate::crm::{self, Kind, Object};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("filters must be an object of field → condition")]
    NotAnObject,
    #[error("unknown field `{0}` in filters")]
    UnknownField(String),
    #[error("the condition on `{0}` must be an object of operators")]
    NotConditions(String),
    #[error("unknown operator `{op}` on `{field}`; {kind} fields take {allowed}")]
    UnknownOperator {
        field: String,
        op: String,
        kind: &'static str,
        allowed: &'static str,
    },
    #[error("`{field}.{op}` must be {expected}")]
    WrongType {
        field: String,
        op: String,
        expected: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldClass {
    Str,
    Num,
    Date,
    Bool,
    List,
}

#[derive(Debug, Clone)]
struct Cond {
    /// The key in the rendered record.
    field: String,
    class: FieldClass,
    op: String,
    value: Value,
    insensitive: bool,
    /// The key of the filter index that holds this field, if one does.
    index_key: Option<&'static str>,
    /// For an association key (Berth's extension): the object it points
    /// at. Its values are under the record's `associations`.
    target: Option<&'static str>,
}

/// How the filter index can narrow a condition (see [`Filter::probes`]):
/// every record that passes the condition is among the probe's.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// No record can pass (`in: []`).
    Nothing,
    /// Index entries of `key` equal to one of `values`.
    Values {
        key: &'static str,
        values: Vec<String>,
    },
    /// An association: index entries of `key` holding one of `uids`, or
    /// records that records of `target` link to under `key`. `natives`
    /// are the native ids of the same records when the caller named them
    /// so (v2); v1 callers name uids, which the store resolves.
    Linked {
        key: &'static str,
        target: &'static str,
        uids: Vec<String>,
        natives: Option<Vec<String>>,
    },
    /// Index entries of `key` in `[lo, hi)`.
    Prefix {
        key: &'static str,
        lo: String,
        hi: String,
    },
    /// `createdTime` or `modifiedTime` within inclusive bounds (ms).
    Time {
        modified: bool,
        lo: Option<i64>,
        hi: Option<i64>,
    },
}

/// A parsed filter: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    conds: Vec<Cond>,
}

const STR_OPS: &str = "equals, contains, startsWith, endsWith, not, in, notIn, mode";
const NUM_OPS: &str = "equals, gt, gte, lt, lte, not, in, notIn";
const BOOL_OPS: &str = "equals, not";
const LIST_OPS: &str = "has, hasEvery, hasSome, isEmpty";

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }

    /// Parses `filters` for `object`, with field names of v2 when `v2`.
    pub fn parse(object: &Object, filters: &Value, v2: bool) -> Result<Self, FilterError> {
        let map = match filters {
            Value::Null => return Ok(Filter::default()),
            Value::Object(m) => m,
            _ => return Err(FilterError::NotAnObject),
        };
        let mut conds = Vec::new();
        for (field, cond) in map {
            let mut index_key = None;
            let mut target = None;
            let class = match field.as_str() {
                "id" | "nativeId" => FieldClass::Str,
                "createdTime" | "modifiedTime" => FieldClass::Date,
                _ => {
                    let fd = if v2 {
                        object.field_v2(field)
                    } else {
                        object.field(field)
                    };
                    if let Some(fd) = fd.filter(|f| crm::indexed_field(object, f.key)) {
                        index_key = Some(fd.key);
                    }
                    match fd.map(|f| f.kind) {
                        Some(Kind::Str) => FieldClass::Str,
                        Some(Kind::Num) => FieldClass::Num,
                        Some(Kind::Date) => FieldClass::Date,
                        Some(Kind::Bool) => FieldClass::Bool,
                        Some(Kind::List) => FieldClass::List,
                        Some(Kind::Obj) => {
                            return Err(FilterError::UnknownField(field.clone()));
                        }
                        None => match crm::association_filter_target(object, field, v2) {
                            Some(t) => {
                                target = Some(t);
                                let shown = if v2 {
                                    object.v2_associations
                                } else {
                                    object.v1_associations
                                };
                                index_key = shown.iter().copied().find(|k| k == field);
                                if field.ends_with("Ids") {
                                    FieldClass::List
                                } else {
                                    FieldClass::Str
                                }
                            }
                            None => return Err(FilterError::UnknownField(field.clone())),
                        },
                    }
                }
            };
            let Value::Object(ops) = cond else {
                return Err(FilterError::NotConditions(field.clone()));
            };
            let insensitive = match ops.get("mode") {
                None | Some(Value::Null) => false,
                Some(Value::String(m)) if m == "insensitive" => true,
                Some(Value::String(m)) if m == "default" => false,
                Some(_) if class == FieldClass::Str => {
                    return Err(wrong(field, "mode", "\"insensitive\" or \"default\""));
                }
                Some(_) => return Err(unknown(field, "mode", class)),
            };
            for (op, value) in ops {
                if op == "mode" {
                    continue;
                }
                check_op(field, op, value, class)?;
                conds.push(Cond {
                    field: field.clone(),
                    class,
                    op: op.clone(),
                    value: value.clone(),
                    insensitive,
                    index_key,
                    target,
                });
            }
        }
        Ok(Filter { conds })
    }

    /// Whether a rendered record passes.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.matches_with(record, None)
    }

    /// Whether a rendered record passes, reading association conditions
    /// from `associations` when given (a v2 answer shows only the
    /// associations asked for; the filter sees them all).
    pub fn matches_with(
        &self,
        record: &Map<String, Value>,
        associations: Option<&Map<String, Value>>,
    ) -> bool {
        self.conds.iter().all(|c| {
            if c.target.is_some() {
                let shown = record.get("associations").and_then(Value::as_object);
                c.matches(associations.or(shown).and_then(|a| a.get(&c.field)))
            } else {
                c.matches(record.get(&c.field))
            }
        })
    }

    /// Whether a condition reads associations.
    pub fn reads_associations(&self) -> bool {
        self.conds.iter().any(|c| c.target.is_some())
    }

    /// The ways the filter index can narrow this filter, the most
    /// selective kinds first; empty when no condition is indexed. Each
    /// probe admits every record the whole filter passes (the conditions
    /// are all required), so any one of them will do.
    pub fn probes(&self, connection_id: &str, v2: bool) -> Vec<Probe> {
        let mut out: Vec<Probe> = self
            .conds
            .iter()
            .filter_map(|c| c.probe(connection_id, v2))
            .collect();
        let rank = |p: &Probe| match p {
            Probe::Nothing => 0,
            Probe::Values { values, .. } => values.len(),
            Probe::Linked { uids, .. } => uids.len(),
            Probe::Prefix { .. } => 1_000,
            Probe::Time { .. } => 2_000,
        };
        out.sort_by_key(rank);
        out
    }
}

/// The smallest string greater than every string that starts with `p`
/// (byte order, which is code point order in UTF-8); `None` when there is
/// none.
fn prefix_end(p: &str) -> Option<String> {
    let mut chars: Vec<char> = p.chars().collect();
    while let Some(last) = chars.pop() {
        let mut n = last as u32 + 1;
        if (0xD800..0xE000).contains(&n) {
            n = 0xE000;
        }
        if let Some(c) = char::from_u32(n) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl Cond {
    fn probe(&self, connection_id: &str, v2: bool) -> Option<Probe> {
        let strings = |v: &Value| -> Option<Vec<String>> {
            match v {
                Value::String(s) => Some(vec![s.clone()]),
                Value::Array(a) => Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                ),
                _ => None,
            }
        };
        if let Some(target) = self.target {
            let key = self.index_key?;
            if self.insensitive {
                return None;
            }
            let needles = match (self.class, self.op.as_str()) {
                (FieldClass::List, "has" | "hasSome" | "hasEvery")
                | (FieldClass::Str, "equals" | "in") => strings(&self.value)?,
                _ => return None,
            };
            if needles.is_empty() {
                // `hasEvery: []` passes every record.
                return (self.op != "hasEvery").then_some(Probe::Nothing);
            }
            let (uids, natives) = if v2 {
                let uids = needles
                    .iter()
                    .map(|n| crm::uid(connection_id, target, n))
                    .collect();
                (uids, Some(needles))
            } else {
                let t = crm::association_type(key)?;
                // A needle that is no v1 id of the target's type equals no
                // rendered association.
                let uids = needles
                    .iter()
                    .filter_map(|n| crm::parse_v1_id(t, n).map(str::to_string))
                    .collect::<Vec<_>>();
                if uids.is_empty() {
                    return Some(Probe::Nothing);
                }
                (uids, None)
            };
            return Some(Probe::Linked {
                key,
                target,
                uids,
                natives,
            });
        }
        match self.class {
            FieldClass::Str => {
                let key = self.index_key?;
                match self.op.as_str() {
                    "equals" | "in" => {
                        let values: Vec<String> = strings(&self.value)?
                            .iter()
                            .map(|v| crm::index_value(v))
                            .collect();
                        Some(if values.is_empty() {
                            Probe::Nothing
                        } else {
                            Probe::Values { key, values }
                        })
                    }
                    "startsWith" => {
                        let p = self.value.as_str()?;
                        // Lower-casing keeps a prefix a prefix, except where
                        // a letter's case depends on what follows it (Greek
                        // final sigma): an exact-case prefix must be ASCII.
                        if p.is_empty() || (!self.insensitive && !p.is_ascii()) {
                            return None;
                        }
                        let lo = crm::index_value(p);
                        let hi = prefix_end(&lo)?;
                        Some(Probe::Prefix { key, lo, hi })
                    }
                    _ => None,
                }
            }
            FieldClass::Date if self.field == "createdTime" || self.field == "modifiedTime" => {
                let modified = self.field == "modifiedTime";
                let ms = |v: &Value| date_ms(v);
                let (lo, hi) = match self.op.as_str() {
                    "equals" => {
                        let m = ms(&self.value)?;
                        (Some(m), Some(m))
                    }
                    "gt" => (Some(ms(&self.value)?.saturating_add(1)), None),
                    "gte" => (Some(ms(&self.value)?), None),
                    "lt" => (None, Some(ms(&self.value)?.saturating_sub(1))),
                    "lte" => (None, Some(ms(&self.value)?)),
                    "in" => {
                        let all: Vec<i64> = self.value.as_array()?.iter().filter_map(ms).collect();
                        match (all.iter().min(), all.iter().max()) {
                            (Some(a), Some(b)) => (Some(*a), Some(*b)),
                            _ => return Some(Probe::Nothing),
                        }
                    }
                    _ => return None,
                };
                Some(Probe::Time { modified, lo, hi })
            }
            _ => None,
        }
    }
}

fn unknown(field: &str, op: &str, class: FieldClass) -> FilterError {
    let (kind, allowed) = match class {
        FieldClass::Str => ("string", STR_OPS),
        FieldClass::Num => ("number", NUM_OPS),
        FieldClass::Date => ("date", NUM_OPS),
        FieldClass::Bool => ("boolean", BOOL_OPS),
        FieldClass::List => ("list", LIST_OPS),
    };
    FilterError::UnknownOperator {
        field: field.into(),
        op: op.into(),
        kind,
        allowed,
    }
}

fn wrong(field: &str, op: &str, expected: &'static str) -> FilterError {
    FilterError::WrongType {
        field: field.into(),
        op: op.into(),
        expected,
    }
}

fn date_ms(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_millis())
        })
}

fn scalar_ok(class: FieldClass, v: &Value) -> bool {
    match class {
        FieldClass::Str => v.is_string(),
        FieldClass::Num => v.is_number(),
        FieldClass::Date => date_ms(v).is_some(),
        FieldClass::Bool => v.is_boolean(),
        FieldClass::List => v.is_string(),
    }
}

fn expected(class: FieldClass) -> &'static str {
    match class {
        FieldClass::Str | FieldClass::List => "a string",
        FieldClass::Num => "a number",
        FieldClass::Date => "an ISO 8601 date",
        FieldClass::Bool => "a boolean",
    }
}

fn check_op(field: &str, op: &str, v: &Value, class: FieldClass) -> Result<(), FilterError> {
    let allowed = match class {
        FieldClass::Str => STR_OPS,
        FieldClass::Num | FieldClass::Date => NUM_OPS,
        FieldClass::Bool => BOOL_OPS,
        FieldClass::List => LIST_OPS,
    };
    if !allowed.split(", ").any(|a| a == op) {
        return Err(unknown(field, op, class));
    }
    let ok = match op {
        "in" | "notIn" | "hasEvery" | "hasSome" => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| scalar_ok(class, x))),
        "isEmpty" => v.is_boolean(),
        _ => scalar_ok(class, v),
    };
    if ok {
        Ok(())
    } else {
        let what = match op {
            "in" | "notIn" | "hasEvery" | "hasSome" => "an array of values of the field's type",
            "isEmpty" => "a boolean",
            _ => expected(class),
        };
        Err(wrong(field, op, what))
    }
}

impl Cond {
    fn matches(&self, actual: Option<&Value>) -> bool {
        let actual = actual.unwrap_or(&Value::Null);
        match self.class {
            FieldClass::List => {
                let items: Vec<&str> = actual
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let want = |v: &Value| -> Vec<String> {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                match self.op.as_str() {
                    "has" => self.value.as_str().is_some_and(|s| items.contains(&s)),
                    "hasEvery" => want(&self.value)
                        .iter()
                        .all(|w| items.contains(&w.as_str())),
                    "hasSome" => want(&self.value)
                        .iter()
                        .any(|w| items.contains(&w.as_str())),
                    "isEmpty" => self.value.as_bool() == Some(items.is_empty()),
                    _ => false,
                }
            }
            FieldClass::Str => {
                let norm = |s: &str| {
                    if self.insensitive {
                        s.to_lowercase()
                    } else {
                        s.to_string()
                    }
                };
                let a = actual.as_str().map(norm);
                let v = self.value.as_str().map(norm);
                let list = || -> Vec<String> {
                    self.value
                        .as_array()
                        .map(|x| x.iter().filter_map(Value::as_str).map(norm).collect())
                        .unwrap_or_default()
                };
                match (self.op.as_str(), a) {
                    ("equals", a) => a == v,
                    ("not", a) => a != v,
                    ("contains", Some(a)) => v.is_some_and(|v| a.contains(&v)),
                    ("startsWith", Some(a)) => v.is_some_and(|v| a.starts_with(&v)),
                    ("endsWith", Some(a)) => v.is_some_and(|v| a.ends_with(&v)),
                    ("in", Some(a)) => list().contains(&a),
                    ("notIn", Some(a)) => !list().contains(&a),
                    ("notIn", None) => true,
                    _ => false,
                }
            }
            FieldClass::Bool => match self.op.as_str() {
                "equals" => actual.as_bool() == self.value.as_bool(),
                "not" => actual.as_bool() != self.value.as_bool(),
                _ => false,
            },
            FieldClass::Num | FieldClass::Date => {
                let num = |v: &Value| -> Option<f64> {
                    if self.class == FieldClass::Date {
                        date_ms(v).map(|m| m as f64)
                    } else {
                        v.as_f64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    }
                };
                let a = num(actual);
                let v = num(&self.value);
                let list = || -> Vec<f64> {
                    self.value
                        .as_array()
                        .map(|x| x.iter().filter_map(num).collect())
                        .unwrap_or_default()
                };
                match (self.op.as_str(), a, v) {
                    ("equals", a, v) => a == v,
                    ("not", a, v) => a != v,
                    ("gt", Some(a), Some(v)) => a > v,
                    ("gte", Some(a), Some(v)) => a >= v,
                    ("lt", Some(a), Some(v)) => a < v,
                    ("lte", Some(a), Some(v)) => a <= v,
                    ("in", Some(a), _) => list().contains(&a),
                    ("notIn", Some(a), _) => !list().contains(&a),
                    ("notIn", None, _) => true,
                    _ => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::object;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn string_number_date_bool_and_list_operators() {
        let c = object("contacts").unwrap();
        let f = Filter::parse(
            c,
            &json!({"email": {"endsWith": "@ACME.test", "mode": "insensitive"}, "firstName": {"in": ["Ava", "Liam"]}}),
            false,
        )
        .unwrap();
        assert!(f.matches(&rec(json!({"email": "x@acme.test", "firstName": "Ava"}))));
        assert!(!f.matches(&rec(json!({"email": "x@acme.test", "firstName": "Zed"}))));
        let d = object("deals").unwrap();
        let f = Filter::parse(
            d,
            &json!({"amount": {"gte": 100, "lt": 200}, "isWon": {"equals": true},
                     "modifiedTime": {"gt": "2024-01-01T00:00:00Z"}}),
            false,
        )
        .unwrap();
        assert!(f.matches(&rec(
            json!({"amount": 150, "isWon": true, "modifiedTime": "2024-02-01T00:00:00.000Z"})
        )));
        assert!(!f.matches(&rec(
            json!({"amount": 250, "isWon": true, "modifiedTime": "2024-02-01T00:00:00.000Z"})
        )));
        let e = object("emails").unwrap();
        let f = Filter::parse(e, &json!({"to": {"hasSome": ["a@x", "b@x"]}}), true).unwrap();
        assert!(f.matches(&rec(json!({"to": ["b@x"]}))));
        assert!(!f.matches(&rec(json!({"to": []}))));
        // v2 names: bodyText, not body.
        assert!(Filter::parse(e, &json!({"bodyText": {"contains": "x"}}), true).is_ok());
        assert!(Filter::parse(e, &json!({"body": {"contains": "x"}}), true).is_err());
    }

    #[test]
    fn probes_admit_every_match_and_rank_the_narrow_first() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let c = object("contacts").unwrap();
        let f = Filter::parse(
            c,
            &json!({"createdTime": {"gt": "2024-01-01T00:00:00Z"},
                    "phone": {"startsWith": "+1 55"},
                    "email": {"equals": "Ava@X.test"}}),
            false,
        )
        .unwrap();
        let p = f.probes("conn", false);
        assert_eq!(
            p[0],
            Probe::Values {
                key: "email",
                values: vec!["ava@x.test".into()]
            }
        );
        assert!(
            matches!(&p[1], Probe::Prefix { key: "phone", lo, hi } if lo == "+1 55" && hi == "+1 56")
        );
        assert!(
            matches!(p[2], Probe::Time { modified: false, lo: Some(t), hi: None } if t == 1_704_067_200_001)
        );
        // Not indexed: jobTitle; not a probe: `not`, `contains`, an exact
        // non-ASCII prefix (Greek final sigma lower-cases by context).
        for f in [
            json!({"jobTitle": {"equals": "x"}}),
            json!({"email": {"not": "x"}}),
            json!({"email": {"contains": "x"}}),
            json!({"email": {"startsWith": "ΟΔΟΣ"}}),
            json!({"firstName": {"equals": "Ava"}}),
        ] {
            assert!(
                Filter::parse(c, &f, false)
                    .unwrap()
                    .probes("conn", false)
                    .is_empty(),
                "{f}"
            );
        }
        let nothing = Filter::parse(c, &json!({"email": {"in": []}}), false).unwrap();
        assert_eq!(nothing.probes("conn", false), vec![Probe::Nothing]);
        // Associations: v1 ids name uids, v2 native ids are turned into them.
        let uid = crate::crm::uid("conn", "accounts", "42");
        let v2 = Filter::parse(c, &json!({"accountIds": {"has": "42"}}), true).unwrap();
        assert_eq!(
            v2.probes("conn", true),
            vec![Probe::Linked {
                key: "accountIds",
                target: "accounts",
                uids: vec![uid.clone()],
                natives: Some(vec!["42".into()])
            }]
        );
        let v1 = Filter::parse(
            c,
            &json!({"accountIds": {"has": format!("v.account.{uid}")}}),
            false,
        )
        .unwrap();
        assert!(
            matches!(&v1.probes("conn", false)[0], Probe::Linked { uids, natives: None, .. } if *uids == vec![uid.clone()])
        );
        let wrong_type = Filter::parse(
            c,
            &json!({"accountIds": {"has": format!("v.deal.{uid}")}}),
            false,
        )
        .unwrap();
        assert_eq!(wrong_type.probes("conn", false), vec![Probe::Nothing]);
        // v2 reads associations the answer may not show.
        let assoc = rec(json!({"accountIds": ["42"]}));
        assert!(v2.matches_with(
            &rec(json!({"associations": {"accountIds": []}})),
            Some(&assoc)
        ));
        assert!(!v2.matches(&rec(json!({"associations": {"accountIds": []}}))));
    }

    #[test]
    fn bad_filters_are_named() {
        let c = object("contacts").unwrap();
        for (f, want) in [
            (json!([]), "filters must be an object"),
            (json!({"nope": {"equals": "x"}}), "unknown field `nope`"),
            (json!({"email": "x"}), "must be an object of operators"),
            (json!({"email": {"gt": "x"}}), "unknown operator `gt`"),
            (
                json!({"email": {"equals": 5}}),
                "`email.equals` must be a string",
            ),
            (json!({"email": {"in": "x"}}), "`email.in` must be an array"),
            (
                json!({"createdTime": {"gt": "yesterday"}}),
                "must be an ISO 8601 date",
            ),
            (json!({"email": {"mode": 3}}), "`email.mode`"),
        ] {
            let e = Filter::parse(c, &f, false).unwrap_err().to_string();
            assert!(e.contains(want), "{f}: {e}");
        }
    }
}
