"""MLLP transport: framing, client, listener. Knows nothing of HL7 content."""

from .client import Backoff, MLLPConnection, open_connection
from .errors import (
    ConnectError,
    ConnectFailed,
    ConnectTimeout,
    FrameTooLarge,
    FramingError,
    IncompleteFrame,
    MLLPError,
    PeerClosed,
    ResponseTimeout,
)
from .framing import FrameReader, frame
from .server import CloseConnection, Peer, connection_count, serve, shutdown

__all__ = [
    "Backoff",
    "CloseConnection",
    "ConnectError",
    "ConnectFailed",
    "ConnectTimeout",
    "FrameReader",
    "FrameTooLarge",
    "FramingError",
    "IncompleteFrame",
    "MLLPConnection",
    "MLLPError",
    "Peer",
    "PeerClosed",
    "ResponseTimeout",
    "connection_count",
    "frame",
    "open_connection",
    "serve",
    "shutdown",
]
