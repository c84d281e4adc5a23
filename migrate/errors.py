"""Protocol errors: one class per way a peer can send us something we refuse.

Each class carries the HTTP ``status`` it maps to and a stable ``code`` string,
so one middleware can turn any of them into ``{"error": code, "detail": ...}``
(STYLE.md point 9). The message passed to the constructor is the detail: it
names the offending value so a failed run says what was wrong, not just that
something was. Anything that is not a ``ProtocolError`` is a bug (a logged 500),
and no guest is ever resumed after either.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error caused by what the peer sent (or when it sent it).

    Raised only by validation code; catching it is the one place to decide
    how a refusal is reported.
    """

    status: int = 400
    code: str = "protocol-error"


class BadMagic(ProtocolError):
    """Raised when a frame does not start with ``b"PCPY"``: not our protocol, or desynced."""

    code = "bad-magic"


class UnsupportedVersion(ProtocolError):
    """Raised when a frame's version byte is not the one this build speaks."""

    code = "unsupported-version"


class TruncatedMessage(ProtocolError):
    """Raised when a header or body ends before the lengths it declares."""

    code = "truncated-message"


class MessageTooLarge(ProtocolError):
    """Raised when a frame body or a page count exceeds the configured bound."""

    status = 413
    code = "message-too-large"


class UnknownMessageType(ProtocolError):
    """Raised when a frame's type byte is not a known message type."""

    code = "unknown-message-type"


class ReservedBitsSet(ProtocolError):
    """Raised when undefined flag bits, a reserved field or padding are non-zero.

    Also raised for a flag that has no meaning on that message type (lz4 on a
    control message). Rejecting them keeps the bits free for a later version.
    """

    code = "reserved-bits-set"


class GfnOutOfRange(ProtocolError):
    """Raised when a batch names a gfn at or beyond the guest's memory size."""

    code = "gfn-out-of-range"


class DuplicateGfn(ProtocolError):
    """Raised when one batch carries the same gfn twice (its final content is ambiguous)."""

    code = "duplicate-gfn"


class BadPageKind(ProtocolError):
    """Raised when a page kind byte is neither NORMAL (0) nor ZERO (1)."""

    code = "bad-page-kind"


class PayloadLengthMismatch(ProtocolError):
    """Raised when a batch's payload is not exactly 4096 bytes per NORMAL page."""

    code = "payload-length-mismatch"


class DecompressedSizeMismatch(ProtocolError):
    """Raised when lz4 data declares, or expands to, other than 4096 bytes per NORMAL page.

    Also raised for lz4 data that does not decompress at all.
    """

    code = "decompressed-size-mismatch"


class PassOutOfOrder(ProtocolError):
    """Raised when a message carries a pass number other than the current or next pass."""

    status = 409
    code = "pass-out-of-order"


class UnexpectedMessage(ProtocolError):
    """Raised when a message arrives in a state that does not accept it (out of order, repeated)."""

    status = 409
    code = "unexpected-message"


class MemoryTooLarge(ProtocolError):
    """Raised when HELLO announces more guest memory than the destination allows."""

    status = 413
    code = "memory-too-large"


class BadControlMessage(ProtocolError):
    """Raised when a control body is not a UTF-8 JSON object, or lacks or mistypes a field."""

    code = "bad-control-message"


class MigrationBusy(ProtocolError):
    """Raised when a destination already running a migration is asked to start another."""

    status = 409
    code = "migration-busy"


class Unauthorized(ProtocolError):
    """Raised when a request lacks the token the destination was started with."""

    status = 401
    code = "unauthorized"


def to_json(err: ProtocolError) -> dict:
    """Return the JSON body a refusal is reported with: ``{"error": code, "detail": msg}``."""
    return {"error": err.code, "detail": str(err)}


class UnknownMigration(ProtocolError):
    """Raised when a request names a migration the destination is not receiving."""

    status = 404
    code = "unknown-migration"


class SourceTimeout(ProtocolError):
    """Raised when a request body stops arriving: the source is stopped, stalled or gone."""

    status = 408
    code = "source-timeout"


class MalformedBody(ProtocolError):
    """Raised when aiohttp cannot parse a request body's HTTP framing (chunked encoding)."""

    code = "malformed-body"
