#!/usr/bin/env python3
"""Drives Berth's unified CRM with Vessel's own files and checks its answers
against their schemas.

For every operation of Vessel's official `v2-crm.yaml` (under `/api` and
bare) and `v1-crm.yaml`, the request is the file's own example (ids in it
replaced by real ids of the sandbox connection, of the object each key
names), and the answer must be 2xx and valid against the operation's 200
schema. Every create and update is read back, and each association the
request set must show in the read-back.

Usage: conformance.py BERTH_URL API_TOKEN ACCESS_TOKEN
(a sandbox connection that has synced). Prints one line per failure and a
closing `N passed, N failed` line; exits 1 on any failure.

Deliberate differences from the files, each with its reason, are listed in
ERRATA and in the README ("Vessel's files and Berth").
"""

import copy
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[2]
VESSEL = ROOT.parent / "shared" / "reference" / "vessel"

# What Berth does not do as the files say, and why (also in the README).
ERRATA = {
    # The file's 200 schema for attendee create/update repeats the request
    # body ({accessToken, eventAttendee}); every other v1 write answers
    # {id}, and so does Berth.
    ("post", "/crm/event/attendee"): "answers {id} like every v1 write",
    ("patch", "/crm/event/attendee"): "answers {id} like every v1 write",
}

# Operations the sandbox cannot serve, with the clean 4xx it gives instead.
NOT_ON_SANDBOX = {
    "custom-fields/create": "the sandbox has no custom fields",
    "custom-field": "the sandbox has no custom fields",
}

# Association keys of write bodies → the object whose id they take.
ID_KEYS = {
    "accountId": "accounts",
    "contactId": "contacts",
    "dealId": "deals",
    "leadId": "leads",
    "ownerUserId": "users",
    "eventId": "events",
    "contactIds": "contacts",
    "contacts": "contacts",
    "contact": "contacts",
    "leads": "leads",
    "lead": "leads",
}

# Write-body association key → read-back association key.
READ_BACK = {
    "accountId": "accountIds",
    "contactId": "contactIds",
    "dealId": "dealIds",
    "leadId": "leadIds",
    "ownerUserId": "ownerUserId",
    "eventId": "eventId",
    "associationId": "associationId",
    "contactIds": "contactIds",
    "contacts": "contactIds",
    "contact": "contactIds",
    "leads": "leadIds",
    "lead": "leadIds",
}

V1_TYPE = {
    "users": "user", "contacts": "contact", "deals": "deal", "accounts": "account",
    "leads": "lead", "notes": "note", "tasks": "task", "events": "event",
    "attendees": "eventAttendee", "emails": "email", "calls": "call", "lists": "list",
}

passed = 0
failures = []


def fail(what, why):
    failures.append(f"{what}: {why}")


def ok():
    global passed
    passed += 1


class Berth:
    def __init__(self, base, api_token, access_token):
        self.base = base.rstrip("/")
        self.api = api_token
        self.access = access_token

    def call(self, method, path, body=None, headers=None, query=None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method.upper())
        req.add_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def v2(self, path, body):
        return self.call("post", path, body, {
            "x-vessel-api-token": self.api, "x-vessel-access-token": self.access})

    def v1(self, method, path, body=None, query=None):
        return self.call(method, path, body, {"vessel-api-token": self.api}, query)


def load(name):
    return yaml.safe_load((VESSEL / name).read_text())


def resolve(spec, node, seen=()):
    """Inlines `$ref`s and makes every typed value nullable: Berth answers
    `null` where the provider has no value, which the files' examples show
    but their schemas do not say (README, "Vessel's files and Berth")."""
    if isinstance(node, list):
        return [resolve(spec, x, seen) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            return {}
        target = spec
        for part in ref.lstrip("#/").split("/"):
            target = target[part]
        return resolve(spec, target, seen + (ref,))
    out = {k: resolve(spec, v, seen) for k, v in node.items()
           if k not in ("example", "examples", "x-examples", "description", "title")}
    t = out.get("type")
    if isinstance(t, str) and t != "null":
        out["type"] = [t, "null"]
    if "enum" in out:
        out["enum"] = list(out["enum"]) + [None]
    return out


def validate(spec, schema, value, what):
    schema = resolve(spec, schema)
    errors = sorted(Draft7Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        fail(what, f"schema: {'/'.join(map(str, e.path))}: {e.message[:300]}")
        return False
    return True


def response_schema(op):
    return (op.get("responses", {}).get("200", {}).get("content", {})
            .get("application/json", {}).get("schema"))


def examples(op):
    rb = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    out = [e["value"] for e in (rb.get("examples") or {}).values() if "value" in e]
    if "example" in rb:
        out.append(rb["example"])
    return out or [{}]


class Ids:
    """Real ids of the sandbox connection, per object, in both generations."""

    def __init__(self, berth):
        self.native = {}
        self.v1 = {}
        for obj in V1_TYPE:
            s, b = berth.v2(f"/api/unifications/crm/{obj}/list", {})
            key = "eventAttendees" if obj == "attendees" else obj
            items = (b or {}).get("result", {}).get(key) or []
            self.native[obj] = [x["id"] for x in items]
            path = {"attendees": "event/attendees"}.get(obj, obj)
            s, b = berth.v1("get", f"/crm/{path}", query={"accessToken": berth.access})
            self.v1[obj] = [x["id"] for x in (b or {}).get(key, [])]
            if not self.native[obj]:
                fail(f"setup {obj}", f"the sandbox connection has no {obj}")

    def of(self, obj, v1):
        ids = (self.v1 if v1 else self.native).get(obj) or ["missing"]
        return ids[0]


def fill_ids(body, ids, v1, obj=None):
    """The example with every id replaced by a real one of the object its
    key names (association ids, `ids`, email participants)."""
    body = copy.deepcopy(body)

    def fix(m, where):
        for k, v in list(m.items()):
            target = ID_KEYS.get(k)
            if k == "associationId":
                t = (m.get("associatedObjectType") or where.get("associatedObjectType") or "contact")
                target = "leads" if t.startswith("lead") else "contacts"
            if target:
                if isinstance(v, str) or v is None and k != "associationId":
                    m[k] = ids.of(target, v1)
                elif isinstance(v, list):
                    m[k] = [({**x, "id": ids.of(target, v1)} if isinstance(x, dict)
                             else ids.of(target, v1)) for x in v]
                elif isinstance(v, dict) and "id" in v:
                    m[k] = {**v, "id": ids.of(target, v1)}
            elif k == "associations" and isinstance(v, dict):
                fix(v, m)
            elif isinstance(v, dict):
                fix(v, v)
        return m

    fix(body, body)
    if "ids" in body and obj:
        body["ids"] = [ids.of(obj, v1)]
    return body


def associations_set(record):
    """(read-back key, expected id) pairs of a write body's associations."""
    out = []
    flat = dict(record)
    flat.update(record.get("associations") or {})
    for k, v in flat.items():
        rk = READ_BACK.get(k)
        if not rk:
            continue
        for x in (v if isinstance(v, list) else [v]):
            x = x.get("id") if isinstance(x, dict) else x
            if isinstance(x, str):
                out.append((rk, x))
    return out


def check_read_back(what, shown, wanted):
    assoc = (shown or {}).get("associations") or {}
    for key, id_ in wanted:
        got = assoc.get(key)
        if got != id_ and not (isinstance(got, list) and id_ in got):
            fail(what, f"read-back associations.{key} is {got!r}, wanted {id_!r}")
            return
    ok()


def every_association(spec, op, ids):
    """A create body's record with every association key its schema lists
    set to a real id (the files' examples leave some out)."""
    body_schema = resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    for key, record in body_schema.get("properties", {}).items():
        assoc = record.get("properties", {}).get("associations", {}).get("properties")
        if not assoc:
            continue
        out = {}
        for k in assoc:
            target = ID_KEYS.get(k) or ("contacts" if k == "associationId" else None)
            if not target:
                continue
            if k.endswith("Ids") or k in ("contacts", "leads"):
                one = ids.of(target, False)
                out[k] = [{"id": one, "role": "to"}] if k in ("contacts", "leads") else [one]
            elif k in ("contact", "lead"):
                out[k] = {"id": ids.of(target, False), "role": "cc"}
            else:
                out[k] = ids.of(target, False)
        return key, out
    return None, None


def run_v2(berth, ids):
    spec = load("v2-crm.yaml")
    created = {}
    # Creates before updates before the rest, so updates hit created records.
    ops = [(p, op) for p, item in spec["paths"].items() for m, op in item.items() if m == "post"]
    order = {"create": 0, "update": 1}
    ops.sort(key=lambda po: order.get(po[0].rsplit("/", 1)[1], 2))
    for prefix in ("/api", ""):
        for path, op in ops:
            url = prefix + path[len("/api"):]
            obj, verb = path.split("/")[-2:]
            what = f"v2 POST {url}"
            schema = response_schema(op)
            cases = list(examples(op))
            if verb == "create":
                key, every = every_association(spec, op, ids)
                if key and cases and isinstance(cases[0].get(key), dict):
                    variant = copy.deepcopy(cases[0])
                    variant[key]["associations"] = every
                    cases.append(variant)
            for ex in cases:
                body = fill_ids(ex, ids, False, obj)
                # The examples' cursors ("123123") are placeholders: Berth's
                # cursors are signed, and a made-up one is a 400 by design.
                # The real cursor of a first page is used instead.
                if "cursor" in body:
                    s, first = berth.v2(url, {k: v for k, v in body.items() if k != "cursor"})
                    nxt = ((first or {}).get("result") or {}).get("nextPageCursor")
                    if nxt:
                        body["cursor"] = nxt
                    else:
                        del body["cursor"]
                if verb == "find" and "id" in body:
                    body["id"] = ids.of(obj, False)
                if verb == "update":
                    body["id"] = created.get((prefix, obj)) or ids.of(obj, False)
                if f"{obj}/{verb}" in NOT_ON_SANDBOX:
                    s, b = berth.v2(url, body)
                    if 400 <= s < 500:
                        ok()
                    else:
                        fail(what, f"wanted a clean 4xx ({NOT_ON_SANDBOX[f'{obj}/{verb}']}), got {s} {b}")
                    continue
                s, b = berth.v2(url, body)
                if not (200 <= s < 300) or not isinstance(b, dict):
                    fail(what, f"{s} {str(b)[:400]} for {json.dumps(body)[:300]}")
                    continue
                if set(b) - {"result", "error"}:
                    fail(what, f"not Vessel's {{result, error}} envelope: {list(b)}")
                    continue
                if schema is not None and not validate(spec, schema, b.get("result"), what):
                    continue
                ok()
                if verb in ("create", "update"):
                    rid = b["result"]["id"]
                    if verb == "create":
                        created[(prefix, obj)] = rid
                    record = next(v for k, v in body.items() if isinstance(v, dict))
                    s, f = berth.v2(f"{prefix}/unifications/crm/{obj}/find", {"id": rid})
                    one = "eventAttendee" if obj == "attendees" else obj[:-1]
                    if s != 200:
                        fail(what + " read-back", f"{s} {f}")
                        continue
                    read_schema = response_schema(spec["paths"][f"/api/unifications/crm/{obj}/find"]["post"])
                    if read_schema and not validate(spec, read_schema, f["result"], what + " read-back"):
                        continue
                    check_read_back(what, f["result"].get(one), associations_set(record))


def run_v1(berth, ids):
    spec = load("v1-crm.yaml")
    created = {}
    ops = [(p, m, op) for p, item in spec["paths"].items() if p.startswith("/crm/")
           for m, op in item.items() if isinstance(op, dict) and "responses" in op]
    ops.sort(key=lambda po: {"post": 0, "patch": 1}.get(po[1], 2)
             if not po[0].endswith(("search", "batch", "custom-field", "passthrough")) else 3)
    by_singular = {v: k for k, v in {
        "users": "user", "contacts": "contact", "deals": "deal", "accounts": "account",
        "leads": "lead", "notes": "note", "tasks": "task", "events": "event",
        "attendees": "event/attendee", "emails": "email", "calls": "call", "lists": "list"}.items()}
    by_plural = {"event/attendees": "attendees"}
    for path, method, op in ops:
        rest = path[len("/crm/"):]
        what = f"v1 {method.upper()} {path}"
        schema = response_schema(op)
        if rest == "passthrough":
            continue  # seed 000's passthrough has its own suite (tests/api/proxy.rs)
        base = rest
        for suffix in ("/search", "/batch", "/details", "/custom-field"):
            if rest.endswith(suffix):
                base = rest[: -len(suffix)]
        obj = by_singular.get(base) or by_plural.get(base) or (base if base in V1_TYPE else None)
        if rest.endswith("/custom-field"):
            s, b = berth.v1(method, path, {"accessToken": berth.access, "customField": {"name": "x", "type": "text"}})
            if 400 <= s < 500:
                ok()
            else:
                fail(what, f"wanted a clean 4xx (the sandbox has no custom fields), got {s} {b}")
            continue
        query = {"accessToken": berth.access}
        body = None
        if method == "get":
            if rest.endswith("/batch"):
                query["ids"] = ids.of(obj, True)
            elif obj and not rest.endswith(("/details",)) and base == rest and base in by_singular:
                query["id"] = ids.of(obj, True)
        else:
            exs = examples(op)
            body = fill_ids(exs[0], ids, True, obj) if exs else {}
            body["accessToken"] = berth.access
            if method == "patch":
                body["id"] = created.get(obj) or ids.of(obj, True)
            if rest.endswith("/batch") and obj:
                body["ids"] = [ids.of(obj, True)]
            if obj == "attendees" and method in ("post", "patch") and not body.get("eventAttendee"):
                body["eventAttendee"] = (
                    {"status": "accepted"} if method == "patch" else
                    {"associatedObjectType": "contact", "eventId": ids.of("events", True),
                     "associationId": ids.of("contacts", True), "status": "accepted"})
        s, b = berth.v1(method, path, body, query if method == "get" else None)
        if not (200 <= s < 300) or not isinstance(b, dict):
            fail(what, f"{s} {str(b)[:400]} for {json.dumps(body)[:300] if body else query}")
            continue
        if (method, path) not in ERRATA and schema is not None and not validate(spec, schema, b, what):
            continue
        ok()
        if method in ("post", "patch") and "id" in b and obj and not rest.endswith(("search", "batch")):
            if method == "post":
                created[obj] = b["id"]
            record = next((v for k, v in body.items() if isinstance(v, dict)), {})
            one = base.replace("event/attendee", "eventAttendee")
            s, f = berth.v1("get", f"/crm/{base}", query={"accessToken": berth.access, "id": b["id"]})
            if s != 200:
                fail(what + " read-back", f"{s} {f}")
                continue
            wanted = [(k, v) for k, v in associations_set(record)]
            check_read_back(what, f.get(one), wanted)


def main():
    berth = Berth(*sys.argv[1:4])
    ids = Ids(berth)
    run_v2(berth, ids)
    run_v1(berth, ids)
    for f in failures:
        print(f)
    print(f"{passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
