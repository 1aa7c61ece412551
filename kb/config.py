"""Where things are and who we are: store location and server credentials.

Values come from, in order: the command line, the environment, the config file
(``$XDG_CONFIG_HOME/neuron-kb/config.toml``), built-in defaults. Secrets are read here and
handed to the driver; nothing in neuron-kb prints them: every URL shown goes through
``redact`` and every driver message through ``scrub``.

The config file is TOML with these keys (``CONFIG_KEYS``), all optional; anything else in it
is refused with one line naming the file, so a typo does not silently fall back to a default::

    store = "/data/kb"                # a directory or a bolt:// / neo4j:// URL
    artifact_dir = "/data/artifacts"  # files beside a server's graph
    buffer_pool_mb = 1024             # the embedded engine's buffer pool

    [neo4j]
    user = "neo4j"
    password = "..."

    [openai]                          # an OpenAI-compatible endpoint for nkb explain / score
    base_url = "http://127.0.0.1:8080/v1"
    model = "..."
    api_key = "..."
    concurrency = 4
    max_retries = 6
    timeout = 120.0
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kb.errors import ConfigError

STORE_ENV = "NKB_STORE"
ARTIFACT_ENV = "NKB_ARTIFACT_DIR"
NEO4J_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")
#: Longest store location, path or URL (Linux's PATH_MAX). Longer text is refused before any
#: file system or network call, so it cannot turn into an OS error or a very long message.
MAX_LOCATION = 4096
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; a bigger one is not ours

# key -> (type, what a valid value is); "neo4j" is a table of its own keys.
CONFIG_KEYS: dict[str, tuple[type, str]] = {
    "store": (str, "a directory or a bolt:// / neo4j:// URL"),
    "artifact_dir": (str, "a directory"),
    "buffer_pool_mb": (int, "a positive number of MiB"),
}
NEO4J_KEYS: dict[str, tuple[type, str]] = {
    "user": (str, "the Neo4j user name"),
    "password": (str, "the Neo4j password, as a quoted string"),
}
OPENAI_KEYS: dict[str, tuple[type, str]] = {
    "base_url": (str, "the endpoint URL, e.g. http://127.0.0.1:8080/v1"),
    "model": (str, "the model name the endpoint serves"),
    "api_key": (str, "the API key, as a quoted string"),
    "concurrency": (int, "a positive number of requests in flight"),
    "max_retries": (int, "a number of retries"),
    "timeout": ((int, float), "a number of seconds"),
}
# Tables of the config file and their keys.
SECTIONS: dict[str, dict[str, tuple[type, str]]] = {"neo4j": NEO4J_KEYS, "openai": OPENAI_KEYS}


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "neuron-kb" / "config.toml"


def shorten(text: str, width: int = 120) -> str:
    """User input as safe to quote in a one-line message: control characters escaped, long
    text cut (saying how long it was)."""
    shown = text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    if len(shown) <= width:
        return shown
    return f"{shown[:width]}… ({len(text):,} characters)"


def _valid_keys() -> str:
    tables = "; ".join(f"a [{name}] table with {', '.join(keys)}" for name, keys in SECTIONS.items())
    return f"valid keys: {', '.join(CONFIG_KEYS)}; {tables}"


def _check_table(path: Path, table: dict, keys: dict[str, tuple[type, str]], prefix: str) -> None:
    for key, value in table.items():
        name = prefix + key
        if key not in keys:
            raise ConfigError(f"config file {path}: unknown key '{shorten(name, 60)}'", _valid_keys())
        kind, what = keys[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"config file {path}: {name} must be {what}, not a TOML {_toml_type(value)}",
                              _valid_keys())


def _toml_type(value: Any) -> str:
    return {str: "string", int: "integer", float: "float", bool: "boolean", dict: "table",
            list: "array"}.get(type(value), "date or time")


def load_config() -> dict:
    """The config file's contents, checked against ``CONFIG_KEYS``; {} when there is none.

    Anything wrong with the file (unreadable, not UTF-8, not TOML, an unknown key, a value of
    the wrong type, a store location that cannot be one) is a ``ConfigError`` naming the file.
    """
    path = config_path()
    try:
        if not path.exists():
            return {}
        if not path.is_file():
            raise ConfigError(f"config file {path} is not a file", "replace it with a TOML file, or remove it")
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or type(e).__name__}",
                          "make it readable, or remove it to use the defaults") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB",
                          f"a config file holds a few keys; {_valid_keys()}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                          "save it as UTF-8") from None
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}", _valid_keys()) from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: nested too deeply", _valid_keys()) from None
    _check_table(path, {k: v for k, v in config.items() if k not in SECTIONS}, CONFIG_KEYS, "")
    for name, keys in SECTIONS.items():
        if name not in config:
            continue
        if not isinstance(config[name], dict):
            raise ConfigError(f"config file {path}: {name} must be a table ([{name}] with {', '.join(keys)}), "
                              f"not a TOML {_toml_type(config[name])}", _valid_keys())
        _check_table(path, config[name], keys, f"{name}.")
    if "store" in config:
        check_location(config["store"], f"store in config file {path}")
    if "buffer_pool_mb" in config and config["buffer_pool_mb"] < 1:
        raise ConfigError(f"config file {path}: buffer_pool_mb must be a positive number of MiB, "
                          f"not {config['buffer_pool_mb']}", _valid_keys())
    return config


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCATION_HINT = "a store is a directory path, or a server URL bolt://HOST:7687 or neo4j://HOST:7687[/DATABASE]"


def check_location(url: str, what: str = "store location") -> str:
    """Refuse text that cannot name a store, before anything touches the file system or the
    network: empty, too long, holding NUL or line breaks, an unknown URL scheme, or a server
    URL that does not parse. ``what`` names where the text came from. Returns ``url``."""
    if not url:
        raise ConfigError(f"{what} is empty", _LOCATION_HINT)
    if len(url) > MAX_LOCATION:
        raise ConfigError(f"{what} is {len(url):,} characters long: {shorten(redact(url)[:60], 60)}…",
                          f"a store path or URL has at most {MAX_LOCATION} characters")
    if not url.isprintable():
        raise ConfigError(f"{what} holds a control character: {shorten(redact(url))}", _LOCATION_HINT)
    m = _SCHEME.match(url)
    if m is None:
        return url
    scheme = m.group(1).lower()
    if scheme not in NEO4J_SCHEMES:
        raise ConfigError(f"{what} {shorten(redact(url))} has the unsupported scheme {m.group(1)}://",
                          f"{_LOCATION_HINT} (also bolt+s, bolt+ssc, neo4j+s, neo4j+ssc)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is what raises for a bad one
    except ValueError as e:
        raise ConfigError(f"{what} {shorten(redact(url))} is not a valid URL: {e}", _LOCATION_HINT) from None
    if not parts.hostname:
        raise ConfigError(f"{what} {shorten(redact(url))} names no host", _LOCATION_HINT)
    try:
        parts.hostname.encode("idna")
    except UnicodeError as e:  # a label over 63 characters, an empty label...
        raise ConfigError(f"{what} {shorten(redact(url))} has an invalid host name: {e}", _LOCATION_HINT) from None
    if parts.fragment or url.endswith("#"):
        raise ConfigError(f"{what} {shorten(redact(url))}: a server URL takes no #fragment", _LOCATION_HINT)
    if parts.query and scheme.startswith("bolt"):
        # The driver refuses these too, but its message repeats the whole URL.
        raise ConfigError(f"{what} {shorten(redact(url))}: bolt:// URLs take no query string",
                          "give the user and password in NKB_NEO4J_USER / NKB_NEO4J_PASSWORD or the config file; "
                          "routing parameters need neo4j://")
    return url


def default_store() -> str:
    """The store used when no --store is given: $NKB_STORE, the config file, or a per-user directory."""
    if os.environ.get(STORE_ENV):
        return check_location(os.environ[STORE_ENV], f"${STORE_ENV}")
    configured = load_config().get("store")
    if configured:
        return configured
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return check_location(str(Path(base) / "neuron-kb" / "default"), "the default store (under $XDG_DATA_HOME)")


def is_server_url(url: str) -> bool:
    m = _SCHEME.match(url)
    return bool(m) and m.group(1).lower() in NEO4J_SCHEMES


def neo4j_credentials(url: str) -> tuple[str, str]:
    """User and password for a server URL: from the URL, else NKB_NEO4J_USER/PASSWORD, else the config file."""
    parts = urlsplit(url)
    section = load_config().get("neo4j", {})
    user = parts.username or os.environ.get("NKB_NEO4J_USER") or section.get("user") or "neo4j"
    password = parts.password or os.environ.get("NKB_NEO4J_PASSWORD") or section.get("password") or ""
    return user, password


# user-info (//user:secret@), and each value of a query string or fragment (?password=secret).
# The password part runs to the last @: more is hidden than a parser would call a password
# when a URL is odd, never less.
_USERINFO = re.compile(r"(//[^/?#@:\s]*:)\S*@")
_QUERY_VALUE = re.compile(r"([?&#;][^=&#;]*=)[^&#;]*")
_BARE_VALUE = re.compile(r"(?<=[?&#;])([^=&#;]+)(?=[&#;]|$)")  # ?secret with no key


def redact(url: str) -> str:
    """The URL as safe to show: a password in the user-info and every query or fragment value
    replaced by ***. Works on text, so it never fails, whatever the URL looks like."""
    if "://" not in url:
        return url  # a file system path: nothing secret in it
    url = _USERINFO.sub(r"\1***@", url)
    m = re.search(r"[?#]", url)
    if m is None:
        return url
    head, tail = url[: m.start()], _QUERY_VALUE.sub(r"\1***", url[m.start():])
    return head + _BARE_VALUE.sub("***", tail)


def secrets_of(url: str) -> list[str]:
    """The pieces of ``url`` that ``redact`` hides (for scrubbing driver messages that echo it)."""
    found = [m.group(0)[len(m.group(1)):-1] for m in _USERINFO.finditer(url)]
    rest = re.split(r"(?=[?#])", url, maxsplit=1)
    if "://" in url and len(rest) == 2:
        found += [m.group(0)[len(m.group(1)):] for m in _QUERY_VALUE.finditer(rest[1])]
        found += [m.group(0) for m in _BARE_VALUE.finditer(rest[1])]
    return [s for s in found if s and s != "***"]


def scrub(text: str, url: str, *secrets: str) -> str:
    """``text`` (say, a driver's message) with ``url`` shown redacted and every secret in it,
    or given, replaced by ***. Secrets of one or two characters are left (replacing them would
    garble the message and they tell nothing on their own)."""
    text = text.replace(url, redact(url))
    for secret in sorted({*secrets_of(url), *secrets}, key=len, reverse=True):
        if len(secret) > 2:
            text = text.replace(secret, "***")
    return text


def user_cache_dir() -> Path:
    """neuron-kb's directory in the user cache ($XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuron-kb"


def server_artifact_dir(url: str, database: str | None) -> Path:
    """Where files beside a server's graph live (checkpoints, vector indexes): a local directory
    per server and database, under $NKB_ARTIFACT_DIR, else ``artifact_dir`` in the config file,
    else the user cache. The key is a hash of the URL without credentials, so no secret ends up
    in a path."""
    import hashlib

    root = os.environ.get(ARTIFACT_ENV) or load_config().get("artifact_dir")
    if not root:
        root = user_cache_dir() / "servers"
    parts = urlsplit(redact(url))
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}/{database or ''}"
    return Path(str(root)).expanduser() / hashlib.blake2b(where.encode(), digest_size=8).hexdigest()


BUFFER_POOL_ENV = "NKB_BUFFER_POOL_MB"


# LadybugDB's own default (most of the machine) starved the process of the rest, and a pool
# that grows with the machine only raised the main job's peak RSS (6.8 GiB at a quarter of
# 24 GB). The largest write of SmolLM2's main job, its 1.84 million activation records, goes in
# COPYs sized to the pool (EmbeddedStore.bulk_batch_rows). Run alone, the lmhead and
# activations stages peaked at 3.76 GiB with a 1.5 GiB pool (four COPYs), 3.60 GiB with 1.25
# (five) and 3.38 GiB with 1 GiB (six), where the records' COPYs no longer set the peak and
# took 46 s as with 1.25 GiB. A second model's records fit beside the first's at 1 GiB too
# (30.4 s, 29.2 s at 1.25 GiB: bench-results/store-pool-small.json).
DEFAULT_BUFFER_POOL_MB = 1024


# `nkb delete-model` holds the whole delete in one transaction, and nothing else in its process
# needs memory. Deleting the demo KB's model (8.6M relationships, 1.36M of them its explanations'
# MENTIONS) ran out of a 1 GiB pool and fit 1.5 GiB (128 s, peak RSS 1.62 GB). The pool is
# taken as it is used, so the larger ceiling costs a small model nothing.
DELETE_BUFFER_POOL_MB = 4096


def buffer_pool_bytes(default_mb: int = DEFAULT_BUFFER_POOL_MB) -> int:
    """The embedded engine's buffer pool: $NKB_BUFFER_POOL_MB, else ``buffer_pool_mb`` in the
    config file, else ``default_mb`` (DEFAULT_BUFFER_POOL_MB, 1 GiB, unless a command that needs
    more says so). Set explicitly because LadybugDB's own default claims most of the machine's
    memory, which a process holding model weights and activation state cannot spare."""
    raw = os.environ.get(BUFFER_POOL_ENV)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"${BUFFER_POOL_ENV} must be a positive number of MiB, not '{shorten(raw, 60)}'",
                              f"unset it for the default of {default_mb} MiB")
        return value * 1024 * 1024
    return int(load_config().get("buffer_pool_mb") or default_mb) * 1024 * 1024
