"""``prepare``: a folder of MIDI files → training-ready token arrays, split by content hash.

Layout of a prepared dataset (read back by :mod:`musegen.data.dataset`)::

    manifest.json          every input file's fate, totals, tokenizer settings
    tokenizer.json         the tokenizer the ids belong to (BPE included)
    {train,val,test}.bin   flat token ids (manifest["dtype"]); each document is BOS ids… EOS
    {train,val,test}.idx.npy  int64 offsets, n_docs + 1; doc i = tokens[off[i]:off[i+1]]

Files are split by the SHA-256 of their bytes, so a rerun gives the same split, a file never
lands in two splits and exact duplicates are kept once. Everything is written into a temporary
folder beside OUT_DIR and renamed at the end: a half-written dataset never has the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musegen import __version__
from musegen.data.dataset import FORMAT, FORMAT_VERSION, MANIFEST, split_files, token_dtype
from musegen.data.pool import FileResult, tokenize_files
from musegen.data.sources import file_labels, find_corpora
from musegen.errors import MusegenError
from musegen.files import replace_dir
from musegen.tokenizer import (
    TokenizerSettings,
    build_tokenizer,
    check_bpe_vocab,
    load_tokenizer,
    save_tokenizer,
    settings_dict,
    special_id,
    train_bpe,
)

SPLITS = ("train", "val", "test")
MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class PrepareOptions:
    """Every choice that shapes a prepared dataset (recorded in the manifest)."""

    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    bpe_vocab: int | None = None
    max_files: int | None = None
    min_notes: int = 10
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_beats: int = 50_000  # longer files (hours, or absurd gaps) are skipped, not tokenized
    timeout_s: float = 60.0  # per file; a pathological file is skipped, not the run
    workers: int | None = None
    # A checkpoint (or tokenizer.json) whose tokenizer encodes the corpus, so the ids mean what
    # they meant to that model (fine-tuning); ``tokenizer`` and ``bpe_vocab`` are then unused.
    tokenizer_from: str | None = None

    def validate(self) -> None:
        self.tokenizer.validate()
        if self.tokenizer_from is not None:
            if self.bpe_vocab is not None:
                raise MusegenError(
                    "--bpe-vocab and --tokenizer-from exclude each other: the checkpoint's "
                    "tokenizer (and any BPE it learnt) is used as it is"
                )
            load_tokenizer(self.tokenizer_from)  # a one-line error when it is not one
        fractions = (self.val_fraction, self.test_fraction)
        if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise MusegenError(
                "--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1"
            )
        if self.max_files is not None and self.max_files < 1:
            raise MusegenError("--max-files must be at least 1")
        if self.min_notes < 1:
            raise MusegenError("--min-notes must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise MusegenError("--workers must be at least 1")
        if self.bpe_vocab is not None:
            check_bpe_vocab(build_tokenizer(self.tokenizer), self.bpe_vocab)

    def key(self) -> dict:
        """The settings that decide the result; a rerun with the same key replaces the data."""
        return {
            "tokenizer": settings_dict(self.tokenizer),
            "bpe_vocab": self.bpe_vocab,
            "max_files": self.max_files,
            "min_notes": self.min_notes,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "max_beats": self.max_beats,
        } | ({"tokenizer_from": str(self.tokenizer_from)} if self.tokenizer_from else {})


def scan(src: Path) -> tuple[list[str], int]:
    """MIDI files under ``src`` (``.mid``/``.midi``, any case) as sorted relative paths, plus
    the number of other files that were ignored."""
    if not src.exists():
        raise MusegenError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise MusegenError(f"{src} is not a folder: give the folder that holds your MIDI files")
    found, other = [], 0
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.lower().endswith(MIDI_SUFFIXES):
                found.append((Path(root) / name).relative_to(src).as_posix())
            elif not name.startswith("."):
                other += 1
    return sorted(found), other


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_fraction(sha: str) -> float:
    """A number in [0, 1) fixed by the content hash: where the file falls on the split line."""
    return int(sha[:16], 16) / 2.0**64


def split_for(sha: str, val_fraction: float, test_fraction: float) -> str:
    u = hash_fraction(sha)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _fill_empty_splits(entries: list[dict], options: PrepareOptions) -> None:
    """A tiny corpus may leave a split empty by chance: train gets the document hashed furthest
    from val/test; an empty val or test (fraction > 0) gets the train document hashed nearest
    its range. Deterministic, and training always has something to validate on."""
    docs = [e for e in entries if e["split"] is not None]
    movable = [e for e in docs if e.get("split_by") != "corpus"]  # a dataset's own split stays
    if movable and not any(e["split"] == "train" for e in docs):
        max(movable, key=lambda e: hash_fraction(e["sha256"]))["split"] = "train"
    for name, fraction in (("test", options.test_fraction), ("val", options.val_fraction)):
        docs = [e for e in entries if e["split"] is not None]
        train = [e for e in docs if e["split"] == "train" and e.get("split_by") != "corpus"]
        if fraction <= 0 or any(e["split"] == name for e in docs) or len(train) < 2:
            continue
        nearest = min(train, key=lambda e: hash_fraction(e["sha256"]))
        nearest["split"] = name


def _check_out_dir(out: Path, src: Path, options: PrepareOptions, overwrite: bool) -> None:
    """Refuse to replace a folder that is not this very dataset unless ``--overwrite``."""
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise MusegenError(f"OUT_DIR {out} must not be SRC_DIR or a folder containing it")
    if not out.exists():
        return
    if not out.is_dir():
        raise MusegenError(f"OUT_DIR {out} exists and is not a folder")
    if overwrite or not any(out.iterdir()):
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        is_dataset = manifest.get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_dataset = False
    if not is_dataset:
        raise MusegenError(
            f"OUT_DIR {out} is not empty and is not a musegen-prepared dataset; "
            "choose another folder or pass --overwrite to replace it"
        )
    key = json.loads(json.dumps(options.key()))  # tuples become lists, as in the file
    same = manifest.get("settings") == key and manifest.get("source") == str(src.resolve())
    if not same:
        raise MusegenError(
            f"OUT_DIR {out} holds a dataset prepared from another source or with other "
            "settings; pass --overwrite to replace it, or choose another folder"
        )


def _file_entries(src: Path, paths: list[str]) -> list[dict]:
    """One manifest entry per file: hash, and the first path of the same content if any."""
    entries: list[dict] = []
    first_of: dict[str, str] = {}
    for rel in paths:
        try:
            sha = sha256_file(src / rel)
        except OSError as exc:
            sha, reason = None, f"unreadable: {exc.strerror}"
        else:
            reason = None
        entry = {"path": rel, "sha256": sha, "split": None, "notes": 0, "tokens": 0}
        entry |= {"skipped": reason, "duplicate_of": first_of.get(sha) if sha else None}
        if sha and sha not in first_of:
            first_of[sha] = rel
        entries.append(entry)
    return entries


def _tokenize_pass(src, todo, tokenizer_path, options, progress, desc) -> dict[str, FileResult]:
    return tokenize_files(
        [(e["path"], str(src / e["path"])) for e in todo],
        tokenizer_path,
        min_notes=options.min_notes,
        max_beats=options.max_beats,
        timeout_s=options.timeout_s,
        workers=options.workers or os.cpu_count() or 1,
        progress=progress,
        desc=desc,
    )


def _write_splits(tmp: Path, entries: list[dict], results, bos: int, eos: int, dtype) -> dict:
    """Write each split's tokens and offsets in path order; returns per-split totals."""
    splits = {}
    for name in SPLITS:
        offsets = [0]
        path, index = split_files(tmp, name)
        with open(path, "wb") as fh:
            for e in entries:
                if e["split"] != name:
                    continue
                doc = np.concatenate(([bos], results[e["path"]].ids, [eos])).astype(dtype)
                doc.tofile(fh)
                e["tokens"] = int(doc.size)
                offsets.append(offsets[-1] + doc.size)
        np.save(index, np.asarray(offsets, dtype=np.int64))
        splits[name] = {"documents": len(offsets) - 1, "tokens": int(offsets[-1])}
    return splits


def prepare(
    src_dir: str | Path,
    out_dir: str | Path,
    options: PrepareOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize every MIDI file under ``src_dir`` into a prepared dataset at ``out_dir``.

    Returns the manifest. Bad files are skipped with a reason; only bad arguments raise.
    """
    options = options or PrepareOptions()
    options.validate()
    src, out = Path(src_dir), Path(out_dir)
    paths, ignored = scan(src)
    if not paths:
        raise MusegenError(f"no .mid or .midi files found under {src}")
    _check_out_dir(out, src, options, overwrite)
    paths = paths[: options.max_files] if options.max_files else paths
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _prepare_into(tmp, src, paths, ignored, options, progress)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _prepare_into(tmp, src, paths, ignored, options: PrepareOptions, progress: bool) -> dict:
    tmp.mkdir(parents=True)
    if options.tokenizer_from:
        tokenizer = load_tokenizer(options.tokenizer_from)
    else:
        tokenizer = build_tokenizer(options.tokenizer)
    tokenizer_path = save_tokenizer(tokenizer, tmp)
    entries = _file_entries(src, paths)
    corpora = find_corpora(src)
    labels = file_labels(corpora)
    todo = [e for e in entries if e["skipped"] is None and e["duplicate_of"] is None]
    results = _tokenize_pass(src, todo, tokenizer_path, options, progress, "tokenizing")
    for e in todo:
        res = results[e["path"]]
        e["notes"], e["skipped"] = res.notes, res.reason
        if res.reason is None:
            e["split"] = split_for(e["sha256"], options.val_fraction, options.test_fraction)
    _apply_corpus_labels(entries, labels)
    _fill_empty_splits(entries, options)
    kept = [e for e in entries if e["split"] is not None]
    if not kept:
        reasons = Counter(_reason_kind(e["skipped"]) for e in entries if e["skipped"])
        raise MusegenError(f"no usable MIDI file under {src} (skipped: {_counts(reasons)})")
    if options.bpe_vocab:
        train_files = [src / e["path"] for e in kept if e["split"] == "train"]
        train_bpe(tokenizer, train_files, options.bpe_vocab)
        tokenizer_path = save_tokenizer(tokenizer, tmp)
        results = _tokenize_pass(src, kept, tokenizer_path, options, progress, "BPE encoding")
        for e in kept:  # a file fine in pass one should stay fine; never keep it half-done
            if results[e["path"]].reason is not None:
                e["split"], e["skipped"] = None, results[e["path"]].reason
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size)
    special = {k: special_id(tokenizer, f"{k}_None") for k in ("PAD", "BOS", "EOS")}
    splits = _write_splits(tmp, entries, results, special["BOS"], special["EOS"], dtype)
    manifest = _manifest(src, entries, ignored, options, vocab_size, dtype.name, splits, special)
    manifest["sources"] = _sources(corpora, entries)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _apply_corpus_labels(entries: list[dict], labels: dict[str, dict]) -> None:
    """Each file's evaluation group, and its split where a ``corpus.json`` gives one (a
    dataset's own split, or one shared by every piece derived from a song) instead of the hash."""
    for e in entries:
        label = labels.get(e["path"], {})
        e["group"] = label.get("group")
        e["split_by"] = "hash"
        if e["split"] is not None and label.get("split") in SPLITS:
            e["split"], e["split_by"] = label["split"], "corpus"


def _sources(corpora: dict[str, dict], entries: list[dict]) -> list[dict]:
    """Licence and attribution of every corpus in the source folder, with what was kept of it,
    so a model card can cite exactly what the model learnt from."""
    out = []
    for prefix, data in corpora.items():
        listed = {f"{prefix}/{rel}" if prefix else rel for rel in data.get("files", {})}
        mine = [e for e in entries if e["split"] and e["path"] in listed]
        groups = Counter(e["group"] for e in mine if e["group"])
        info = {"folder": prefix or "."} | data.get("source", {})
        out.append(
            info
            | {
                "description": data.get("description", ""),
                "files": len(mine),
                "groups": dict(sorted(groups.items())),
            }
        )
    return out


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def _manifest(src, entries, ignored, options, vocab_size, dtype, splits, special) -> dict:
    kept = [e for e in entries if e["split"] is not None]
    skipped = Counter(_reason_kind(e["skipped"]) for e in entries if e["skipped"])
    tokenizer_info = settings_dict(options.tokenizer) | {"bpe_vocab_size": options.bpe_vocab}
    if options.tokenizer_from:
        tokenizer_info = {"from": str(options.tokenizer_from), "vocab_size": vocab_size}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "musegen_version": __version__,
        "tokenizer": tokenizer_info,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "special_ids": special,
        "settings": options.key(),
        "splits": splits,
        "files": entries,
        "totals": {
            "files": len(entries),
            "ok": len(kept),
            "duplicates": sum(e["duplicate_of"] is not None for e in entries),
            "skipped": dict(sorted(skipped.items())),
            "ignored_non_midi_files": ignored,
            "notes": sum(e["notes"] for e in kept),
            "tokens": sum(s["tokens"] for s in splits.values()),
        },
        "source": str(src.resolve()),
    }


def summary_lines(manifest: dict) -> list[str]:
    """A human summary of a manifest: ok / duplicates / skipped by reason, per-split sizes."""
    t = manifest["totals"]
    lines = [
        f"{t['files']} MIDI files: {t['ok']} tokenized, {t['duplicates']} duplicates, "
        f"{sum(t['skipped'].values())} skipped; {t['notes']} notes, {t['tokens']} tokens"
    ]
    for reason, count in t["skipped"].items():
        lines.append(f"  skipped ({reason}): {count}")
    for name, s in manifest["splits"].items():
        lines.append(f"  {name}: {s['documents']} documents, {s['tokens']} tokens")
    return lines
