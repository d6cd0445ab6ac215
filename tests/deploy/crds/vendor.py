"""Turn upstream CRD files into the compact schemas tests/deploy validates custom resources against.

Usage: python tests/deploy/crds/vendor.py SOURCE VERSION REPO_PATH CRD.yaml  (run once per CRD file; the
CRD file is the one at REPO_PATH in SOURCE at tag VERSION). Keeps each served version's openAPIV3Schema
without descriptions (they are most of the bytes), and records where it came from and the original
file's sha256 so anyone can check it against upstream.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value)
            for key, value in node.items()
            # "description" is also a property name in some schemas (under "properties"): keep those.
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def vendor(source: str, version: str, repo_path: str, crd_file: Path) -> list[Path]:
    raw = crd_file.read_bytes()
    crd = yaml.safe_load(raw)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    written = []
    for served in crd["spec"]["versions"]:
        if not served.get("served", True):
            continue
        out = HERE / f"{group}_{kind}_{served['name']}.json".lower()
        document = {
            "apiVersion": f"{group}/{served['name']}",
            "kind": kind,
            "source": source,
            "version": version,
            "path": repo_path,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "schema": strip_descriptions(served["schema"]["openAPIV3Schema"]),
        }
        out.write_text(json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n")
        written.append(out)
    return written


if __name__ == "__main__":
    source_arg, version_arg, path_arg, file_arg = sys.argv[1:5]
    for path in vendor(source_arg, version_arg, path_arg, Path(file_arg)):
        print(path.name, path.stat().st_size)
