"""Turn the three create bodies (seed, seed heterogeneous, native) into a :class:`CreatePlan`.

Every refusal is a :class:`RequestError` with a message a person can act on:
it names the field, what was given (at most ~200 characters of it) and what would be accepted.
"""

from __future__ import annotations

import json
import re
from typing import Any

from overcloud.limits import ECHO_CHARS, clip, shown
from overcloud.plan import CreatePlan, SitePlan
from overcloud.underclouds.base import known_sizes, resolve_flavor

#: provider spellings the seed used, mapped to our UnderCloud kinds
KIND_ALIASES = {"local": "local", "ssh": "ssh", "aws": "aws", "amazon": "aws", "ec2": "aws", "openstack": "openstack"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RequestError(Exception):
    def __init__(self, message: str, *, field: str | None = None, status: int = 422):
        # fields and messages may carry what was sent: never more than a few hundred characters of it
        message, field = clip(message, 4 * ECHO_CHARS), (clip(field) if field else field)
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


def too_large(limit: int) -> str:
    return f"the body is over {limit} bytes; OverCloud requests are small JSON documents"


async def read_body(request, limit: int, too_big: str) -> bytes:
    """The whole body, counted while it streams in: a chunked body (no Content-Length, so the
    BodyLimit middleware could not refuse it up front) is a 413 once it passes ``limit``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(too_big, status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, example: str) -> Any:
    """A JSON body, or a 400 that says why: not JSON, nested too deep for the parser, or a
    number too long for Python (over 4300 digits) are the caller's mistakes, not the Tower's."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError(f"the body nests too deeply to read; send e.g. {example}", status=400) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc}); send e.g. {example}", status=400) from None
    except ValueError:  # int() refused a number of more than sys.get_int_max_str_digits() digits
        raise RequestError(f"the body holds a number too long to read; send e.g. {example}", status=400) from None


class Sites:
    """The configured sites: name -> kind, in configuration order."""

    def __init__(self, sites: dict[str, str]):
        self.kinds = dict(sites)

    def describe(self) -> str:
        return ", ".join(f"{name} ({kind})" for name, kind in self.kinds.items())

    def resolve(self, provider: Any, field: str) -> str:
        """A site name from a provider: a configured site name, or a kind (first site of it)."""
        if not isinstance(provider, str) or not provider.strip():
            raise RequestError(f"{field} must be a site name or kind; configured: {self.describe()}", field=field)
        wanted = provider.strip().lower()
        for name in self.kinds:
            if name.lower() == wanted:
                return name
        kind = KIND_ALIASES.get(wanted)
        for name, k in self.kinds.items():
            if kind is not None and k == kind:
                return name
        raise RequestError(
            f"{field} {shown(provider)} is not a configured UnderCloud; configured: {self.describe()}", field=field
        )


def parse_number(value: Any, field: str, maximum: int) -> int:
    """The seed sent counts as strings ("3"); accept those and plain integers, nothing else."""
    if isinstance(value, bool) or value is None:
        raise RequestError(f"{field} must be a whole number from 1 to {maximum}, got {shown(value)}", field=field)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
        n = int(value)
    else:
        raise RequestError(f"{field} must be a whole number from 1 to {maximum}, got {shown(value)}", field=field)
    if not 1 <= n <= maximum:
        raise RequestError(f"{field} must be from 1 to {maximum} (the configured maximum), got {shown(n)}", field=field)
    return n


def parse_size(value: Any, field: str) -> str:
    if isinstance(value, str):
        try:
            resolve_flavor(value)
            return value.strip()
        except KeyError:
            pass
    raise RequestError(f"{field} {shown(value)} is not a known size; known: {', '.join(known_sizes())}", field=field)


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "true", "1", "no", "false", "0"):
        return value.strip().lower() in ("yes", "true", "1")
    raise RequestError(f"{field} must be yes/no or true/false, got {shown(value)}", field=field)


def _no_extra(body: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise RequestError(
            f"unknown field {where}{shown(extra[0])}; allowed here: {', '.join(sorted(allowed))}", field=f"{where}{extra[0]}"
        )


def _require(body: dict[str, Any], keys: list[str], where: str) -> None:
    for key in keys:
        if key not in body:
            raise RequestError(f"missing field {where}{key!r}", field=f"{where}{key}")


def _name(body: dict[str, Any], default: str) -> str:
    name = body.get("name", default)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RequestError(
            "name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", field="name"
        )
    return name


def parse_create(body: Any, sites: Sites, max_clusters: int) -> CreatePlan:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object, e.g. {\"provider\": \"local\", \"number\": \"3\", \"size\": \"m1.small\"}")
    if "provider" in body:
        if isinstance(body["provider"], str) and body["provider"].strip().lower() == "heterogeneous":
            return _parse_heterogeneous(body, sites, max_clusters)
        return _parse_seed(body, sites, max_clusters)
    if "sites" in body:
        return _parse_native(body, sites, max_clusters)
    raise RequestError(
        "expected the seed body {\"provider\", \"number\", \"size\"} or the native body {\"sites\": [...]}", field="provider"
    )


def _parse_seed(body: dict[str, Any], sites: Sites, max_clusters: int) -> CreatePlan:
    _no_extra(body, {"provider", "number", "size", "name"}, "")
    _require(body, ["provider", "number", "size"], "")
    site = sites.resolve(body["provider"], "provider")
    n = parse_number(body["number"], "number", max_clusters)
    size = parse_size(body["size"], "size")
    return CreatePlan(name=_name(body, "overcloud"), sites=[SitePlan(site, n, size)], post_site=site, post_size=size)


def _parse_heterogeneous(body: dict[str, Any], sites: Sites, max_clusters: int) -> CreatePlan:
    entries = {k: v for k, v in body.items() if k not in ("provider", "name")}
    if not entries:
        raise RequestError("a heterogeneous body names at least one provider, e.g. \"local-a\": {\"number\": \"2\", \"size\": \"m1.small\", \"post\": \"yes\"}")
    plans, post_site, seen = [], None, set()
    for key, entry in entries.items():
        site = sites.resolve(key, clip(key, 60))  # a key names a site: past here it is a short one
        if site in seen:
            raise RequestError(f"{shown(key)} names site {site} a second time", field=key)
        seen.add(site)
        if not isinstance(entry, dict):
            raise RequestError(f"{key} must be an object with number, size and post", field=key)
        _no_extra(entry, {"number", "size", "post"}, f"{key}.")
        _require(entry, ["number", "size"], f"{key}.")
        plans.append(SitePlan(site, parse_number(entry["number"], f"{key}.number", max_clusters), parse_size(entry["size"], f"{key}.size")))
        if "post" in entry and _flag(entry["post"], f"{key}.post"):
            if post_site is not None:
                raise RequestError("only one provider may host the DevOps Post (post: yes)", field=f"{key}.post")
            post_site = site
    _check_total(plans, max_clusters)
    post_site = post_site or plans[0].site
    post_size = next(p.size for p in plans if p.site == post_site)
    return CreatePlan(name=_name(body, "overcloud"), sites=plans, post_site=post_site, post_size=post_size)


def _parse_native(body: dict[str, Any], sites: Sites, max_clusters: int) -> CreatePlan:
    _no_extra(body, {"name", "sites", "datalake", "fabric"}, "")
    raw = body["sites"]
    if not isinstance(raw, list) or not raw:
        raise RequestError("sites must be a non-empty list of {\"undercloud\", \"clusters\", \"size\"}", field="sites")
    plans, post_site, seen = [], None, set()
    for i, entry in enumerate(raw):
        where = f"sites[{i}]."
        if not isinstance(entry, dict):
            raise RequestError(f"sites[{i}] must be an object", field=f"sites[{i}]")
        _no_extra(entry, {"undercloud", "clusters", "size", "post"}, where)
        _require(entry, ["undercloud", "clusters"], where)
        site = sites.resolve(entry["undercloud"], f"{where}undercloud")
        if site in seen:
            raise RequestError(f"site {site} is listed twice; give it one entry with the total", field=f"{where}undercloud")
        seen.add(site)
        size = parse_size(entry.get("size", "small"), f"{where}size")
        plans.append(SitePlan(site, parse_number(entry["clusters"], f"{where}clusters", max_clusters), size))
        if _flag(entry.get("post", False), f"{where}post"):
            if post_site is not None:
                raise RequestError("only one site may host the DevOps Post (post: true)", field=f"{where}post")
            post_site = site
    _check_total(plans, max_clusters)
    datalake = body.get("datalake") or {}
    if not isinstance(datalake, dict):
        raise RequestError("datalake must be an object", field="datalake")
    _no_extra(datalake, {"restore_from", "preserve", "enabled", "block"}, "datalake.")
    datalake = dict(datalake)
    if datalake.get("block") not in (None, False):
        raise RequestError(
            "datalake.block: block storage is not supported on the local UnderCloud "
            "(object and file are; see docs/datalake.md for what block storage would take)",
            field="datalake.block",
        )
    datalake.pop("block", None)
    for flag in ("preserve", "enabled"):
        if flag in datalake:
            datalake[flag] = _flag(datalake[flag], f"datalake.{flag}")
    restore = datalake.get("restore_from")
    if restore is not None and (not isinstance(restore, str) or not re.fullmatch(r"[0-9a-f]{32}", restore)):
        raise RequestError("datalake.restore_from must be the id of a deleted OverCloud (32 hex digits)", field="datalake.restore_from")
    if restore is not None and datalake.get("enabled") is False:
        raise RequestError("datalake.restore_from needs the DataLake enabled", field="datalake.restore_from")
    fabric = body.get("fabric") or {"enabled": True}
    if not isinstance(fabric, dict):
        raise RequestError("fabric must be an object", field="fabric")
    _no_extra(fabric, {"enabled"}, "fabric.")
    fabric = {"enabled": _flag(fabric.get("enabled", True), "fabric.enabled")}
    post_site = post_site or plans[0].site
    post_size = next(p.size for p in plans if p.site == post_site)
    return CreatePlan(
        name=_name(body, "overcloud"), sites=plans, post_site=post_site, post_size=post_size, datalake=datalake, fabric=fabric
    )


def _check_total(plans: list[SitePlan], max_clusters: int) -> None:
    total = sum(p.clusters for p in plans)
    if total > max_clusters:
        raise RequestError(f"{total} clusters in all is above the configured maximum of {max_clusters}", field="number")
