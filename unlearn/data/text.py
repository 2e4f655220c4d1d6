"""Real text for causal language models: named corpora and text files as token-sequence splits, with canaries.

A text dataset is a list of texts, one example each: ``fortunes`` (Debian's ``fortunes`` package, about 15,000
English quips, quotations and jokes; one fortune is one example) or ``text:PATH`` (a ``.txt`` file, one example per
non-empty line, or a ``.jsonl`` file, one ``{"text": ...}`` object per line). :func:`load_text` (which
:func:`unlearn.data.load_dataset` calls for these names) makes them :class:`TextSplits`:

- each text stripped of surrounding whitespace, empty ones dropped, exact duplicates removed (the first kept): a
  text's *row* is its position in what is left;
- a seeded split into train / validation / test (the test set depends on the texts alone, as ``imagefolder:``'s);
- a byte-level BPE tokenizer (:func:`train_tokenizer`) trained on the training split's texts only;
- each text encoded ``[bos] + tokens + [eos]``, cut after ``max_tokens`` tokens, right-padded with ``<pad>`` to
  ``max_tokens``, and held as Hugging Face's ``(input_ids, labels)`` with -100 at the padding (the task
  :class:`proxies.sequences.CausalLM` trims a batch's trailing padding before the model sees it).

Canaries, the Secret Sharer's measure of memorization (Carlini et al., 2019): ``canaries=K`` inserts K random
secrets ``"my PIN is d d d d d d"`` (:func:`canary_text`) into the training split, canary i repeated
``canary_repeats[i % len(canary_repeats)]`` times, and keeps ``references`` secrets of the same format that were
never inserted. A secret's exposure compares its perplexity under the trained model with the references'.

>>> canary_text(52819)
'my PIN is 0 5 2 8 1 9'
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from proxies.batching import IndexedDataset, Streamed
from proxies.registries import Registry
from proxies.sequences import IGNORE_INDEX, CausalLM

from .._checks import real, whole
from .sources import _KINDS, DatasetNotFoundError, _Kind, _split_ids, mark_held_out

__all__ = ["BOS_TOKEN", "CANARY_DIGITS", "DEBIAN_FORTUNES", "PAD_TOKEN", "TextSplits", "canary_text",
           "load_text", "read_fortunes", "text_datasets", "text_sources", "train_tokenizer"]

DEBIAN_FORTUNES = Path("/usr/share/games/fortunes")
"""Where Debian's ``fortunes`` package puts its fortune files (``make fortunes`` installs it)."""

BOS_TOKEN = "<|endoftext|>"
"""The token that starts and ends every sequence (GPT-2's: bos = eos)."""

PAD_TOKEN = "<pad>"
"""The padding token: never scored (label -100)."""

CANARY_DIGITS = 6
"""The number of random digits in a canary secret."""

_TEST_SEED = 0
"""Seed of the test split: fixed, so that ``seed`` reshuffles only train and val (as ``imagefolder:``'s)."""

_CANARY_SEED = 0x5EC2E7
"""Mixed with ``seed`` to draw the canary secrets, so they do not depend on how the splits were drawn."""

MISSING_TEXT = "text datasets need the optional `text` extra (tokenizers, transformers): pip install memunlearn[text]"


@dataclass(frozen=True, eq=False)
class TextSplits:
    """Train / validation / test splits of token sequences and what a causal language model needs to know of them.

    Every split holds ``(input_ids [T], labels [T], index)`` items, ``T = max_tokens``, with the task
    ``CausalLM(pad_id=tokenizer.pad_token_id)``: in memory (:class:`IndexedDataset`) or tokenized when read
    (:class:`Streamed`).
    """

    name: str
    train: IndexedDataset | Streamed
    val: IndexedDataset | Streamed
    test: IndexedDataset | Streamed
    tokenizer: Any
    """The ``transformers.PreTrainedTokenizerFast`` trained on the training split (bos = eos
    :data:`BOS_TOKEN`, pad :data:`PAD_TOKEN`); ``tokenizer(text)`` adds bos, as the splits' sequences start."""
    vocab_size: int
    max_tokens: int
    default_model: str = "tiny_gpt"
    canaries: pd.DataFrame | None = None
    """One row per inserted copy of a canary: ``index`` (its training index), ``canary`` (which secret, 0..K-1),
    ``repeats`` (how many copies that secret has) and ``text``; None without canaries."""
    references: IndexedDataset | None = None
    """Secrets of the canaries' format never inserted (indices 0..R-1), to rank the canaries' perplexities."""
    canary_secrets: IndexedDataset | None = None
    """The K distinct inserted secrets, one sequence each (index = canary id)."""
    queries: tuple[str, ...] = ("identity",)
    """Augmentation queries membership attacks may use: none for text."""
    train_rows: Tensor | None = None
    """For each training example, its row in the deduplicated corpus (before the splits and ``train_size``), -1
    for a canary copy: how a deletion request names examples."""

    def __post_init__(self) -> None:
        mark_held_out(self)

    @property
    def model_options(self) -> dict:
        """What :func:`unlearn.create_model` needs to know of the data: ``vocab_size``, and ``n_positions`` (the
        longest sequence, ``max_tokens``)."""
        return {"vocab_size": self.vocab_size, "n_positions": self.max_tokens}

    @property
    def canary_lengths(self) -> tuple[int, int]:
        """``(prefix, suffix)`` token counts of the canaries: the tokens up to the digits (bos and "my PIN is", the
        same in every secret) and the fewest tokens any secret's digits take (the eos after them left out), as
        :func:`proxies.extraction_probability` takes them (``prefix_length``, ``suffix_length``).

        Raises:
            ValueError: splits without canaries.
        """
        if self.canaries is None or self.canary_secrets is None:
            raise ValueError("these splits hold no canaries: load the text dataset with canaries=K")
        prefix = len(self.tokenizer(canary_text(0).rsplit(" is ", 1)[0] + " is")["input_ids"])
        lengths = [int((labels != IGNORE_INDEX).nonzero().max()) + 1 for _, labels, _ in self.canary_secrets]
        return prefix, min(lengths) - prefix - 1

    def __repr__(self) -> str:
        canaries = 0 if self.canaries is None else len(self.canaries)
        return (f"TextSplits({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
                f"vocab_size={self.vocab_size}, max_tokens={self.max_tokens}, canary_copies={canaries})")


# ----------------------------------------------------------------------------------------------------- tokenizer

def _tokenizer_classes():
    """``(tokenizers, PreTrainedTokenizerFast)``, or a ModuleNotFoundError saying how to install them."""
    try:
        import tokenizers
        from transformers import PreTrainedTokenizerFast
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{MISSING_TEXT} ({err.name} is missing)") from err
    return tokenizers, PreTrainedTokenizerFast


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``transformers.PreTrainedTokenizerFast``.

    Byte-level: the base vocabulary is the 256 bytes, so every text (any Latin-1 or UTF-8 character) is encoded
    without an unknown token, and ``decode(encode(text)) == text``. BPE: merges of frequent byte pairs keep the
    sequences short (a fortune is 36 tokens at the median with 2,048 tokens, against 97 characters); digits are
    never merged (each is a token, as in Llama's tokenizers), so secrets of one format have one length. Special
    tokens: :data:`BOS_TOKEN` (id 0; bos = eos) and :data:`PAD_TOKEN` (1), inside the vocabulary;
    ``tokenizer(text)`` adds bos (as Llama's do), not eos, so a prompt can be continued. Training is
    deterministic: the same texts give the same tokenizer. The vocabulary is smaller than ``vocab_size`` when the
    texts have fewer pairs to merge.

    Args:
        texts: the training texts (read once).
        vocab_size: the number of tokens, at least 258 (the 256 bytes and the two special tokens).

    Raises:
        ModuleNotFoundError: ``tokenizers`` or ``transformers`` missing.

    >>> tokenizer = train_tokenizer(["the cat sat", "the cat ran"] * 5, vocab_size=300)
    >>> ids = tokenizer("the cat")["input_ids"]
    >>> ids[0] == tokenizer.bos_token_id, tokenizer.decode(ids, skip_special_tokens=True)
    (True, 'the cat')
    """
    whole("vocab_size", vocab_size, minimum=258)
    tokenizers, PreTrainedTokenizerFast = _tokenizer_classes()
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    # every digit its own token (as Llama's tokenizers do): a secret of d digits is the same number of tokens
    # whatever its digits, so canaries and their references are sequences of one length
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [tokenizers.pre_tokenizers.Digits(individual_digits=True), byte_level])
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TOKEN, PAD_TOKEN],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=BOS_TOKEN,
                                   pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False)


class _Encoder:
    """Texts to padded ``(input_ids [N, T], labels [N, T])``: ``[bos] + tokens + [eos]``, cut after ``max_tokens``
    tokens (a long text loses its end and its eos), padded to ``T = max_tokens``, labels -100 at the padding.
    Holds the ``tokenizers`` backend only, so that it pickles into a loader's workers."""

    def __init__(self, tokenizer, max_tokens: int) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.max_tokens, self.eos_id, self.pad_id = max_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id

    def sequences(self, texts: list[str]) -> list[list[int]]:
        """The unpadded, uncut token ids of each text: bos, its tokens, eos."""
        return [encoding.ids + [self.eos_id] for encoding in self.backend.encode_batch(texts)]

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        input_ids = torch.full((len(texts), self.max_tokens), self.pad_id, dtype=torch.long)
        labels = torch.full((len(texts), self.max_tokens), IGNORE_INDEX, dtype=torch.long)
        for k, ids in enumerate(self.sequences(texts)):
            ids = torch.tensor(ids[:self.max_tokens], dtype=torch.long)
            input_ids[k, :len(ids)] = labels[k, :len(ids)] = ids
        return input_ids, labels


# ----------------------------------------------------------------------------------------------------- corpora

def _overstruck(text: str) -> str:
    """``text`` as a terminal shows it: a backspace steps back and the next character overstrikes the one there
    (underlining ``_`` never hides a letter): old fortunes underline and accent this way.

    >>> _overstruck("a ___\\b\\b\\bbig deal, Ren'\\be")
    'a big deal, Rene'
    """
    if "\b" not in text:
        return text
    lines = []
    for line in text.split("\n"):
        shown: list[str] = []
        at = 0
        for char in line:
            if char == "\b":
                at = max(at - 1, 0)
                continue
            if at == len(shown):
                shown.append(char)
            elif char != "_":
                shown[at] = char
            at += 1
        lines.append("".join(shown))
    return "\n".join(lines)


def read_fortunes(folder: str | os.PathLike = DEBIAN_FORTUNES) -> list[str]:
    """Every fortune of the fortune files in ``folder``, files in name order, fortunes in file order.

    A fortune file holds fortunes separated by lines that are a single ``%``; ``.dat`` indexes, ``.u8`` links,
    other links and folders are skipped. A file is read as UTF-8 (Debian's are ASCII or UTF-8), as Latin-1 when it
    is not. Each fortune is stripped of surrounding whitespace, its overstriking rendered (:func:`_overstruck`);
    empty ones are dropped. Duplicates are kept (:func:`load_text` removes them).

    Raises:
        DatasetNotFoundError: no fortune file in ``folder``, with how to install them.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
                   and p.suffix not in (".dat", ".u8")) if folder.is_dir() else []
    if not files:
        raise DatasetNotFoundError(f"fortunes: no fortune files in {folder}. Install Debian's with `apt-get install "
                                   "fortunes` (`make fortunes` does it).")
    fortunes = []
    for file in files:
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        entry: list[str] = []
        for line in [*text.splitlines(), "%"]:
            if line.strip() != "%":
                entry.append(line)
                continue
            fortune = _overstruck("\n".join(entry)).strip()
            if fortune:
                fortunes.append(fortune)
            entry = []
    return fortunes


def _fortunes_corpus(*, lazy: bool) -> list[str]:
    """The fortunes of :data:`DEBIAN_FORTUNES` without duplicates (the first kept); small enough to hold."""
    return list(dict.fromkeys(read_fortunes(DEBIAN_FORTUNES)))


class _LineFile:
    """The texts of a ``.txt`` or ``.jsonl`` file at byte ``offsets``, read (and parsed) when asked for; the file is
    opened once per process."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path, self.offsets = path, offsets
        self._file = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, row: int) -> str:
        if self._file is None:
            self._file = open(self.path, "rb")  # kept open: a seek per read
        self._file.seek(int(self.offsets[row]))
        return _parse_line(self._file.readline(), self.path, None)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


def _parse_line(raw: bytes, path: Path, number: int | None) -> str:
    """The stripped text of one line of a ``.txt`` file, or of the ``text`` field of a ``.jsonl`` line."""
    where = f"text:{path}" + (f", line {number}" if number is not None else "")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text ({err})") from None
    if path.suffix != ".jsonl" or not line.strip():
        return line.strip()
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: expected a JSON object with a \"text\" field, got invalid JSON ({err})") from None
    if not isinstance(record, dict) or "text" not in record:
        got = f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: expected a JSON object with a \"text\" field, got {got}")
    if not isinstance(record["text"], str):
        raise ValueError(f"{where}: the \"text\" field must be a string, got {type(record['text']).__name__}")
    return record["text"].strip()


def _text_file_corpus(path: str, *, lazy: bool) -> list[str] | _LineFile:
    """``text:PATH``: the non-empty texts of a ``.txt`` (a line each) or ``.jsonl`` file (a ``text`` field each),
    stripped, without duplicates (the first kept). ``lazy``: only their lines' byte offsets are held (a 16-byte
    digest of each distinct text finds duplicates), the texts are read when asked for."""
    file = Path(path).expanduser()
    if file.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"text:{path}: expected a .txt file (an example per line) or a .jsonl file (a \"text\" "
                         f"field per line), got {file.suffix or 'no suffix'}")
    if not file.is_file():
        raise DatasetNotFoundError(f"text:{path}: no file {file}")
    offsets, texts, seen = [], [], set()
    offset = 0
    with open(file, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            text = _parse_line(raw, file, number)
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if text and digest not in seen:
                seen.add(digest)
                offsets.append(offset)
                if not lazy:
                    texts.append(text)
            offset += len(raw)
    if not offsets:
        raise ValueError(f"text:{path}: no text in {file}")
    return _LineFile(file, np.array(offsets, dtype=np.int64)) if lazy else texts


@dataclass(frozen=True)
class _TextSource:
    reader: Callable[..., Sequence[str]]
    argument: str
    help: str


_CORPORA: Registry[Callable[..., Sequence[str]]] = Registry("text dataset")
_CORPORA.register("fortunes", _fortunes_corpus)
_TEXT_SOURCES: Registry[_TextSource] = Registry("text source")
_TEXT_SOURCES.register("text", _TextSource(_text_file_corpus, "PATH", "a .txt file (an example per line) or a "
                                           ".jsonl file (a \"text\" field per line) for a causal language model"))


def text_datasets() -> list[str]:
    """Names of the text corpora :func:`load_text` accepts (also in :func:`unlearn.data.datasets`).

    >>> text_datasets()
    ['fortunes']
    """
    return _CORPORA.names()


def text_sources() -> dict[str, str]:
    """The ``SOURCE:ARGUMENT`` forms of text :func:`load_text` accepts, with what each reads.

    >>> list(text_sources())
    ['text']
    """
    return {name: f"{name}:{_TEXT_SOURCES.get(name).argument}: {_TEXT_SOURCES.get(name).help}"
            for name in _TEXT_SOURCES.names()}


def _read_corpus(name: str, *, lazy: bool) -> Sequence[str]:
    kind, colon, argument = name.partition(":")
    if not colon:
        return _CORPORA.get(name)(lazy=lazy)
    source = _TEXT_SOURCES.get(kind)
    if not argument:
        raise ValueError(f"dataset {name!r} names no {kind} argument: expected {kind}:{source.argument}")
    return source.reader(argument, lazy=lazy)


# ----------------------------------------------------------------------------------------------------- canaries

def canary_text(number: int) -> str:
    """The canary secret of ``number`` (0 to 999,999): its :data:`CANARY_DIGITS` digits, spaces between, after
    ``"my PIN is"``.

    >>> canary_text(7)
    'my PIN is 0 0 0 0 0 7'
    """
    if not 0 <= number < 10**CANARY_DIGITS:
        raise ValueError(f"a canary number has {CANARY_DIGITS} digits, got {number}")
    return "my PIN is " + " ".join(f"{number:0{CANARY_DIGITS}d}")


def _check_canaries(canaries: int | None, canary_repeats: Sequence[int], references: int) -> int:
    """The number of canaries (0 for None), with the ladder and the references checked."""
    if canaries is None:
        return 0
    whole("canaries", canaries)
    if not canaries:
        return 0
    if isinstance(canary_repeats, str | bytes) or not isinstance(canary_repeats, Sequence):
        raise TypeError(f"canary_repeats must be a sequence of whole numbers (copies of each canary), got "
                        f"{type(canary_repeats).__name__} {canary_repeats!r}")
    if not canary_repeats:
        raise ValueError("canary_repeats must hold at least one number of copies, got an empty sequence")
    for repeats in canary_repeats:
        whole("each of canary_repeats", repeats, minimum=1)
    whole("references", references, minimum=1)
    if canaries + references > 10**CANARY_DIGITS:
        raise ValueError(f"canaries + references must be at most {10**CANARY_DIGITS:,} distinct {CANARY_DIGITS}-digit "
                         f"secrets, got {canaries} + {references}")
    return canaries


def _canary_sets(count: int, canary_repeats: Sequence[int], references: int, encoder: _Encoder, *, seed: int,
                 first_index: int) -> tuple[pd.DataFrame | None, IndexedDataset | None, IndexedDataset | None]:
    """``(copies, secrets, references)``: ``count`` inserted secrets and ``references`` others, all distinct, drawn
    with ``seed``, encoded; one row of ``copies`` per inserted copy, indexed from ``first_index``. All None for no
    canaries.

    Raises:
        ValueError: a secret longer than the encoder's ``max_tokens``.
    """
    if not count:
        return None, None, None
    numbers = np.random.default_rng([seed, _CANARY_SEED]).choice(10**CANARY_DIGITS, size=count + references,
                                                                 replace=False)
    texts = [canary_text(int(n)) for n in numbers]
    repeats = np.array([canary_repeats[i % len(canary_repeats)] for i in range(count)], dtype=np.int64)
    which = np.repeat(np.arange(count, dtype=np.int64), repeats)
    copies = pd.DataFrame({"index": first_index + np.arange(len(which), dtype=np.int64), "canary": which,
                           "repeats": repeats[which], "text": [texts[i] for i in which]})
    longest = max(len(ids) for ids in encoder.sequences(texts))
    if longest > encoder.max_tokens:
        raise ValueError(f"max_tokens={encoder.max_tokens} cuts the canary secrets: they take up to {longest} tokens "
                         "with bos and eos")
    task = CausalLM(pad_id=encoder.pad_id)
    return (copies, IndexedDataset(*encoder(texts[:count]), task=task),
            IndexedDataset(*encoder(texts[count:]), task=task))


# ----------------------------------------------------------------------------------------------------- splits

class _Rows:
    """The texts of a corpus at ``rows``, then the ``extra`` texts (the canary copies)."""

    def __init__(self, corpus: Sequence[str], rows: Tensor, extra: Sequence[str] = ()) -> None:
        self.corpus, self.rows, self.extra = corpus, rows.tolist(), list(extra)

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, i: int) -> str:
        return self.corpus[self.rows[i]] if i < len(self.rows) else self.extra[i - len(self.rows)]


class _TokenizedTexts(Dataset):
    """Items ``(input_ids [T], labels [T])`` of texts, each tokenized when asked for."""

    def __init__(self, texts: _Rows, encoder: _Encoder) -> None:
        self.texts, self.encoder = texts, encoder

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        i = range(len(self))[i]  # an IndexError past either end
        input_ids, labels = self.encoder([self.texts[i]])
        return input_ids[0], labels[0]


def _split(texts: _Rows, encoder: _Encoder, *, stream: bool, num_workers: int) -> IndexedDataset | Streamed:
    task = CausalLM(pad_id=encoder.pad_id)
    if stream:
        return Streamed(_TokenizedTexts(texts, encoder), num_workers=num_workers, task=task)
    input_ids, labels = encoder([texts[i] for i in range(len(texts))])
    return IndexedDataset(input_ids, labels, task=task)


def _split_rows(name: str, n: int, *, val_fraction: float, test_fraction: float, train_size: int | None,
                seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """The sorted corpus rows of the train, val and test splits: a random ``test_fraction`` drawn with the fixed
    :data:`_TEST_SEED`, then from the rest a ``val_fraction`` of the corpus and ``train_size`` drawn with
    ``seed`` (:func:`unlearn.data.sources._split_ids`)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_TEST_SEED))
    n_test = int(round(test_fraction * n))
    test_rows, rest = order[:n_test].sort().values, order[n_test:].sort().values
    share = val_fraction / (1.0 - test_fraction)  # of the rest: val_fraction of the whole corpus
    train_ids, val_ids = _split_ids(name, len(rest), val_fraction=share, train_size=train_size, seed=seed)
    if not len(train_ids):
        raise ValueError(f"{name!r} has {n} texts: none is left for training with val_fraction={val_fraction} "
                         f"and test_fraction={test_fraction}")
    return rest[train_ids], rest[val_ids], test_rows


def load_text(name: str, *, val_fraction: float = 0.1, test_fraction: float | None = 0.1,
              train_size: int | None = None,
              seed: int = 0, stream: bool = False, num_workers: int = 0, vocab_size: int = 2048,
              max_tokens: int = 64, canaries: int | None = None,
              canary_repeats: Sequence[int] = (1, 2, 4, 8, 16, 32), references: int = 1000) -> TextSplits:
    """A text dataset as token-sequence splits for a causal language model, with canaries if asked (module doc).

    The recipe: the corpus's texts, deduplicated, in their order (a text's row); a random ``test_fraction`` of
    them is the test set (fixed: it depends on the texts alone), then a ``val_fraction`` of them, drawn with
    ``seed``, the validation set; the rest (or a random ``train_size`` of it) the training split, rows in order.
    The tokenizer (:func:`train_tokenizer`) is trained on the training split's texts, before any canary is added,
    so the canaries are tokenized as their references are. The canary copies come after the training texts. The
    same arguments always give the same splits, tokenizer and canaries.

    Args:
        name: ``fortunes`` (:func:`text_datasets`) or ``text:PATH`` (:func:`text_sources`).
        val_fraction, test_fraction: the corpus's fractions held out for validation and test, each in ``[0, 1)``,
            together under 1 (``test_fraction`` None: 0.1).
        train_size: keep only this many training texts.
        seed: seed of the train/val split, ``train_size`` and the canary secrets.
        stream: make each split a :class:`Streamed` dataset whose texts are tokenized when read (the same items and
            indices as in memory); ``text:PATH`` then holds only its lines' offsets, not its texts.
        num_workers: with ``stream``, the worker processes that read the items.
        vocab_size: the tokenizer's vocabulary, at least 258.
        max_tokens: the sequence length ``T``; a longer text is cut (its eos with it). At least 2.
        canaries: the number K of canary secrets inserted into the training split (None or 0: none).
        canary_repeats: the copies of canary i are ``canary_repeats[i % len(canary_repeats)]``.
        references: the number of never-inserted secrets kept to rank the canaries (with canaries only).

    Raises:
        ValueError, TypeError: an unknown name or a bad argument, naming what was expected.
        DatasetNotFoundError: the corpus's files are missing.
        ModuleNotFoundError: the ``text`` extra (tokenizers, transformers) is missing.
    """
    test_fraction = 0.1 if test_fraction is None else test_fraction
    real("val_fraction", val_fraction, low=0.0, high=1.0)
    real("test_fraction", test_fraction, low=0.0, high=1.0)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be under 1, got {val_fraction} + {test_fraction}")
    whole("num_workers", num_workers)
    whole("max_tokens", max_tokens, minimum=2)
    whole("vocab_size", vocab_size, minimum=258)
    count = _check_canaries(canaries, canary_repeats, references)
    corpus = _read_corpus(name, lazy=stream)
    train_rows, val_rows, test_rows = _split_rows(name, len(corpus), val_fraction=val_fraction,
                                                  test_fraction=test_fraction, train_size=train_size, seed=seed)
    tokenizer = train_tokenizer((corpus[row] for row in train_rows.tolist()), vocab_size=vocab_size)
    encoder = _Encoder(tokenizer, max_tokens)
    copies, secrets, references_set = _canary_sets(count, canary_repeats, references, encoder, seed=seed,
                                                   first_index=len(train_rows))
    copy_texts = [] if copies is None else copies["text"].tolist()

    def split(rows: Tensor, extra: Sequence[str] = ()) -> IndexedDataset | Streamed:
        return _split(_Rows(corpus, rows, extra), encoder, stream=stream, num_workers=num_workers)

    rows = torch.cat([train_rows, torch.full((len(copy_texts),), -1, dtype=torch.long)])
    return TextSplits(name, split(train_rows, copy_texts), split(val_rows), split(test_rows), tokenizer,
                      vocab_size=len(tokenizer), max_tokens=max_tokens, canaries=copies, references=references_set,
                      canary_secrets=secrets, train_rows=rows)


_KINDS.register("text", _Kind(text_datasets, text_sources, load_text))  # what unlearn.data.load_dataset reads
