#!/usr/bin/env python3
"""Verifies Berth's webhook signatures with the official Standard Webhooks
library (pip install standardwebhooks). Reads {"secret", "cases": [{headers,
body}]} on stdin; every case must verify, and must fail once tampered."""
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

data = json.load(sys.stdin)
wh = Webhook(data["secret"])
ok = rejected = 0
for case in data["cases"]:
    payload = wh.verify(case["body"], case["headers"])  # raises if the signature is wrong
    if payload != json.loads(case["body"]):
        sys.exit("verified payload differs from the body")
    ok += 1
    try:
        wh.verify(case["body"] + " ", case["headers"])
    except WebhookVerificationError:
        rejected += 1
print(f"verified {ok}, rejected tampered {rejected}")
