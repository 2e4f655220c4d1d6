"""Text datasets for causal language models: Debian's real fortunes, ``text:PATH`` files, canaries."""

import json
import re

import pytest
import torch

from proxies.batching import labels_of
from proxies.sequences import IGNORE_INDEX, CausalLM
from tests.conftest import requires_fortunes
from unlearn.data import DatasetNotFoundError, check_dataset_name, dataset_sources, datasets, load_dataset
from unlearn.data import text as text_module
from unlearn.data.text import DEBIAN_FORTUNES, TextSplits, read_fortunes, train_tokenizer

pytest.importorskip("tokenizers", reason="the text extra is not installed (pip install memunlearn[text])")
pytest.importorskip("transformers", reason="the text extra is not installed (pip install memunlearn[text])")

SMALL = {"train_size": 1500, "vocab_size": 512}  # a tokenizer trained on 1,500 fortunes: fast
LADDER = (1, 2, 4)
CANARIES = {"canaries": 5, "canary_repeats": LADDER, "references": 40}
SECRET = re.compile(r"my PIN is \d \d \d \d \d \d")


@pytest.fixture(scope="module")
def corpus():
    """The fortunes, deduplicated as :func:`load_text` does."""
    if not DEBIAN_FORTUNES.is_dir():
        pytest.skip("Debian's fortunes not installed (make fortunes)")
    return list(dict.fromkeys(read_fortunes()))


@pytest.fixture(scope="module")
def splits(corpus):
    """1,500 training fortunes (a 512-token BPE), the whole validation and test splits, 5 canaries."""
    return load_dataset("fortunes", **SMALL, **CANARIES)


def _texts(text_splits: TextSplits, dataset) -> list[str]:
    """The decoded texts of a split's sequences, without bos, eos and padding."""
    return [text_splits.tokenizer.decode(ids, skip_special_tokens=True) for ids in dataset.inputs]


def _lines() -> list[str]:
    """Distinct English-like lines for ``text:PATH`` files (no fortunes needed)."""
    animals, verbs = ("cat", "dog", "owl", "fox", "bee"), ("sees", "chases", "ignores", "greets")
    return [f"The {a} {v} the {b} number {i}, café." for i, (a, v, b) in
            enumerate((a, v, b) for a in animals for v in verbs for b in animals)]


# ----------------------------------------------------------------------------------------------------- fortunes

@requires_fortunes
def test_read_fortunes_splits_the_files_into_stripped_fortunes(corpus):
    raw = read_fortunes()
    assert 15_000 < len(raw) < 16_000 and len(corpus) < len(raw)  # the package repeats some fortunes
    assert all(text == text.strip() and text for text in raw)
    assert not any(line == "%" for text in raw for line in text.splitlines())
    assert not any("\b" in text for text in raw)  # overstriking rendered


@requires_fortunes
def test_fortunes_splits_dedupe_and_sizes(splits, corpus):
    n = len(corpus)
    assert len(splits.test) == round(0.1 * n) and len(splits.val) == round(0.1 * n)
    copies = len(splits.canaries)
    assert len(splits.train) == SMALL["train_size"] + copies
    rows = splits.train_rows
    assert rows[-copies:].eq(-1).all() and len(rows[:-copies].unique()) == SMALL["train_size"]
    # each training sequence is its row's fortune (the ones that fit in max_tokens)
    decoded = _texts(splits, splits.train)[:-copies]
    fits = (splits.train.targets[:-copies] != IGNORE_INDEX).sum(1) < splits.max_tokens
    pairs = [(text, corpus[row]) for text, row, fit in zip(decoded, rows.tolist(), fits.tolist(), strict=False) if fit]
    assert len(pairs) > 800 and all(text == fortune for text, fortune in pairs)


def test_split_rows_partition_the_corpus_and_follow_the_seed():
    def rows(seed, **kw):
        return text_module._split_rows("c", 1000, val_fraction=0.1, test_fraction=0.2, train_size=kw.get("size"),
                                       seed=seed)

    train, val, test = rows(0)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert torch.cat([train, val, test]).sort().values.equal(torch.arange(1000))
    again, other = rows(0), rows(1)
    assert all(a.equal(b) for a, b in zip(again, (train, val, test), strict=True))
    assert other[2].equal(test) and not other[1].equal(val)  # the seed reshuffles train and val, not test
    assert len(rows(0, size=50)[0]) == 50 and set(rows(0, size=50)[0].tolist()) <= set(train.tolist())


@requires_fortunes
@pytest.mark.slow
def test_same_arguments_same_splits_and_tokenizer(splits):
    again = load_dataset("fortunes", **SMALL, **CANARIES)
    assert again.tokenizer.backend_tokenizer.to_str() == splits.tokenizer.backend_tokenizer.to_str()
    for a, b in [(again.train, splits.train), (again.val, splits.val), (again.test, splits.test),
                 (again.references, splits.references)]:
        assert a.inputs.equal(b.inputs) and a.targets.equal(b.targets) and a.indices.equal(b.indices)
    assert again.canaries.equals(splits.canaries) and again.train_rows.equal(splits.train_rows)


@requires_fortunes
def test_sequences_follow_hugging_face_labels(splits):
    tokenizer, t = splits.tokenizer, splits.max_tokens
    assert tokenizer.bos_token_id == tokenizer.eos_token_id != tokenizer.pad_token_id
    for split in (splits.train, splits.val, splits.test, splits.references, splits.canary_secrets):
        ids, labels = split.inputs, split.targets
        assert ids.shape == labels.shape == (len(split), t) and ids.dtype == labels.dtype == torch.long
        assert split.task == CausalLM(pad_id=tokenizer.pad_token_id)
        scored = labels != IGNORE_INDEX
        lengths = scored.sum(1)
        assert scored.equal(torch.arange(t) < lengths[:, None])  # scored tokens first, then padding
        assert labels[scored].equal(ids[scored]) and ids[~scored].eq(tokenizer.pad_token_id).all()
        assert ids[:, 0].eq(tokenizer.bos_token_id).all()
        ends = ids[torch.arange(len(ids)), lengths - 1].eq(tokenizer.eos_token_id)
        assert ends[lengths < t].all()  # a sequence not cut ends with eos (one cut may, when it just fits)
        assert ids[:, 1:][scored[:, 1:]].eq(tokenizer.eos_token_id).sum() == ends.sum()  # and nowhere else
    cut = (splits.val.targets != IGNORE_INDEX).all(1)
    assert 0.1 < cut.float().mean() < 0.5  # about a quarter of the fortunes are longer than 64 tokens


@requires_fortunes
def test_tokenizer_round_trip_and_vocabulary(splits, corpus):
    tokenizer = splits.tokenizer
    assert splits.vocab_size == len(tokenizer) == SMALL["vocab_size"]
    assert max(tokenizer.bos_token_id, tokenizer.pad_token_id) < splits.vocab_size
    for split in (splits.train, splits.val, splits.test):
        assert int(split.inputs.max()) < splits.vocab_size
    sample = corpus[::50] + ["naïve café – ½ ünïcödé ☃", "tabs\tand\nnewlines  and  spaces"]
    for text in sample:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_training_is_deterministic():
    texts = _lines()
    first, second = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<pad>"]


# ----------------------------------------------------------------------------------------------------- canaries

@requires_fortunes
def test_canaries_are_inserted_as_the_ladder_says(splits):
    copies, k = splits.canaries, CANARIES["canaries"]
    assert list(copies.columns) == ["index", "canary", "repeats", "text"]
    per_canary = copies.groupby("canary").size()
    assert per_canary.index.tolist() == list(range(k))
    assert per_canary.tolist() == [LADDER[i % len(LADDER)] for i in range(k)] == copies.groupby("canary")[
        "repeats"].first().tolist()
    assert copies["index"].tolist() == list(range(SMALL["train_size"], len(splits.train)))
    assert copies.groupby("canary")["text"].nunique().eq(1).all() and copies["text"].nunique() == k
    assert all(SECRET.fullmatch(text) for text in copies["text"])
    decoded = _texts(splits, splits.train)
    assert [decoded[i] for i in copies["index"]] == copies["text"].tolist()
    secrets = _texts(splits, splits.canary_secrets)
    assert splits.canary_secrets.indices.tolist() == list(range(k))
    assert [secrets[c] for c in copies["canary"]] == copies["text"].tolist()


@requires_fortunes
def test_references_are_secrets_never_inserted(splits, corpus):
    references = _texts(splits, splits.references)
    assert len(references) == len(set(references)) == CANARIES["references"]
    assert splits.references.indices.tolist() == list(range(CANARIES["references"]))
    assert all(SECRET.fullmatch(text) for text in references)
    assert not set(references) & set(splits.canaries["text"])
    # the tokenizer saw the training fortunes only, not the canaries: they are tokenized as the references are
    fortunes = [corpus[row] for row in splits.train_rows[splits.train_rows >= 0].tolist()]
    alone = train_tokenizer(fortunes, vocab_size=SMALL["vocab_size"])
    assert alone.backend_tokenizer.to_str() == splits.tokenizer.backend_tokenizer.to_str()
    copies = splits.train.inputs[splits.canaries["index"].tolist()]
    assert copies.equal(splits.canary_secrets.inputs[splits.canaries["canary"].tolist()])


def test_no_canaries_gives_none(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(_lines()))
    for canaries in (None, 0):
        splits = load_dataset(f"text:{path}", vocab_size=300, canaries=canaries)
        assert splits.canaries is splits.references is splits.canary_secrets is None
        assert splits.train_rows.ge(0).all()


# ----------------------------------------------------------------------------------------------------- text:PATH

@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """The same texts as a .txt and a .jsonl file, with a duplicate, blank lines and surrounding spaces."""
    folder = tmp_path_factory.mktemp("text")
    lines = _lines()
    raw = [f"  {lines[0]} ", "", *lines[1:50], lines[3], "   ", *lines[50:]]
    (folder / "lines.txt").write_text("\n".join(raw) + "\n", encoding="utf-8")
    (folder / "lines.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(raw)),
                                        encoding="utf-8")
    return folder, lines


def test_text_files_one_example_per_line(text_files):
    folder, lines = text_files
    options = {"vocab_size": 300, "canaries": 2, "canary_repeats": (3,), "references": 5}
    txt = load_dataset(f"text:{folder / 'lines.txt'}", **options)
    jsonl = load_dataset(f"text:{folder / 'lines.jsonl'}", **options)
    n = len(lines)  # blank lines and the duplicate dropped, spaces stripped
    assert len(txt.train) + len(txt.val) + len(txt.test) == n + 6
    assert len(txt.val) == len(txt.test) == round(0.1 * n)
    decoded = _texts(txt, txt.val) + _texts(txt, txt.test) + _texts(txt, txt.train)[:-6]
    assert sorted(decoded) == sorted(lines)
    assert [lines[row] for row in txt.train_rows[:-6].tolist()] == _texts(txt, txt.train)[:-6]
    for a, b in [(txt.train, jsonl.train), (txt.val, jsonl.val), (txt.test, jsonl.test)]:
        assert a.inputs.equal(b.inputs) and a.targets.equal(b.targets)


@pytest.mark.parametrize("name", [pytest.param("fortunes", marks=pytest.mark.slow), "text"])
def test_streamed_items_equal_those_in_memory(name, request):
    if name == "fortunes":
        memory = request.getfixturevalue("splits")
        streamed = load_dataset("fortunes", stream=True, **SMALL, **CANARIES)
    else:
        folder, _ = request.getfixturevalue("text_files")
        options = {"vocab_size": 300, "canaries": 2}
        memory = load_dataset(f"text:{folder / 'lines.jsonl'}", **options)
        streamed = load_dataset(f"text:{folder / 'lines.jsonl'}", stream=True, **options)
        assert isinstance(streamed.train.dataset.texts.corpus, text_module._LineFile)  # only the lines' offsets
    for a, b in [(memory.train, streamed.train), (memory.val, streamed.val), (memory.test, streamed.test)]:
        assert type(b).__name__ == "Streamed" and b.task == a.task and len(a) == len(b)
        for i in [*range(0, len(a), max(1, len(a) // 100)), *range(len(a) - 10, len(a))]:
            x, y, index = b[i]
            assert x.equal(a.inputs[i]) and y.equal(a.targets[i]) and index == int(a.indices[i])
    labels, indices = labels_of(streamed.test)
    assert labels.equal(memory.test.targets) and indices.equal(memory.test.indices)
    assert streamed.canaries.equals(memory.canaries) and streamed.train_rows.equal(memory.train_rows)


def test_streamed_text_reads_in_worker_processes(text_files):
    folder, _ = text_files
    memory = load_dataset(f"text:{folder / 'lines.txt'}", vocab_size=300)
    streamed = load_dataset(f"text:{folder / 'lines.txt'}", vocab_size=300, stream=True, num_workers=1)
    labels, indices = labels_of(streamed.train)
    assert labels.equal(memory.train.targets) and indices.equal(memory.train.indices)


# ----------------------------------------------------------------------------------------------------- errors

def test_names_are_listed_and_checked():
    assert "fortunes" in datasets() and "text" in dataset_sources()
    assert check_dataset_name("fortunes") == "fortunes"
    assert check_dataset_name("text:/data/lines.jsonl") == "text:/data/lines.jsonl"
    with pytest.raises(ValueError, match="text:PATH"):
        check_dataset_name("text:")


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"canaries": -1}, ValueError, "canaries must be >= 0"),
    ({"canaries": 1.5}, TypeError, "canaries must be a whole number"),
    ({"canaries": 2, "canary_repeats": ()}, ValueError, "at least one"),
    ({"canaries": 2, "canary_repeats": (1, 0)}, ValueError, "canary_repeats must be >= 1"),
    ({"canaries": 2, "canary_repeats": 4}, TypeError, "canary_repeats must be a sequence"),
    ({"canaries": 2, "references": 0}, ValueError, "references must be >= 1"),
    ({"canaries": 10**6, "references": 1}, ValueError, "at most 1,000,000"),
    ({"vocab_size": 100}, ValueError, "vocab_size must be >= 258"),
    ({"max_tokens": 1}, ValueError, "max_tokens must be >= 2"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, ValueError, "under 1"),
    ({"test_fraction": -0.1}, ValueError, "test_fraction"),
])
def test_bad_options_are_refused(options, error, match, text_files):
    folder, _ = text_files
    with pytest.raises(error, match=match):
        load_dataset(f"text:{folder / 'lines.txt'}", **options)


def test_bad_text_files_are_refused(tmp_path, text_files):
    folder, _ = text_files
    with pytest.raises(ValueError, match="cuts the canary secrets"):
        load_dataset(f"text:{folder / 'lines.txt'}", vocab_size=300, max_tokens=6, canaries=1)
    (tmp_path / "no-text.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    with pytest.raises(ValueError, match=r'line 2: expected a JSON object with a "text" field, got keys \[\'body\'\]'):
        load_dataset(f"text:{tmp_path / 'no-text.jsonl'}")
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2: .*invalid JSON"):
        load_dataset(f"text:{tmp_path / 'broken.jsonl'}")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no text"):
        load_dataset(f"text:{tmp_path / 'empty.txt'}")
    with pytest.raises(ValueError, match=r"expected a \.txt file .* got \.csv"):
        load_dataset(f"text:{tmp_path / 'lines.csv'}")
    with pytest.raises(DatasetNotFoundError, match="no file"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(TypeError, match="options of text datasets"):
        load_dataset("digits", canaries=3)


def test_missing_fortunes_say_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "DEBIAN_FORTUNES", tmp_path / "fortunes")
    with pytest.raises(DatasetNotFoundError, match="make fortunes"):
        load_dataset("fortunes")


def test_missing_text_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install memunlearn\[text\]"):
        train_tokenizer(["some text"], vocab_size=300)
