#!/usr/bin/env python3
"""Vendor a CRD's openAPIV3Schema as JSON test data (tests/data/crds/), for offline validation.

    python scripts/vendor_crds.py CRD.yaml VERSION OUT.json

Reads a CustomResourceDefinition (as its project publishes it), takes the ``openAPIV3Schema`` of
``VERSION`` and writes it as JSON with every ``description`` removed: descriptions are most of
the bytes and no part of validation. Record where the CRD came from in tests/data/crds/SOURCE.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: strip_descriptions(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    crd_path, version, out = Path(argv[0]), argv[1], Path(argv[2])
    crd = yaml.safe_load(crd_path.read_text())
    if crd.get("kind") != "CustomResourceDefinition":
        print(f"{crd_path} is not a CustomResourceDefinition", file=sys.stderr)
        return 2
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in served:
        print(f"{crd_path} has versions {sorted(served)}, not {version}", file=sys.stderr)
        return 2
    schema = strip_descriptions(served[version]["schema"]["openAPIV3Schema"])
    document = {
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version,
        "openAPIV3Schema": schema,
    }
    out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
