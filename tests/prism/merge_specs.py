#!/usr/bin/env python3
"""Merges several OpenAPI 3 files of one provider into one, for Prism.

Prism validates against one document, but HubSpot publishes one per API
(contacts, owners, associations v4, ...), and their components clash: each
file has its own `SimplePublicObject`, `Error`, `NextPage`. So every
component of file `x.oas.json` is renamed `<Name>__x` (with its `$ref`s),
each file's server path prefix (the associations specs put
`/crm/v4/associations` there) is moved onto its paths, and the paths and
security schemes are united. Operations keep their original schemas
exactly; nothing is relaxed.

Errata (`--errata FILE`, a JSON list of `{pointer, value | widen, why}`)
replace the node at `pointer` in every input that has it (`widen`: accept
the old node or this one), before merging: for the
few places where the generated spec contradicts HubSpot's own guides. Each
says why.

    merge_specs.py [--errata FILE] OUT.json IN.oas.json...
"""
import json
import os
import sys
from urllib.parse import urlparse

SECTIONS = ("schemas", "responses", "parameters", "requestBodies", "headers", "examples", "links", "callbacks")


def rename_refs(node, suffix):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/"):
                _, _, section, name = v.split("/", 3)
                if section in SECTIONS:
                    v = f"#/components/{section}/{name}__{suffix}"
            out[k] = rename_refs(v, suffix)
        return out
    if isinstance(node, list):
        return [rename_refs(v, suffix) for v in node]
    return node


def apply_errata(spec, errata):
    for e in errata:
        *parents, last = e["pointer"].strip("/").split("/")
        node = spec
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and last in node:
            node[last] = {"anyOf": [node[last], e["widen"]]} if "widen" in e else e["value"]


def main():
    args = sys.argv[1:]
    errata = []
    if args[:1] == ["--errata"]:
        with open(args[1]) as f:
            errata = json.load(f)
        args = args[2:]
    out_path, inputs = args[0], args[1:]
    merged = {
        "openapi": "3.0.1",
        "info": {"title": "merged: " + ", ".join(os.path.basename(p) for p in inputs), "version": "merged"},
        "servers": [{"url": "/"}],
        "paths": {},
        "components": {"securitySchemes": {}},
    }
    for path in inputs:
        suffix = os.path.basename(path).split(".")[0]
        with open(path) as f:
            spec = json.load(f)
        apply_errata(spec, errata)
        spec = rename_refs(spec, suffix)
        prefix = ""
        servers = spec.get("servers") or []
        if servers:
            prefix = urlparse(servers[0]["url"]).path.rstrip("/")
        for p, item in spec.get("paths", {}).items():
            target = merged["paths"].setdefault(prefix + p, {})
            for method, op in item.items():
                target.setdefault(method, op)
        comps = spec.get("components", {})
        for section in SECTIONS:
            for name, value in comps.get(section, {}).items():
                merged["components"].setdefault(section, {})[f"{name}__{suffix}"] = value
        for name, value in comps.get("securitySchemes", {}).items():
            merged["components"]["securitySchemes"].setdefault(name, value)
    with open(out_path, "w") as f:
        json.dump(merged, f)
    print(f"{out_path}: {len(merged['paths'])} paths from {len(inputs)} files")


if __name__ == "__main__":
    main()
