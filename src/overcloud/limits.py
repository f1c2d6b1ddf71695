"""Caps on what a request can make the Tower do, so that no input amplifies: a small body
never becomes a large answer, a large row, a large file or a long computation.

Each cap is named here with the reason for its size; docs/services.md ("Limits on input")
lists them for users. Everything over a cap is refused with a 4xx that names the cap.
"""

from __future__ import annotations

import ctypes
import reprlib
from typing import Any

#: an error message shows at most this many characters of what the caller sent
ECHO_CHARS = 200

#: a pattern body (YAML, or a tar.gz of a pattern directory), and the YAML it holds
MAX_PATTERN_BYTES = 10 * 1024 * 1024
#: YAML nodes in a whole pattern: the smart-energy pattern has ~730; a node costs the
#: Tower ~0.4 KiB and ~5 µs while it is loaded, so this bounds both (~20 MB, ~0.25 s)
MAX_YAML_NODES = 50_000
#: nesting of YAML collections (a Kubernetes manifest needs ~12)
MAX_YAML_DEPTH = 64
#: characters of a YAML integer (Kubernetes' are int64: 19 digits). Longer ones are refused
#: before Python converts them (quadratic for 1:2:3... base-60 integers; over 4300 digits
#: Python refuses).
MAX_YAML_INT_CHARS = 64
#: members of a tar.gz pattern (a directory's manifests and its images/ sources), and the
#: bytes the gzip stream may unpack to, headers and skipped members included
MAX_TAR_MEMBERS = 2_000
MAX_TAR_BYTES = 4 * MAX_PATTERN_BYTES

#: the normalised pattern (every Deployment's containers, commands, environment after
#: ConfigMaps and $(VAR) expansion, probes; its Services): what the Tower stores per service
#: and writes into each replica's launch script and env file. Linux itself refuses to start
#: a process whose arguments and environment pass 2 MiB (a quarter of the 8 MiB stack).
MAX_SPEC_CHARS = 1024 * 1024

#: bytes of an exec probe's stdout+stderr the Tower keeps; the rest is read and dropped
PROBE_OUTPUT_BYTES = 64 * 1024


#: glibc's mallopt() parameter for the size from which an allocation gets its own mapping
_M_MMAP_THRESHOLD = -3


def return_large_buffers() -> bool:
    """Pin glibc's mmap threshold at its default, 128 KiB, so that every large buffer (a 10 MiB
    body, its decoded copy, the parser's) has a mapping of its own, returned to the system when
    freed. Left to itself glibc raises the threshold to the largest buffer freed so far, and
    later ones come from the heap, where freed memory mostly stays: a Tower kept 36 MB after two
    rounds of the hostile inputs, 6 MB with the threshold pinned. False where it cannot (not glibc)."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1
    except (OSError, AttributeError):
        return False


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """A value the caller sent, for an error message: a repr of at most ``limit`` characters,
    never building the whole repr of a huge string or container first."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    return clip(_REPR.repr(value), limit)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = ECHO_CHARS
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
