#!/usr/bin/env python3
"""Drives every HubSpot call Berth's connector makes, through a Berth whose
HubSpot base URL is Prism's validating proxy (see scripts/prism-check.sh).

It connects a private-app token, waits for the sync to reach READY, then
uses each unified operation that reaches HubSpot: live reads, creates with
associations, updates, deletes, field metadata, custom fields, deal
pipelines and owners. Finally it reads Berth's request log: any provider
call answered 4xx or 5xx (except HubSpot's own 429s) is a call Prism found outside the official spec
(request violation: 422/400, unknown path: 404, missing auth: 401) or a
response of the fake that breaks the spec.

    drive.py BERTH_URL API_TOKEN
"""
import json
import sys
import time
import urllib.error
import urllib.request

BASE, API = sys.argv[1], sys.argv[2]


def post(path, body, headers=None, expect=200):
    h = {"content-type": "application/json", "x-vessel-api-token": API}
    h.update(headers or {})
    for attempt in range(4):
        req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text, retry_after = r.status, r.read(), None
        except urllib.error.HTTPError as e:
            status, text, retry_after = e.code, e.read(), e.headers.get("retry-after")
        # Berth holds a call back with its own 429 and Retry-After when the
        # fake's headers said the ten-second burst allowance is spent: wait
        # as a client should, then send it again.
        if status == 429 and retry_after and attempt < 3 and status != expect:
            time.sleep(min(float(retry_after), 15))
            continue
        break
    out = json.loads(text) if text else None
    if expect is not None and status != expect:
        sys.exit(f"{path} {json.dumps(body)} -> {status} {text[:800]!r}")
    return out


def main():
    st = post("/auth/session-token", {})["result"]["sessionToken"]
    post("/auth/start", {"integrationId": "hubspot", "authType": "apiKey", "answers": {"api-key": "pat-na1-test"}},
         {"x-vessel-session-token": st})
    got = post("/auth/access-token", {}, {"x-vessel-session-token": st})["result"]
    access, conn = got["accessToken"], got["connectionId"]
    v2 = {"x-vessel-access-token": access}

    deadline = time.time() + 300
    while True:
        c = post("/connections/get", {"connectionId": conn})["result"]
        errors = {o: s["lastError"] for o, s in c["sync"]["objects"].items() if s.get("lastError")}
        if errors:
            sys.exit(f"sync errors: {json.dumps(errors, indent=1)}")
        if c["status"] == "READY":
            break
        if time.time() > deadline:
            sys.exit(f"not READY after 300 s: {json.dumps(c)[:2000]}")
        time.sleep(0.5)
    print(f"synced to READY: {conn}")

    def op(obj, name, body, expect=200):
        return post(f"/unifications/crm/{obj}/{name}", body, v2, expect)

    # Live reads (synced:false) of every object, and their field metadata.
    objects = ["users", "contacts", "accounts", "deals", "notes", "tasks", "events", "attendees", "calls", "emails",
               "leads", "lists"]
    for obj in objects:
        extra = {"objectType": "contacts"} if obj == "lists" else {}
        page = op(obj, "list", {"synced": False, **extra})["result"]
        op(obj, "details", extra)
        first = next(iter(v for k, v in page.items() if isinstance(v, list)), [])
        if first:
            op(obj, "find", {"id": first[0]["id"], "synced": False, **extra})
    print("live reads and details: ok")

    account = op("accounts", "list", {})["result"]["accounts"][0]["id"]
    contact = op("contacts", "create", {"contact": {"firstName": "Prism", "lastName": "Check",
                                                       "email": "prism.check@example.net", "accountId": account}})["result"]["id"]
    op("contacts", "update", {"id": contact, "contact": {"jobTitle": "Validator", "accountId": account}})
    deal = op("deals", "create", {"deal": {"name": "Prism deal", "amount": 10, "closeDate": "2027-01-31",
                                             "accountId": account}})["result"]["id"]
    op("deals", "update", {"id": deal, "deal": {"amount": 20}})
    pipelines = [f for f in op("deals", "details", {"id": deal})["result"]["fields"] if f["key"] == "stage"]
    assert pipelines and pipelines[0].get("options"), pipelines
    note = op("notes", "create", {"note": {"content": "validated", "contactId": contact, "accountId": account,
                                             "dealId": deal}})["result"]["id"]
    task = op("tasks", "create", {"task": {"subject": "check", "contactId": contact}})["result"]["id"]
    op("tasks", "update", {"id": task, "task": {"subject": "checked"}})
    lead = op("leads", "create", {"lead": {"firstName": "Prism", "lastName": "Lead", "email": "prism.lead@example.net",
                                             "accountId": account}})["result"]["id"]
    op("leads", "update", {"id": lead, "lead": {"jobTitle": "Checker"}})
    op("leads", "delete", {"id": lead})
    meeting = op("events", "list", {})["result"]["events"][0]["id"]
    attendee = op("attendees", "create", {"attendee": {"eventId": meeting, "associationId": contact,
                                                       "associatedObjectType": "contact"}})["result"]["id"]
    op("attendees", "find", {"id": attendee, "synced": False})
    op("attendees", "delete", {"id": attendee})
    op("custom-fields", "create", {"objectType": "contacts", "customField": {"name": "Prism score", "type": "number"}})
    for obj, rid in (("notes", note), ("tasks", task), ("deals", deal), ("contacts", contact)):
        op(obj, "delete", {"id": rid})
    print("writes: ok")

    # An incremental run after the writes (search with `after`, archived
    # lists for the deletes).
    before = {o: s["lastSyncedAt"] for o, s in post("/connections/get", {"connectionId": conn})["result"]["sync"]["objects"].items()}
    post("/connections/sync", {"id": conn})
    deadline = time.time() + 120
    while True:
        objs = post("/connections/get", {"connectionId": conn})["result"]["sync"]["objects"]
        errors = {o: s["lastError"] for o, s in objs.items() if s.get("lastError")}
        if errors:
            sys.exit(f"sync errors: {json.dumps(errors, indent=1)}")
        if all(s["lastSyncedAt"] != before.get(o) and s["state"] != "running" for o, s in objs.items()):
            break
        if time.time() > deadline:
            sys.exit(f"the incremental sync did not finish: {json.dumps(objs)[:2000]}")
        time.sleep(0.5)
    print("incremental sync: ok")

    bad, cursor, calls = [], None, 0
    while True:
        body = {"connectionId": conn, "limit": 500}
        if cursor:
            body["cursor"] = cursor
        r = post("/logs/list", body)["result"]
        for log in r["logs"]:
            calls += 1
            # 429s are the fake's per-second search limit, which HubSpot
            # has too; the connector waits them out, and Prism checked
            # their bodies.
            if log.get("status") and log["status"] >= 400 and log["status"] != 429:
                bad.append(log)
        cursor = r.get("nextPageCursor")
        if not cursor:
            break
    print(f"{calls} provider calls logged")
    if bad:
        for b in bad:
            print(f"  {b['method']} {b['path']} -> {b['status']} {b.get('error') or ''}")
        sys.exit(f"{len(bad)} HubSpot calls were refused by the spec check")


if __name__ == "__main__":
    main()
