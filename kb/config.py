"""Where things are and who we are: store location and server credentials.

Values come from, in order: the command line, the environment, the config file
(``$XDG_CONFIG_HOME/neuron-kb/config.toml``), built-in defaults. Secrets are read here and
handed to the driver; nothing in neuron-kb prints them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

STORE_ENV = "NKB_STORE"
ARTIFACT_ENV = "NKB_ARTIFACT_DIR"
NEO4J_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "neuron-kb" / "config.toml"


def load_config() -> dict:
    path = config_path()
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        return tomllib.load(f)


def default_store() -> str:
    """The store used when no --store is given: $NKB_STORE, the config file, or a per-user directory."""
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    configured = load_config().get("store")
    if configured:
        return str(configured)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return str(Path(base) / "neuron-kb" / "default")


def is_server_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in NEO4J_SCHEMES


def neo4j_credentials(url: str) -> tuple[str, str]:
    """User and password for a server URL: from the URL, else NKB_NEO4J_USER/PASSWORD, else the config file."""
    parts = urlsplit(url)
    section = load_config().get("neo4j", {})
    user = parts.username or os.environ.get("NKB_NEO4J_USER") or section.get("user") or "neo4j"
    password = parts.password or os.environ.get("NKB_NEO4J_PASSWORD") or section.get("password") or ""
    return user, password


def redact(url: str) -> str:
    """The URL as safe to show: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def server_artifact_dir(url: str, database: str | None) -> Path:
    """Where files beside a server's graph live (checkpoints, vector indexes): a local directory
    per server and database, under $NKB_ARTIFACT_DIR, else ``artifact_dir`` in the config file,
    else the user cache. The key is a hash of the URL without credentials, so no secret ends up
    in a path."""
    import hashlib

    root = os.environ.get(ARTIFACT_ENV) or load_config().get("artifact_dir")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "neuron-kb" / "servers"
    parts = urlsplit(redact(url))
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}/{database or ''}"
    return Path(str(root)).expanduser() / hashlib.blake2b(where.encode(), digest_size=8).hexdigest()


BUFFER_POOL_ENV = "NKB_BUFFER_POOL_MB"
DEFAULT_BUFFER_POOL_MB = 1024


def buffer_pool_bytes() -> int:
    """The embedded engine's buffer pool: $NKB_BUFFER_POOL_MB, else ``buffer_pool_mb`` in the
    config file, else 1 GiB. Set explicitly because LadybugDB's own default claims most of the
    machine's memory, which a process holding model weights and activation state cannot spare."""
    value = os.environ.get(BUFFER_POOL_ENV) or load_config().get("buffer_pool_mb") or DEFAULT_BUFFER_POOL_MB
    return int(value) * 1024 * 1024
