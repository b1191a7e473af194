"""Training-time access to a prepared dataset: memory-mapped splits, random windows, augmentation.

A dataset written by ``musegen prepare`` (see :mod:`musegen.data.prepare` for the layout) is opened
without loading its tokens: each split is an ``np.memmap`` plus an offsets array, and
:class:`WindowSampler` draws fixed-length windows inside documents, so a window never mixes the
end of one piece with the start of another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musegen.data.infill import InfillRearranger
from musegen.errors import MusegenError
from musegen.tokenizer import TOKENIZER_FILE

FORMAT = "musegen-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def split_files(directory: Path, name: str) -> tuple[Path, Path]:
    """The token file and offset index of split ``name`` (written by musegen.data.prepare)."""
    return directory / f"{name}.bin", directory / f"{name}.idx.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id: half the memory below 65,536 ids."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class TokenSplit:
    """One split: ``tokens[offsets[i]:offsets[i + 1]]`` is document ``i`` (BOS … EOS)."""

    name: str
    tokens: np.ndarray  # np.memmap, or an empty array for an empty split
    offsets: np.ndarray  # int64, num_docs + 1

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def document(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_docs:
            raise IndexError(f"document {i} out of range for split {self.name!r}")
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])

    def select(self, indices: list[int], name: str | None = None) -> TokenSplit:
        """An in-memory split of documents ``indices`` of this one, in that order."""
        docs = [self.document(int(i)) for i in indices]
        lengths = [len(d) for d in docs]
        offsets = np.cumsum([0, *lengths], dtype=np.int64)
        tokens = np.concatenate(docs) if docs else np.zeros(0, self.tokens.dtype)
        return TokenSplit(name or self.name, tokens, offsets)


class PreparedDataset:
    """A folder written by ``musegen prepare``, checked for completeness when opened."""

    def __init__(self, directory: Path, manifest: dict) -> None:
        self.directory = directory
        self.manifest = manifest
        self.vocab_size: int = int(manifest["vocab_size"])
        self.tokenizer_path = directory / TOKENIZER_FILE

    @classmethod
    def open(cls, directory: str | Path) -> PreparedDataset:
        directory = Path(directory)
        hint = f"run `musegen prepare SRC_DIR {directory}` first"
        if not directory.is_dir():
            raise MusegenError(f"prepared dataset {directory} does not exist; {hint}")
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            raise MusegenError(f"{directory} has no readable {MANIFEST}; {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MusegenError(f"{directory} is not a musegen-prepared dataset; {hint}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise MusegenError(
                f"{directory} has format version {manifest.get('format_version')}, this musegen "
                f"reads {FORMAT_VERSION}: prepare it again with this version"
            )
        missing = [TOKENIZER_FILE] if not (directory / TOKENIZER_FILE).is_file() else []
        for name in manifest.get("splits", {}):
            missing += [f.name for f in split_files(directory, name) if not f.is_file()]
        if missing or "splits" not in manifest:
            raise MusegenError(f"{directory} is incomplete (missing {', '.join(missing)}); {hint}")
        return cls(directory, manifest)

    def split(self, name: str) -> TokenSplit:
        """The memory-mapped split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in self.manifest["splits"]:
            known = ", ".join(self.manifest["splits"])
            raise MusegenError(f"{self.directory} has no split {name!r} (it has {known})")
        path, index = split_files(self.directory, name)
        offsets = np.load(index)
        dtype = np.dtype(self.manifest["dtype"])
        size = path.stat().st_size // dtype.itemsize
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets[-1] != size:
            raise MusegenError(f"{path} does not match its index: prepare the dataset again")
        tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        return TokenSplit(name, tokens, offsets)

    def documents_by_group(self, name: str) -> dict[str, list[int]]:
        """Document indices of split ``name`` per evaluation group (``corpus.json``'s "group").

        ``prepare`` writes a split's documents in the order of the manifest's "files" entries
        whose "split" is ``name``, so document ``i`` is the ``i``-th such entry. Entries without
        a group are left out; a dataset prepared without corpus.json files gives ``{}``.
        """
        entries = [e for e in self.manifest.get("files", []) if e.get("split") == name]
        offsets = np.load(split_files(self.directory, name)[1])
        lengths = np.diff(offsets)
        if len(entries) != len(lengths) or any(
            e.get("tokens") not in (None, int(n)) for e, n in zip(entries, lengths, strict=True)
        ):
            raise MusegenError(
                f"{self.directory}: the manifest's {name!r} files do not match {name}.bin; "
                "prepare the dataset again"
            )
        groups: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if entry.get("group"):
                groups.setdefault(str(entry["group"]), []).append(i)
        return dict(sorted(groups.items()))


class Augmentation:
    """Token-level transposition and velocity/tempo shifts of base (non-BPE) token windows.

    ``transpose`` is a half-open range of semitones, like ``range``: ``(-5, 6)`` draws -5…+5,
    narrowed per window so no pitch leaves the tokenizer's range. Drums are never transposed:
    they are PitchDrum/DrumOn tokens, or Pitch tokens after ``Program_-1``.
    """

    PITCHED = ("Pitch_", "NoteOn_", "NoteOff_")

    def __init__(
        self,
        tokenizer,
        transpose: tuple[int, int] = (-5, 6),
        velocity_shift: int = 1,
        tempo_shift: int = 1,
        program_within: float = 0.0,
        program_across: float = 0.0,
    ) -> None:
        if tokenizer.is_trained:
            raise MusegenError(
                "augmentation needs base tokens, but this tokenizer is BPE-trained: "
                "disable augmentation or prepare the data without --bpe-vocab"
            )
        if transpose[0] >= transpose[1]:
            raise MusegenError(f"transpose range {transpose} is empty: use (low, high), low < high")
        self.transpose, self.velocity_shift, self.tempo_shift = (
            transpose,
            velocity_shift,
            tempo_shift,
        )
        vocab: dict[str, int] = tokenizer.vocab
        size = max(vocab.values()) + 1
        self._pitch = np.full(size, -1, np.int64)  # pitch of a pitched token, else -1
        self._kind = np.full(size, -1, np.int64)  # which pitched prefix
        self._lookup = np.full((len(self.PITCHED), 128), -1, np.int64)
        for token, i in vocab.items():
            for k, prefix in enumerate(self.PITCHED):
                if token.startswith(prefix):
                    p = int(token[len(prefix) :])
                    self._pitch[i], self._kind[i], self._lookup[k, p] = p, k, i
        values = self._pitch[self._pitch >= 0]
        self._range = (int(values.min()), int(values.max())) if values.size else (0, 127)
        self._velocity = self._ordered(vocab, "Velocity_", size)
        self._tempo = self._ordered(vocab, "Tempo_", size)
        programs = {i: int(t[8:]) for t, i in vocab.items() if t.startswith("Program_")}
        self._program = np.full(size, -2, np.int64)  # -2: not a Program token
        for i, program in programs.items():
            self._program[i] = program
        # With PitchDrum tokens (or no programs at all) every Pitch token is a pitched note.
        config = tokenizer.config
        self._track_programs = bool(programs) and not getattr(config, "use_pitchdrum_tokens", True)
        if not (0 <= program_within <= 1 and 0 <= program_across <= 1):
            raise MusegenError("program remapping rates must be in [0, 1]")
        self.program_within, self.program_across = program_within, program_across
        self._program_id = {program: i for i, program in programs.items()}

    @staticmethod
    def _ordered(vocab: dict[str, int], prefix: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids sorted by value, bin index of every id or -1) for Velocity_/Tempo_ tokens."""
        items = sorted(
            (float(t[len(prefix) :]), i) for t, i in vocab.items() if t.startswith(prefix)
        )
        ids = np.asarray([i for _, i in items], np.int64)
        index = np.full(size, -1, np.int64)
        index[ids] = np.arange(len(ids))
        return ids, index

    def _pitched_mask(self, window: np.ndarray) -> np.ndarray:
        mask = self._pitch[window] >= 0
        if self._track_programs:
            program = self._program[window]
            where = np.where(program != -2, np.arange(len(window)), -1)
            last = np.maximum.accumulate(where)
            current = np.where(last >= 0, program[np.maximum(last, 0)], -1)
            mask &= current >= 0  # unknown context (before any Program) or drums: leave alone
        return mask

    def apply(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A transposed, velocity- and tempo-shifted copy of ``window`` (other ids untouched)."""
        out = np.array(window, dtype=np.int64, copy=True)
        inside = (out >= 0) & (out < len(self._pitch))
        ids = np.where(inside, out, 0)
        mask = self._pitched_mask(ids) & inside
        pitches = self._pitch[ids[mask]]
        lo, hi = self.transpose[0], self.transpose[1] - 1
        if pitches.size:
            lo = max(lo, self._range[0] - int(pitches.min()))
            hi = min(hi, self._range[1] - int(pitches.max()))
        shift = int(rng.integers(lo, hi + 1)) if lo <= hi else 0
        if shift and pitches.size:
            moved = self._lookup[self._kind[ids[mask]], pitches + shift]
            out[mask] = np.where(moved >= 0, moved, out[mask])
        self._remap_programs(out, inside, rng)
        for (bins, index), limit in (
            (self._velocity, self.velocity_shift),
            (self._tempo, self.tempo_shift),
        ):
            delta = int(rng.integers(-limit, limit + 1)) if limit > 0 and bins.size else 0
            where = inside & (index[ids] >= 0)
            if delta and where.any():
                out[where] = bins[np.clip(index[ids[where]] + delta, 0, len(bins) - 1)]
        return out

    # General MIDI families whose members are interchangeable enough to swap across: everything
    # but percussive/ethnic (112–119) and sound effects (120–127).
    _ACROSS_FAMILIES = tuple(range(14))

    def _remap_programs(
        self, out: np.ndarray, inside: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Give each pitched track of the window another GM program, consistently per window.

        Within its family (8 programs: pianos, guitars, basses, …) at ``program_within``, into
        another family at ``program_across``; drums stay drums, and two tracks never merge.
        """
        if not (self.program_within or self.program_across) or not self._program_id:
            return
        programs = self._program[np.where(inside, out, 0)]
        present = sorted({int(p) for p in programs[inside & (programs >= 0)]})
        used, mapping = set(present), {}
        for program in present:
            draw = rng.random()
            if draw < self.program_across:
                families = [f for f in self._ACROSS_FAMILIES if f != program // 8]
                new = int(rng.choice(families)) * 8 + int(rng.integers(8))
            elif draw < self.program_across + self.program_within:
                new = program // 8 * 8 + int(rng.integers(8))
            else:
                continue
            if new not in used and new in self._program_id:
                used.add(new)
                mapping[program] = new
        for old, new in mapping.items():
            out[inside & (programs == old)] = self._program_id[new]


class WindowSampler:
    """Random training windows of ``seq_len + 1`` tokens, each inside one document.

    A document is drawn with probability ∝ its number of possible windows (1 for documents
    shorter than a window, which are right-padded with ``pad_id``); the start is uniform. Batch
    ``k`` of rank ``r`` uses its own generator seeded by ``(seed, r, k)``: the stream is
    deterministic, ranks differ, and resuming needs only the batch counter.
    """

    def __init__(
        self,
        split: TokenSplit,
        seq_len: int,
        seed: int,
        pad_id: int,
        rank: int = 0,
        world_size: int = 1,
        augmentation: Augmentation | None = None,
        infill: InfillRearranger | None = None,
    ) -> None:
        if split.num_docs == 0:
            raise MusegenError(f"split {split.name!r} is empty: prepare more data")
        if seq_len < 1:
            raise MusegenError("seq_len must be at least 1")
        if not 0 <= rank < world_size:
            raise MusegenError(f"rank {rank} must be in [0, world_size={world_size})")
        self.split, self.seq_len, self.seed, self.pad_id = split, seq_len, seed, pad_id
        self.rank, self.world_size, self.augmentation = rank, world_size, augmentation
        self.infill = infill
        self._lengths = np.diff(split.offsets)
        self._windows = np.maximum(self._lengths - seq_len, 1)
        self._cumulative = np.cumsum(self._windows)
        self.step = 0

    def next_batch(self, batch_size: int) -> np.ndarray:
        """``[batch_size, seq_len + 1]`` int64 token windows; advances the stream by one batch."""
        rng = np.random.default_rng([self.seed, self.rank, self.step])
        self.step += 1
        picks = rng.integers(0, int(self._cumulative[-1]), size=batch_size)
        docs = np.searchsorted(self._cumulative, picks, side="right")
        starts = picks - (self._cumulative[docs] - self._windows[docs])
        width = self.seq_len + 1
        batch = np.full((batch_size, width), self.pad_id, dtype=np.int64)
        for row, (doc, start) in enumerate(zip(docs, starts, strict=True)):
            begin = int(self.split.offsets[doc] + start)
            n = int(min(self._lengths[doc] - start, width))
            window = np.asarray(self.split.tokens[begin : begin + n], dtype=np.int64)
            if self.augmentation is not None:
                window = self.augmentation.apply(window, rng)
            if self.infill is not None:
                window = self.infill.maybe_apply(window, rng)
            batch[row, : len(window)] = window  # an infilling example may be shorter
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise MusegenError(
                f"sampler state was saved with seed {state.get('seed')}, this run uses {self.seed}"
            )
        self.step = int(state["step"])


def iter_eval_windows(
    split: TokenSplit, seq_len: int, pad_id: int, max_windows: int | None = None
) -> Iterator[np.ndarray]:
    """Deterministic ``seq_len + 1`` windows for evaluation, one at a time (int64, 1-D).

    Windows start every ``seq_len`` tokens of each document, so every target token is scored
    exactly once; a document's last window is right-padded with ``pad_id``. With
    ``max_windows``, an evenly spaced subset across the whole split is used.
    """
    lengths = np.diff(split.offsets)
    counts = np.maximum(np.ceil((lengths - 1) / seq_len).astype(np.int64), 1)
    total = int(counts.sum())
    chosen = np.arange(total)
    if max_windows is not None and max_windows < total:
        chosen = np.unique(np.linspace(0, total - 1, max(max_windows, 0)).round().astype(np.int64))
    first = np.cumsum(counts) - counts
    for index in chosen:
        doc = int(np.searchsorted(first, index, side="right") - 1)
        start = int(split.offsets[doc] + (index - first[doc]) * seq_len)
        end = min(start + seq_len + 1, int(split.offsets[doc + 1]))
        window = np.full(seq_len + 1, pad_id, dtype=np.int64)
        window[: end - start] = split.tokens[start:end]
        yield window
