"""One sites file from several labs' sites files (stdlib + PyYAML only: bench/clouds.py imports it too).

A Tower reads one ``OVERCLOUD_SITES_FILE``; each lab writes its own ``DIR/sites.yaml`` whose
``*_file`` fields (``clouds_file``, ``credentials_file``, ``config_file``) are relative to that
file. ``merge_sites`` writes every site of the given files into ``out`` with those paths made
absolute, and applies ``overrides`` (``{site name: {field: value}}``; a ``labels`` dict is merged
into the site's labels, any other field replaced).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def merge_sites(files: list[Path], out: Path, overrides: dict[str, dict] | None = None) -> Path:
    merged = []
    for f in files:
        f = Path(f)
        for site in yaml.safe_load(f.read_text()) or []:
            for k, v in list(site.items()):
                if k.endswith("_file") and isinstance(v, str) and not os.path.isabs(v):
                    site[k] = str((f.parent / v).resolve())
            for k, v in ((overrides or {}).get(site.get("name")) or {}).items():
                if k == "labels":
                    site["labels"] = {**(site.get("labels") or {}), **v}
                else:
                    site[k] = v
            merged.append(site)
    Path(out).write_text(yaml.safe_dump(merged, sort_keys=False))
    return Path(out)
