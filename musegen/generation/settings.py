"""The generation settings, defined once: each field's default, allowed range and help text.

The front ends derive from this table instead of re-typing it: ``musegen generate`` builds its
flags with :func:`add_arguments`, the app builds its form and the hidden ``/continue`` API
components from :data:`SETTINGS` (see ``musegen/app/blocks.py``), and every one of them turns
what it received back into settings with :meth:`GenerationSettings.from_values`. A setting added
here therefore appears everywhere with the same name and default, and a front end cannot drop
one silently (``tests/test_settings.py`` walks the table).

Numbers use 0 for "off" rather than None (``bars=0``: no bar limit; ``top_k=0``: no top-k), so
a flag, a slider and a JSON field can all say it. ``seed=None`` (or a negative seed) draws one.
"""

from __future__ import annotations

import argparse
import math
import secrets
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from musegen.errors import MusegenError
from musegen.generation.grammar import Controls
from musegen.generation.prompt import TEXT_SETTINGS

MAX_SEED = 2**63 - 1
PROGRAMS = range(128)  # General MIDI program numbers


@dataclass(frozen=True)
class Spec:
    """What one setting means to a person and which values it takes."""

    help: str  # the CLI's --help, the page's info line and the API's description
    label: str  # the page's label
    low: float | None = None  # smallest allowed value
    high: float | None = None  # largest allowed value
    low_open: bool = False  # ``low`` itself is not allowed (temperature > 0)
    page: tuple[float, float, float] | None = None  # the page's slider: (min, max, step)
    off_switch: str | None = None  # an older CLI switch that turns this boolean off
    advanced: bool = False  # on the page: under "More settings", folded by default
    metavar: str | None = None  # text settings: how the CLI's --help shows the value

    def allowed(self) -> str:
        """The range in words, for error messages."""
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            if self.low_open:
                return f"in ({low}, {high}]"
            return f"between {low} and {high}"
        if self.low is not None:
            return f"> {low}" if self.low_open else f"≥ {low}"
        return f"≤ {high}" if self.high is not None else "any value"


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def setting(default: Any, help: str, label: str, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`Spec` in ``metadata["spec"]``."""
    return field(default=default, metadata={"spec": Spec(help=help, label=label, **spec)})


def guidance_setting(default: float, help: str, label: str) -> Any:
    """A prompt-guidance strength (:mod:`~musegen.generation.guidance`): 0 (off) to 4, under
    "More settings"."""
    return setting(default, help, label, low=0, high=4, page=(0.0, 3.0, 0.1), advanced=True)


@dataclass
class GenerationSettings:
    """Everything a user may choose about one generation request (validated on construction).

    The field order is the order of the ``/continue`` API's parameters and of the page's form.
    """

    bars: int = setting(
        4, "new bars per sample (0: no bar limit, stop at max_new_tokens)", "Bars to generate",
        low=0, page=(1, 16, 1),
    )  # fmt: skip
    temperature: float = setting(
        1.0, "below 1: safer; above 1: wilder", "Temperature",
        low=0, low_open=True, page=(0.1, 2.0, 0.05),
    )  # fmt: skip
    top_p: float = setting(  # 1 since 2026-12-06: a cut makes continuations denser (see docs)
        1.0, "nucleus sampling: keep the likeliest tokens up to this probability mass (1: off; "
        "below 1 the new bars run denser than the prompt)",
        "Top-p (nucleus)", low=0, high=1, low_open=True, page=(0.05, 1.0, 0.01),
    )  # fmt: skip
    top_k: int = setting(
        0, "sample from the k likeliest tokens (0: off)", "Top-k", low=0, page=(0, 200, 1)
    )
    seed: int | None = setting(
        0, "sample k uses seed+k; the same seed gives the same music (negative: random)", "Seed",
        high=MAX_SEED,
    )  # fmt: skip
    num_samples: int = setting(
        1, "how many continuations to write (each with its own seed)", "Variations",
        low=1, high=256, page=(1, 4, 1),
    )  # fmt: skip
    instruments: list[int] | None = setting(  # noqa: RUF009 - default None, not a list
        None, "GM programs (0-127) allowed for new notes; empty: the prompt's instruments "
        "(any when starting from nothing)", "Instruments allowed", low=0, high=127,
    )  # fmt: skip
    drums: bool = setting(True, "allow drum notes in the continuation", "Drums")
    max_new_tokens: int = setting(
        0, "token budget per sample (0: none beyond the bars)", "Max new tokens",
        low=0, advanced=True,
    )  # fmt: skip
    repetition_penalty: float = setting(
        1.0, "above 1 discourages repeating tokens (1: off)", "Repetition penalty",
        low=0, low_open=True, page=(0.5, 2.0, 0.05), advanced=True,
    )  # fmt: skip
    constrained: bool = setting(
        True, "grammar-constrained sampling: every continuation decodes to valid MIDI",
        "Grammar constraints", off_switch="--unconstrained", advanced=True,
    )  # fmt: skip
    keep_tempo: bool = setting(
        True, "keep the prompt's tempo", "Keep tempo", off_switch="--free-tempo", advanced=True
    )
    keep_time_signature: bool = setting(
        True, "keep the prompt's time signature", "Keep time signature",
        off_switch="--free-time-signature", advanced=True,
    )  # fmt: skip
    keep_instruments: bool = setting(
        True, "with no instruments chosen, play only the prompt's instruments "
        "(off: the model may bring in any)", "Keep the prompt's instruments",
        off_switch="--any-instrument", advanced=True,
    )  # fmt: skip
    find_bar_lines: bool = setting(
        True, "when the prompt's bar lines do not follow its notes (every note off the beat "
        "grid by the same few ticks, as when a click did not start at tick 0; one-beat bars; "
        "or played without a click at all), continue on beats and bars found from the notes; "
        "the prompt comes back as it was",
        "Find the bar lines from the notes", advanced=True,
    )  # fmt: skip
    prompt_bars: str = setting(
        "", "continue from these bars of the prompt only: A-B, A- (to its end) or A, numbered "
        "from 1 (empty: the whole prompt)", "Prompt bars", metavar="A-B",
    )  # fmt: skip
    prompt_tracks: str = setting(
        "", "continue from these tracks of the prompt only: indices from 0 and/or drums, "
        "comma-separated (empty: every track)", "Prompt tracks", metavar="I,I,…|drums",
    )  # fmt: skip
    key_guidance: float = guidance_setting(
        1.0, "keep each track's balance of pitch classes what it was in the prompt's last 8 "
        "bars: a pitch class the track played more than there gets less likely, one it played "
        "less more likely; the chance of writing a note is unchanged (0: off)", "Stay in key",
    )  # fmt: skip
    groove_guidance: float = guidance_setting(
        0.0, "keep each track's rhythm that of the prompt's last 4 bars, on the 16th-note "
        "grid: the next onset gets likelier where the prompt plays and less likely after "
        "skipping a 16th it always plays, and at an onset the tracks that played there get "
        "likelier, each as far as the prompt repeats its pattern (0: off; at 1 a continuation "
        "can run denser than the prompt)",
        "Keep the groove",
    )  # fmt: skip
    drum_loop_groove: float = guidance_setting(
        1.0, "keep the groove of a drum loop: for a prompt whose last 4 bars hold drums alone, "
        "groove guidance at this strength unless \"keep the groove\" is set higher (0: off)",
        "Keep a drum loop's groove",
    )  # fmt: skip
    track_guidance: float = guidance_setting(
        2.0, "keep each track's share of the notes what it was in the prompt's last 4 bars: "
        "an instrument that has gone quiet in the new bars gets likelier to play the next note; "
        "the chance of writing a note is unchanged (0: off)", "Keep every instrument",
    )  # fmt: skip
    kit_guidance: float = guidance_setting(
        1.0, "keep the drums on the prompt's kit: which drum each new drum note hits (kick, "
        "snare, hi-hat open or closed, cymbals, toms) is steered toward the drums' shares in "
        "the prompt's last 8 bars; whether and when a drum note comes is unchanged (0: off)",
        "Keep the drum kit",
    )  # fmt: skip
    density_guidance: float = guidance_setting(
        1.0, "keep the notes per bar near the prompt's last 4 bars: once the new bars run "
        "denser (sparser) than those, one more note at an onset gets less (more) likely; "
        "where the onsets fall is unchanged (0: off)", "Keep the density",
    )  # fmt: skip
    range_guidance: float = guidance_setting(
        0.0, "keep each track in the register it played in the prompt's last 8 bars: a pitch "
        "below its lowest note there or above its highest gets less likely the farther out it "
        "is; which notes come, and when, is unchanged (0: off)", "Keep each instrument's register",
    )  # fmt: skip
    repeat_guidance: float = guidance_setting(
        0.0, "where a track of the prompt repeats itself bar after bar (a pasted riff or drum "
        "pattern), lean its new bars toward repeating it too, as strongly as it repeats; a part "
        "that repeats no more exactly than a player would gets no pull (0: off)",
        "Keep repeating what the prompt repeats",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise front-end values (gradio floats, None for "off") and raise a one-line
        :class:`MusegenError` naming the first bad field, its value and what is allowed."""
        for s in SETTINGS:
            setattr(self, s.name, s.check(getattr(self, s.name)))
        if not self.bars and not self.max_new_tokens:
            raise MusegenError(
                f"bars={self.bars} and max_new_tokens={self.max_new_tokens}: give bars or "
                "max_new_tokens so generation knows when to stop"
            )
        if self.instruments == [] and not self.drums:
            raise MusegenError("instruments=[] and drums=False: allow at least one of them")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> GenerationSettings:
        """Settings from a front end's values by field name (missing ones keep their default).

        An empty instrument choice means "no restriction" there, as on the CLI and the page.
        """
        unknown = sorted(set(values) - set(NAMES))
        if unknown:
            raise MusegenError(f"unknown generation setting(s): {', '.join(unknown)}")
        values = dict(values)
        if not values.get("instruments", True):
            values["instruments"] = None
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> GenerationSettings:
        unknown = sorted(set(overrides) - set(NAMES))
        if unknown:
            raise MusegenError(f"unknown generation setting(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def with_seed(self) -> GenerationSettings:
        """These settings with a drawn seed when none was given."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(2**31 - 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Setting:
    """One row of the table: a field of :class:`GenerationSettings` with its kind and spec."""

    name: str
    kind: str  # "int", "float", "bool", "programs" or "text"
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` in this setting's type and range, or a one-line MusegenError."""
        if value is None and self.name in ("bars", "max_new_tokens"):
            return 0  # the Python API's older spelling of "off"
        if value is None and self.name in ("seed", "instruments"):
            return None
        if self.kind == "text":
            return TEXT_SETTINGS[self.name](value, self.name)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise MusegenError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind == "programs":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise MusegenError(f"{self.name} must be a list of GM programs, got {value!r}")
            programs = [self._number(v, integer=True) for v in value]
            bad = [p for p in programs if p not in PROGRAMS]
            if bad:
                raise MusegenError(f"{self.name} must be GM programs 0-127, got {bad}")
            return programs
        number = self._number(value, integer=self.kind == "int")
        if self.name == "seed" and number < 0:
            return None  # negative: random
        s = self.spec
        too_low = s.low is not None and (number <= s.low if s.low_open else number < s.low)
        if too_low or (s.high is not None and number > s.high):
            raise MusegenError(f"{self.name} must be {s.allowed()}, got {value!r}")
        return number

    def _number(self, value: Any, integer: bool) -> int | float:
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MusegenError(f"{self.name} must be {kind} ({self.spec.allowed()}), got {value!r}")
        if not math.isfinite(value) or (integer and not float(value).is_integer()):
            raise MusegenError(f"{self.name} must be {kind} ({self.spec.allowed()}), got {value!r}")
        return int(value) if integer else float(value)


def _table() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(GenerationSettings)
    kinds = {int: "int", float: "float", bool: "bool", int | None: "int", str: "text"}
    rows = []
    for f in fields(GenerationSettings):
        kind = kinds.get(hints[f.name], "programs")
        rows.append(Setting(f.name, kind, f.default, f.metadata["spec"]))
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _table()
NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULT_TOP_P: float = BY_NAME["top_p"].default  # the measuring commands sample as the app does


# --- derived: the grammar's controls ------------------------------------------------------------
def controls_for(settings: GenerationSettings) -> Controls:
    """The part of the settings the grammar enforces (hashable: grammars are cached by it)."""
    programs = frozenset(settings.instruments) if settings.instruments is not None else None
    return Controls(
        programs=programs,
        drums=settings.drums,
        keep_tempo=settings.keep_tempo,
        keep_time_signature=settings.keep_time_signature,
        bars=settings.bars or None,
    )


# --- derived: command-line flags ------------------------------------------------------------
def parse_programs(text: str) -> list[int]:
    """``"0,33"`` → ``[0, 33]`` (the CLI spelling of an instrument list)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"wants comma-separated GM programs 0-127, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting: ``--top-p`` for ``top_p``, same default, help from the table.

    A boolean gets ``--drums/--no-drums``; an older off switch (``--unconstrained``) stays as an
    alias writing the same value.
    """
    group = parser.add_argument_group("generation settings")
    for s in SETTINGS:
        help_text = s.spec.help
        if s.kind == "bool":
            if s.spec.off_switch:
                help_text += f" ({s.spec.off_switch}: same as --no-{s.flag[2:]})"
            group.add_argument(
                s.flag, action=argparse.BooleanOptionalAction, default=s.default, help=help_text
            )
            if s.spec.off_switch:
                group.add_argument(
                    s.spec.off_switch, dest=s.name, action="store_false", help=argparse.SUPPRESS
                )
        elif s.kind == "programs":
            group.add_argument(
                s.flag, type=parse_programs, default=s.default, metavar="P,P,…", help=help_text
            )
        elif s.kind == "text":
            group.add_argument(
                s.flag, type=str, default=s.default, metavar=s.spec.metavar, help=help_text
            )
        else:
            number = int if s.kind == "int" else float
            group.add_argument(s.flag, type=number, default=s.default, help=help_text)


GUIDANCE = (
    "key_guidance",
    "groove_guidance",
    "drum_loop_groove",
    "track_guidance",
    "kit_guidance",
    "density_guidance",
    "range_guidance",
    "repeat_guidance",
)


def add_guidance_overrides(parser: argparse.ArgumentParser) -> None:
    """``--key-guidance`` / ``--groove-guidance`` for a measuring command: unset (None) leaves
    the setting's default, so the command measures what the app and the CLI do."""
    for name in GUIDANCE:
        s = BY_NAME[name]
        parser.add_argument(
            s.flag, type=float, default=None, metavar="S",
            help=f"{s.spec.label.lower()}: {s.spec.help} (default: {_num(s.default)})",
        )  # fmt: skip


def guidance_overrides(args: argparse.Namespace) -> dict[str, float]:
    """The guidance settings :func:`add_guidance_overrides` flags set, by setting name."""
    return {name: getattr(args, name) for name in GUIDANCE if getattr(args, name) is not None}


def from_args(args: argparse.Namespace) -> GenerationSettings:
    """The settings the flags of :func:`add_arguments` describe (validated)."""
    return GenerationSettings.from_values({name: getattr(args, name) for name in NAMES})


__all__ = [
    "BY_NAME",
    "DEFAULT_TOP_P",
    "GUIDANCE",
    "NAMES",
    "SETTINGS",
    "GenerationSettings",
    "Setting",
    "Spec",
    "add_arguments",
    "add_guidance_overrides",
    "controls_for",
    "from_args",
    "guidance_overrides",
    "parse_programs",
]
