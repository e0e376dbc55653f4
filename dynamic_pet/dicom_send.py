"""Send written DICOM files to a DICOM node: C-STORE (DIMSE, pynetdicom) or STOW-RS (DICOMweb, requests).

Destinations, as text:

``dicom://CALLED_AET@host:port[?calling=OUR_AET]``
    C-STORE over one association per attempt; our calling AE title defaults to ``PATLAK``.
``http(s)://[user:password@]host[:port]/path/dicom-web``
    STOW-RS: ``POST {url}/studies`` with ``multipart/related; type="application/dicom"`` bodies.

Local files are only read, never moved, edited or deleted, whatever happens to the send. Messages and logs
name the destination (without credentials) and file counts, never patient data.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "PATLAK"
STOW_BATCH_FILES = 64  # instances per STOW-RS request
MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8)
_TRANSIENT_HTTP = {408, 429}
_WARNING_STATUSES = {0x0001, 0x0107, 0x0116}  # plus 0xB000-0xBFFF: stored with a warning


class SendError(RuntimeError):
    """Sending to a DICOM node failed (after the retries); the message names the destination only."""


@dataclass(frozen=True)
class Destination:
    """Where outputs go: ``protocol`` is ``"c-store"`` (host, port, AE titles) or ``"stow-rs"`` (url)."""

    protocol: str
    host: str
    port: int
    called_aet: str = ""
    calling_aet: str = DEFAULT_CALLING_AET
    url: str = ""
    auth: tuple[str, str] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.protocol == "c-store":
            return f"dicom://{self.called_aet}@{self.host}:{self.port}"
        return self.url


@dataclass(frozen=True)
class SendReport:
    """What a successful send did."""

    destination: str
    protocol: str
    files: int
    attempts: int
    seconds: float


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


class _AttemptFailed(Exception):
    """One attempt failed; ``done`` lists the files it did store, ``transient`` whether to try again."""

    def __init__(self, reason: str, done: Iterable[_File] = (), transient: bool = True):
        super().__init__(reason)
        self.done, self.transient = list(done), transient


def _check_aet(aet: str, what: str) -> str:
    if not 1 <= len(aet) <= 16 or not aet.strip() or "\\" in aet or not aet.isascii() or not aet.isprintable():
        raise ValueError(f"{what} must be 1 to 16 printable ASCII characters without backslash, given {aet!r}")
    return aet


def parse_destination(text: str) -> Destination:
    """Parse ``dicom://CALLED_AET@host:port[?calling=OUR_AET]`` or an ``http(s)://`` DICOMweb base URL.

    Parameters
    ----------
    text:
        The destination as given on the command line or in ``PATLAK_SEND_TO``.

    Returns
    -------
    Destination

    Raises
    ------
    ValueError
        When the text is not one of the two forms (the message says what was expected).
    """
    parts = urlsplit(text.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"destination port must be a number from 1 to 65535 ({exc})") from None
    if parts.scheme == "dicom":
        if not parts.username or not parts.hostname or not port:
            raise ValueError(f"C-STORE destination must look like dicom://CALLED_AET@host:port, given {text!r}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"calling"}
        if unknown or parts.password is not None or parts.path not in ("", "/"):
            raise ValueError(f"C-STORE destination takes only ?calling=OUR_AET after host:port, given {text!r}")
        calling = query.get("calling", [DEFAULT_CALLING_AET])[-1]
        return Destination("c-store", parts.hostname, port, _check_aet(parts.username, "called AE title"),
                           _check_aet(calling, "calling AE title"))
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"STOW-RS destination must look like http://host:port/dicom-web, given {text!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # IPv6 literal
        netloc = host if port is None else f"{host}:{port}"
        path = parts.path.rstrip("/").removesuffix("/studies")
        auth = (parts.username or "", parts.password or "") if parts.username else None
        return Destination("stow-rs", parts.hostname, port or (443 if parts.scheme == "https" else 80),
                           url=urlunsplit((parts.scheme, netloc, path, "", "")), auth=auth)
    raise ValueError(f"destination must start with dicom:// (C-STORE) or http(s):// (STOW-RS), given {text!r}")


def _read_meta(path: Path) -> _File:
    try:
        meta = read_file_meta_info(path)
        return _File(path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                     str(meta.TransferSyntaxUID))
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise SendError(f"cannot send {path.name}: not a readable DICOM Part 10 file ({type(exc).__name__})") \
            from None


def send_files(files: Iterable[str | Path], destination: str | Destination, retries: int = 3,
               backoff_s: float = 1.0, timeout_s: float = 30.0) -> SendReport:
    """Send DICOM Part 10 files to ``destination``, retrying what was not stored.

    Parameters
    ----------
    files:
        Paths of DICOM files; they are only read.
    destination:
        Text for :func:`parse_destination`, or a parsed :class:`Destination`.
    retries:
        Further attempts after a failed one (each a new association or new requests, for the files not
        stored yet); waits ``backoff_s``, then twice as long, and so on.
    timeout_s:
        Connection and response timeout of each network step.

    Returns
    -------
    SendReport

    Raises
    ------
    SendError
        When files remain unsent after the last attempt, or at once on a refusal that retrying cannot
        change (e.g. an HTTP 4xx); a local file that is not DICOM is refused before anything is sent.
    """
    dest = parse_destination(destination) if isinstance(destination, str) else destination
    pending = [_read_meta(Path(f)) for f in files]
    attempt_fn = _c_store if dest.protocol == "c-store" else _stow
    n_files, t0, attempts = len(pending), time.perf_counter(), 0
    while pending:
        attempts += 1
        try:
            attempt_fn(pending, dest, timeout_s)
            pending = []
        except _AttemptFailed as exc:
            done = {f.path for f in exc.done}
            pending = [f for f in pending if f.path not in done]
            if not exc.transient or attempts > retries:
                raise SendError(f"{dest.protocol.upper()} to {dest} failed after {attempts} attempt(s): {exc}; "
                                f"{len(pending)} of {n_files} file(s) not stored") from None
            log.warning("%s to %s, attempt %d: %s; %d file(s) left, retrying",
                        dest.protocol.upper(), dest, attempts, exc, len(pending))
            time.sleep(backoff_s * 2 ** (attempts - 1))
    return SendReport(str(dest), dest.protocol, n_files, attempts, round(time.perf_counter() - t0, 3))


class _ReactorGate(threading.Event):
    """pynetdicom's reactor checkpoint, also telling when the reactor thread is really blocked on it.

    pynetdicom pauses the reactor before a C-STORE by waiting for a flag the reactor sets just *before*
    it waits; under CPU load the reactor can pass that point, take the C-STORE response off the queue
    ("Received unexpected C-STORE service message") and leave the sender to a DIMSE timeout.
    :meth:`pause` returns only once the reactor is blocked, so it cannot take the next response.
    """

    blocked = False

    def wait(self, timeout=None):
        with self._cond:
            self.blocked = True
            try:  # re-check the flag on wake-up: a set() followed at once by clear() must not let it run
                return self._cond.wait_for(lambda: self._flag, timeout)
            finally:
                self.blocked = False

    def pause(self, reactor: threading.Thread, timeout_s: float) -> None:
        """Clear the checkpoint; return once the reactor waits on it (or has ended, or after timeout_s)."""
        self.clear()
        deadline = time.monotonic() + timeout_s
        while reactor.is_alive() and time.monotonic() < deadline:
            with self._cond:
                if self.blocked:
                    return
            time.sleep(0.0002)


def _contexts(files: list[_File]):
    from pynetdicom import build_context

    syntaxes: dict[str, set[str]] = {}
    for f in files:
        syntaxes.setdefault(f.sop_class, {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(f.transfer_syntax)
    if len(syntaxes) > MAX_CONTEXTS:
        raise _AttemptFailed(f"{len(syntaxes)} SOP classes exceed one association's {MAX_CONTEXTS}", transient=False)
    return [build_context(sop_class, sorted(ts)) for sop_class, ts in syntaxes.items()]


def _c_store(files: list[_File], dest: Destination, timeout_s: float) -> None:
    """One association: C-STORE every file; raises _AttemptFailed with the files stored so far."""
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_aet)
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attr, timeout_s)
    assoc = ae.associate(dest.host, dest.port, _contexts(files), ae_title=dest.called_aet)
    if assoc.is_rejected:  # result 1: rejected-permanent (e.g. our AE title unknown there), 2: transient
        reply = getattr(assoc.acceptor, "primitive", None)
        raise _AttemptFailed(f"association rejected ({getattr(reply, 'reason_str', 'no reason given')})",
                             transient=getattr(reply, "result", 2) != 1)
    if not assoc.is_established:
        raise _AttemptFailed("association failed (no connection, or aborted by the peer)")
    with contextlib.suppress(AttributeError, OSError):  # Nagle costs ~90 ms per small instance otherwise
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    gate = _ReactorGate()
    gate.set()
    assoc._reactor_checkpoint = gate
    done, failures = [], []
    try:
        for f in files:
            gate.pause(assoc, timeout_s)
            try:
                status = assoc.send_c_store(f.path)
            except RuntimeError:
                raise _AttemptFailed("association lost during C-STORE", done) from None
            except (ValueError, AttributeError, OSError) as exc:
                failures.append(f"{f.path.name}: {exc}")
                continue
            code = int(status.Status) if "Status" in status else None
            if code is None:
                raise _AttemptFailed("association aborted or timed out during C-STORE", done)
            if code == 0 or code in _WARNING_STATUSES or 0xB000 <= code <= 0xBFFF:
                done.append(f)
            else:
                failures.append(f"{f.path.name}: status 0x{code:04X}")
    finally:
        if assoc.is_established:
            gate.pause(assoc, timeout_s)
            assoc.release()
    if failures:
        raise _AttemptFailed(f"{len(failures)} refused, first {failures[0]}", done)


def _multipart(files: list[_File], boundary: str) -> bytes:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + f.path.read_bytes() + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()


def _failed_stow_uids(response) -> set[str]:
    """SOP Instance UIDs in the STOW-RS response's Failed SOP Sequence (0008,1198)."""
    try:
        body = response.json()
    except ValueError:
        return set()
    items = (body.get("00081198") or {}).get("Value", []) if isinstance(body, dict) else []
    return {uid for item in items for uid in (item.get("00081155") or {}).get("Value", [])}


def _stow(files: list[_File], dest: Destination, timeout_s: float) -> None:
    """STOW-RS in batches; raises _AttemptFailed with the files stored so far."""
    import requests

    done: list[_File] = []
    for start in range(0, len(files), STOW_BATCH_FILES):
        batch = files[start:start + STOW_BATCH_FILES]
        boundary = uuid.uuid4().hex
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        try:
            response = requests.post(f"{dest.url}/studies", data=_multipart(batch, boundary), headers=headers,
                                     auth=dest.auth, timeout=timeout_s)
        except requests.RequestException as exc:
            raise _AttemptFailed(f"no response ({type(exc).__name__})", done) from None
        if response.status_code not in (200, 202):
            transient = response.status_code >= 500 or response.status_code in _TRANSIENT_HTTP
            raise _AttemptFailed(f"HTTP {response.status_code}", done, transient)
        failed = _failed_stow_uids(response)
        done += [f for f in batch if f.sop_instance not in failed]
        if failed:
            raise _AttemptFailed(f"{len(failed)} instance(s) refused (Failed SOP Sequence)", done)
