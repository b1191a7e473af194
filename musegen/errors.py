"""One exception type for every mistake a user can fix.

Front ends (the CLI, the app) catch :class:`MusegenError` and show its message as a single
line; anything else is a bug and keeps its traceback.
"""


class MusegenError(Exception):
    """A problem with user input (a file, a flag, a form field) with a message saying what to do."""


class MidiError(MusegenError):
    """A MIDI file that cannot be read, or holds nothing usable."""


class CheckpointError(MusegenError):
    """A checkpoint directory that is missing files or does not match what is asked of it."""


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, cut at ``limit`` characters ("" if none):
    third-party errors can be long, multi-line or empty, and a report row is one line."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""
