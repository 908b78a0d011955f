//! Vessel's Prisma-style filters (v1 search, v2 list), parsed against an
//! object's fields and evaluated on the rendered record.

use serde_json::{Map, Value};

use crate::crm::{Kind, Object};

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
            let class = match field.as_str() {
                "id" | "nativeId" => FieldClass::Str,
                "createdTime" | "modifiedTime" => FieldClass::Date,
                _ => {
                    let fd = if v2 {
                        object.field_v2(field)
                    } else {
                        object.field(field)
                    };
                    match fd.map(|f| f.kind) {
                        Some(Kind::Str) => FieldClass::Str,
                        Some(Kind::Num) => FieldClass::Num,
                        Some(Kind::Date) => FieldClass::Date,
                        Some(Kind::Bool) => FieldClass::Bool,
                        Some(Kind::List) => FieldClass::List,
                        Some(Kind::Obj) | None => {
                            return Err(FilterError::UnknownField(field.clone()));
                        }
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
                });
            }
        }
        Ok(Filter { conds })
    }

    /// Whether a rendered record passes.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.conds.iter().all(|c| c.matches(record.get(&c.field)))
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
