"""Settings for the Tower and the CLI: environment ``OVERCLOUD_*`` and an optional TOML file.

Precedence: explicit arguments (CLI flags) > environment > ``<state-dir>/overcloud.toml`` > defaults.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_PORT = 6125


def default_state_dir() -> Path:
    """A per-user data dir (``/root/.local/share/overcloud`` for root)."""
    return Path(platformdirs.user_data_dir("overcloud", appauthor=False))


TOWER_ID_FILE = "tower.id"


def tower_identity(state_dir: Path) -> str:
    """This state dir's Tower id: 16 random hex digits, made on first use and kept in
    ``<state-dir>/tower.id`` (0600). Everything the Tower makes on a host carries it beside the
    OverCloud id, so a Tower finds, sweeps and cleans only what it made itself."""
    state_dir = Path(state_dir)
    path = state_dir / TOWER_ID_FILE

    def read() -> str | None:
        try:
            found = path.read_text().strip()
        except FileNotFoundError:
            return None
        if len(found) != 16 or any(c not in "0123456789abcdef" for c in found):
            raise RuntimeError(f"{path} does not hold a Tower id (16 hex digits); it names what this Tower "
                               "made on the host, so fix or restore it rather than removing it")
        return found

    found = read()
    if found is not None:
        return found
    state_dir.mkdir(parents=True, exist_ok=True)
    # written whole beside it, then linked into place: never a half-written id, and of two
    # processes starting on one state dir the first link wins and both read it
    tmp = state_dir / f".{TOWER_ID_FILE}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(8) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return read()



class SiteSettings(BaseModel):
    """One UnderCloud site the Tower may build on. Sites of kind ``ssh`` (hosts, keys, pinned
    host keys) are read from ``OVERCLOUD_SITES_FILE`` / ``OVERCLOUD_SITES`` by
    ``underclouds/ssh/sites.py`` and appear here by name, kind and labels."""

    name: str
    kind: str = "local"
    bridge: str | None = None  # local only
    cidr: str | None = None  # local only
    # user labels every box of this site carries (placement matches nodeSelector on them)
    labels: dict[str, str] = Field(default_factory=dict)


def _default_sites() -> list[SiteSettings]:
    return [
        SiteSettings(name="local-a", kind="local", bridge="ocb-a", cidr="10.213.0.0/24", labels={"overcloud.io/tier": "cloud"}),
        SiteSettings(name="local-b", kind="local", bridge="ocb-b", cidr="10.213.1.0/24", labels={"overcloud.io/tier": "edge"}),
    ]


class _TomlSource(PydanticBaseSettingsSource):
    """Reads ``overcloud.toml`` from the state dir when it exists."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by pydantic for this source
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        state = os.environ.get("OVERCLOUD_STATE_DIR")
        path = Path(os.environ.get("OVERCLOUD_CONFIG", "")) if os.environ.get("OVERCLOUD_CONFIG") else None
        if path is None:
            path = (Path(state) if state else default_state_dir()) / "overcloud.toml"
        if not path.is_file():
            return {}
        with path.open("rb") as fh:
            return tomllib.load(fh)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OVERCLOUD_", extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = None  # default: sqlite in the state dir
    workflow_database_url: str | None = None  # TaskFlow persistence; default: sqlite in the state dir
    sites: list[SiteSettings] = Field(default_factory=_default_sites)
    overlay_cidr: str = "10.250.0.0/16"
    max_clusters: int = 30  # per OverCloud
    max_boxes: int = 200  # per Tower (local quota)
    max_body_bytes: int = 1024 * 1024
    # many or slow clients (see docs/architecture.md, "Many or slow clients")
    max_streams: int = 512  # event streams open at once, all callers together; 429 beyond
    max_streams_per_token: int = 256  # event streams open at once with one token; 429 beyond
    header_timeout: float = 5.0  # seconds to send a request's whole head; the connection is closed after
    body_timeout: float = 30.0  # seconds to send a request's body once its head is in
    write_timeout: float = 30.0  # seconds a client may leave our answer unread (buffers full); then cut
    max_connections: int = 2048  # open connections; uvicorn answers 503 beyond (limit_concurrency)
    workers: int = 16  # task executor threads
    fabric_scrape_interval: float = 1.0  # seconds; DEGRADED after 3 intervals without a scrape
    fabric_retention: str = "24h"  # the OverCloud Datastore's retention (Prometheus syntax)
    runtime: str = "auto"  # service runtime: auto (podman where installed), podman, process
    secret_key: str | None = Field(default=None, repr=False)  # Fernet key; default <state-dir>/secret.key

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _with_ssh_sites(self) -> "Settings":
        """The ssh sites of ``OVERCLOUD_SITES_FILE`` join the configured sites (after them, so
        ``"provider": "local"`` still picks the first local site and ``"ssh"`` the first ssh one).
        A site file that cannot be used is refused here, naming the site, host and field."""
        if os.environ.get("OVERCLOUD_SITES_FILE"):
            known = {s.name for s in self.sites}
            self.sites = list(self.sites) + [
                SiteSettings(name=c.name, kind="ssh", labels=dict(c.labels))
                for c in self.ssh_site_configs() if c.name not in known]
            # and its cloud sites (kinds openstack, aws), checked the same way
            known = {s.name for s in self.sites}
            self.sites = list(self.sites) + [
                SiteSettings(name=c.name, kind=c.kind, labels=dict(c.labels))
                for c in self.cloud_site_configs() if c.name not in known]
        return self

    def ssh_site_configs(self) -> list:
        """The ssh sites (``SSHSiteConfig``) of ``OVERCLOUD_SITES_FILE`` or ``OVERCLOUD_SITES``."""
        from overcloud.underclouds.ssh.sites import ssh_sites_from_env

        return ssh_sites_from_env()

    def cloud_site_configs(self) -> list:
        """The cloud sites (``CloudSiteConfig``, kinds openstack and aws) of ``OVERCLOUD_SITES_FILE``
        or ``OVERCLOUD_SITES``; their box pools checked against the ssh hosts' box subnets."""
        from overcloud.underclouds.cloud.config import check_against_ssh, cloud_sites_from_env

        found = cloud_sites_from_env()
        if found:
            check_against_ssh(found, self.ssh_site_configs())
        return found

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'overcloud.db'}"

    @property
    def workflow_db_url(self) -> str:
        if self.workflow_database_url:
            return self.workflow_database_url
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'workflows.db'}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "admin.token"
