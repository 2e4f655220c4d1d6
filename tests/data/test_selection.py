"""Forget-set specs (unlearn.data.selection) and the staged run folder (unlearn.pipeline) against obvious references."""

import numpy as np
import pandas as pd
import pytest

from unlearn.data.selection import ForgetSpec, parse_forget_spec, read_ids, select_forget
from unlearn.pipeline import RunFolder, group_of, subset


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    return pd.Series(rng.random(100), index=np.arange(100), name="memorization")  # no ties


@pytest.mark.parametrize("spec, expected", [
    ("random:0.1", ForgetSpec("random", size=0.1)),
    ("random:25", ForgetSpec("random", size=25)),
    ("high:5", ForgetSpec("high", size=5)),
    ("mixed:9", ForgetSpec("mixed", size=9)),
])
def test_parse_forget_spec(spec, expected):
    assert parse_forget_spec(spec) == expected


@pytest.mark.parametrize("spec", ["random", "top:5", "high:", "high:0", "high:2.5", "low:x", "random:1.5",
                                  "ids:"])
def test_bad_specs_name_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="random:FRACTION|whole number|not a number"):
        parse_forget_spec(spec)


def test_high_low_mixed_match_a_sort(scores):
    ranked = scores.sort_values().index.to_numpy()
    assert select_forget("high:7", scores).tolist() == sorted(ranked[-7:])
    assert select_forget("low:7", scores).tolist() == sorted(ranked[:7])
    mixed = select_forget("mixed:9", scores)
    median = scores.median()
    middle = scores.drop(ranked[:3]).drop(ranked[-3:])
    nearest = (middle - median).abs().sort_values().index[:3]
    assert mixed.tolist() == sorted([*ranked[:3], *ranked[-3:], *nearest])


def test_a_confidence_like_proxy_is_ranked_the_other_way(scores):
    confidence = 1.0 - scores
    confidence.attrs["higher_is_memorized"] = False
    assert select_forget("high:10", confidence).tolist() == select_forget("high:10", scores).tolist()
    # a column of a proxies table carries the table's {column: direction} dict
    column = (1.0 - scores).rename("confidence")
    column.attrs["higher_is_memorized"] = {"confidence": False, "csl": True}
    assert select_forget("high:10", column).tolist() == select_forget("high:10", scores).tolist()
    ids = np.asarray(scores.index[:30])
    assert group_of(column, ids).tolist() == group_of(scores, ids).tolist()
    with pytest.raises(ValueError, match="named 'conf'"):
        select_forget("high:10", column.rename("conf"))


def test_random_is_seeded_and_sized(scores):
    a, b = select_forget("random:0.2", scores, seed=3), select_forget("random:0.2", scores, seed=3)
    assert a.tolist() == b.tolist() and len(a) == 20 and len(np.unique(a)) == 20
    assert select_forget("random:0.2", scores, seed=4).tolist() != a.tolist()
    assert len(select_forget("random:13", num_train=50)) == 13


def test_ties_are_broken_by_the_seed():
    tied = pd.Series(np.zeros(50), name="memorization")
    picks = {tuple(select_forget("high:5", tied, seed=s)) for s in range(5)}
    assert len(picks) > 1


def test_scores_must_say_which_way_they_point():
    unnamed = pd.Series(np.arange(10.0))
    with pytest.raises(ValueError, match="do not say which way they point: pass higher_is_memorized="):
        select_forget("high:2", unnamed)
    # a column read back from scores.csv: its name is a registered proxy's, whose direction it takes
    confidence = pd.Series(np.arange(10.0) / 10, name="confidence")
    np.testing.assert_array_equal(select_forget("high:2", confidence), [0, 1])  # the least confident
    unnamed.attrs["higher_is_memorized"] = False
    np.testing.assert_array_equal(select_forget("high:2", unnamed), [0, 1])


def test_sizes_that_leave_nothing_to_retain_are_refused(scores):
    with pytest.raises(ValueError, match="expected 1 to 99"):
        select_forget("high:100", scores)
    with pytest.raises(ValueError, match="pass scores"):
        select_forget("high:3", num_train=10)


def test_ids_files(tmp_path, scores):
    plain = tmp_path / "ids.txt"
    plain.write_text("5, 3\n3 9\n")
    assert select_forget(f"ids:{plain}", scores).tolist() == [3, 5, 9]
    by_index = tmp_path / "index.csv"
    pd.DataFrame({"index": [7, 2], "why": ["a", "b"]}).to_csv(by_index, index=False)
    assert read_ids(by_index).tolist() == [2, 7]
    by_row = tmp_path / "rows.csv"
    pd.DataFrame({"source_row": [1010, 1000]}).to_csv(by_row, index=False)
    rows = np.arange(1000, 1100)
    assert select_forget(f"ids:{by_row}", scores, source_rows=rows).tolist() == [0, 10]


def test_bad_ids_files(tmp_path, scores):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 x3\n")
    with pytest.raises(ValueError, match="'x3'"):
        read_ids(bad)
    outside = tmp_path / "outside.txt"
    outside.write_text("1 200")
    with pytest.raises(ValueError, match="not training indices"):
        select_forget(f"ids:{outside}", scores)
    columns = tmp_path / "columns.csv"
    columns.write_text("id\n1\n")
    with pytest.raises(ValueError, match="'index', 'source_row' or 'path'"):
        read_ids(columns)
    held_out = tmp_path / "held_out.csv"
    held_out.write_text("source_row\n5\n")
    with pytest.raises(ValueError, match="none of its 1 source rows is in the training split"):
        read_ids(held_out, source_rows=np.arange(100, 200))
    held_out.write_text("source_row\n5\n101\n")
    with pytest.warns(UserWarning, match="1 of 2 source rows were never trained on"):
        assert read_ids(held_out, source_rows=np.arange(100, 200)).tolist() == [1]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="lists no training indices"):
        read_ids(empty)
    with pytest.raises(OSError):
        read_ids(tmp_path / "missing.txt")


def test_group_of_is_the_rum_partition(scores):
    ids = np.arange(0, 100, 4)
    groups = group_of(scores, ids)
    assert groups.value_counts().to_dict() == {"low": 9, "medium": 8, "high": 8}
    assert scores[groups.index[groups == "high"]].min() > scores[groups.index[groups == "medium"]].max()


def test_subset_takes_examples_by_training_index(digits):
    part = subset(digits.train, np.array([3, 10, 11]))
    assert part.indices.tolist() == [3, 10, 11]
    assert (part.inputs[1] == digits.train.inputs[10]).all()
    with pytest.raises(ValueError, match="not in the dataset"):
        subset(part, np.array([4]))


def test_run_folder_reuses_refuses_and_forces(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / "a.pt").write_text("x")
    run.finish("a", {"lr": 0.1}, seconds=1.5)
    assert RunFolder(tmp_path).reusable("a", {"lr": 0.1}, ["a.pt"])  # read back from stages.json
    assert RunFolder(tmp_path).seconds("a") == 1.5
    with pytest.raises(ValueError, match=r"other settings \(lr\).*--force"):
        RunFolder(tmp_path).reusable("a", {"lr": 0.2})
    assert not RunFolder(tmp_path, force=True).reusable("a", {"lr": 0.2})
    assert "a" not in RunFolder(tmp_path).stages  # forced: forgotten until it finishes again
    run = RunFolder(tmp_path)
    run.finish("b", {"k": 1}, seconds=0.0)
    assert not run.reusable("b", {"k": 1}, ["missing.pt"])  # same settings, files gone: redo


@pytest.mark.parametrize("text, message", [
    ("5\n99999999999999999999999\n", "too large for any dataset"),
    ("1.0\n2\n", "ids.txt, line 1: .*whole numbers: 1, not 1.0"),
    ("index\n1\n1.5\n2\n", "ids.txt, line 3: .*got 1.5 .*whole numbers: 1, not 1.0"),
    ("5\n6 7\nfive\n", "ids.txt, line 3: expected integer training indices, found 'five'"),
    ("index\n1\nabc\n", "ids.txt, line 3: expected integer training indices, found 'abc'"),
])
def test_an_ids_file_says_what_is_wrong_with_it(tmp_path, text, message):
    path = tmp_path / "ids.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_ids(path)


def test_duplicate_ids_are_removed_once_with_a_warning(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("5\n5\n7\n")
    with pytest.warns(UserWarning, match="1 ids are listed more than once"):
        assert read_ids(path).tolist() == [5, 7]


def test_an_ids_csv_names_images_by_their_files(tmp_path):
    files = ["cat/000.png", "cat/001.png", "dog/000.png"]
    path = tmp_path / "request.csv"
    path.write_text("path\ndog/000.png\n/data/pets/cat/001.png\n")  # relative to the folder, or ending so
    assert read_ids(path, source_paths=files).tolist() == [1, 2]
    path.write_text("path\ndog/000.png\ndog/999.png\n")
    with pytest.warns(UserWarning, match=r"1 of 2 paths were never trained on \(e.g. dog/999.png"):
        assert read_ids(path, source_paths=files).tolist() == [2]
    path.write_text("path\nbird/000.png\n")
    with pytest.raises(ValueError, match="none of its 1 paths is in the training split"):
        read_ids(path, source_paths=files)
    with pytest.raises(ValueError, match="a path column names the images of an imagefolder"):
        read_ids(path)
