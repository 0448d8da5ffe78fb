"""Bad input raises DataError naming the file and line (or the option / name), and leaves no
cache entry behind."""
from __future__ import annotations

import re
import zipfile

import pytest

from udg_fast import data


def _no_entry(home, name):
    d = home / name
    return not d.exists() or not [p for p in d.iterdir() if p.suffix in (".npz", ".json") or p.name.endswith(".tmp")]


def _replace_line(path, lineno, text):
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = text
    path.write_text("".join(lines))


def test_unknown_dataset_and_option(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset 'ml-3m'.*ml-100k"):
        data.load("ml-3m")
    with pytest.raises(data.DataError, match="unknown option 'max_length'.*max_len"):
        data.load("synthetic", max_length=10)
    with pytest.raises(data.DataError, match="max_len"):
        data.load("synthetic", max_len=0)
    with pytest.raises(data.DataError, match="n_users"):
        data.load("synthetic", n_users=-3)
    with pytest.raises(data.DataError, match="takes no path"):
        data.load("synthetic", tmp_path)


def test_missing_path_and_files(tmp_path, raw, data_home):
    with pytest.raises(data.DataError, match="ml-1m: needs path"):
        data.load("ml-1m")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("ml-1m", tmp_path / "nowhere")
    ml = raw.movielens()
    d = raw.ml1m(tmp_path, ml)
    (d / "users.dat").unlink()
    with pytest.raises(data.DataError, match="users.dat"):
        data.load("ml-1m", d)
    z = tmp_path / "empty.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
    with pytest.raises(data.DataError, match="empty.zip has no member 'users.dat'"):
        data.load("ml-1m", z)
    with pytest.raises(data.DataError, match="reviews_Electronics_5.json"):
        data.load("amazon-electronics", tmp_path)
    with pytest.raises(data.DataError, match="behavior_log.csv"):
        data.load("alimama", d)
    assert _no_entry(data_home, "ml-1m")


@pytest.mark.parametrize(
    "lineno,text,pattern",
    [
        (5, "1\t2\t3\t4\t5\n", r"u\.data, line 5: expected 4 fields separated by '\\t', found 5"),  # one too many
        (1, "1\t2\t3\n", r"u\.data, line 1: expected 4 fields separated by '\\t', found 3"),  # the first line short
        (7, "1\t2\t3\n", r"u\.data, line 7: (expected 4 fields|missing value)"),  # one too few
        (4, "1\t2\tfive\t880000000\n", r"u\.data, line 4: column 'rating' is not a number: 'five'"),
        (3, "1\t2.5\t3\t880000000\n", r"u\.data, line 3: column 'item' is not an integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, raw, data_home, lineno, text, pattern):
    ml = raw.movielens()
    d = raw.grouplens_100k(tmp_path, ml)
    _replace_line(d / "u.data", lineno, text)
    with pytest.raises(data.DataError, match=pattern):
        data.load("ml-100k", d)
    assert _no_entry(data_home, "ml-100k")


def test_malformed_line_in_zip_member(tmp_path, raw, data_home):
    ml = raw.movielens()
    d = raw.ml1m(tmp_path, ml)
    _replace_line(d / "ratings.dat", 6, "1::2::3::4::5\n")
    z = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in ("ratings.dat", "users.dat", "movies.dat"):
            zf.write(d / n, f"ml-1m/{n}")
    with pytest.raises(data.DataError, match=r"ml-1m\.zip:ml-1m/ratings\.dat, line 6: expected 4 fields separated by '::', found 5"):
        data.load("ml-1m", z)
    assert _no_entry(data_home, "ml-1m")


@pytest.mark.parametrize("lineno", [1, 4])
def test_short_line_with_optional_columns_is_malformed(tmp_path, raw, data_home, lineno):
    """A users.dat line without its gender has too few fields; pandas fills the optional zip code
    with NaN and shifts nothing back, so without a check it read as gender '35', age 3."""
    ml = raw.movielens()
    d = raw.ml1m(tmp_path, ml)
    user = (d / "users.dat").read_text().splitlines()[lineno - 1].split("::")[0]
    _replace_line(d / "users.dat", lineno, f"{user}::35::3::12345\n")
    with pytest.raises(data.DataError, match=rf"users\.dat, line {lineno}: expected 5 fields separated by '::', found 4$"):
        data.load("ml-1m", d)
    assert _no_entry(data_home, "ml-1m")


def test_parser_errors_are_one_line(tmp_path, raw):
    """pandas' own parser message (a header file's line with a field too many) ends in a newline;
    the error is one line."""
    ml = raw.movielens()
    c = raw.ml_csv(tmp_path, ml)
    _replace_line(c / "ratings.csv", 4, "1,2,3,4,5\n")
    with pytest.raises(data.DataError, match=r"ratings\.csv, line 4: malformed line") as e:
        data.load("ml-latest", c)
    assert "\n" not in str(e.value) and str(e.value).endswith("saw 5)")


def test_wrong_column(tmp_path, raw, data_home):
    ml = raw.movielens()
    d = raw.recbole(tmp_path, ml)
    p = d / "ml-100k.inter"
    p.write_text(p.read_text().replace("rating:float", "score:float", 1))
    with pytest.raises(data.DataError, match=r"ml-100k\.inter: missing column 'rating'.*score"):
        data.load("ml-100k", d)
    c = raw.ml_csv(tmp_path, ml)
    p = c / "ratings.csv"
    p.write_text(p.read_text().replace("timestamp", "time", 1))
    with pytest.raises(data.DataError, match=r"ratings\.csv: missing column 'timestamp'"):
        data.load("ml-latest", c)
    assert _no_entry(data_home, "ml-100k") and _no_entry(data_home, "ml-latest")


def test_blank_lines_do_not_shift_line_numbers(tmp_path, raw):
    ml = raw.movielens()
    d = raw.grouplens_100k(tmp_path, ml)
    _replace_line(d / "u.data", 3, "\n")
    _replace_line(d / "u.data", 9, "3\tx\t4\t880000000\n")
    with pytest.raises(data.DataError, match=r"u\.data, line 9: column 'item'"):
        data.load("ml-100k", d)


def test_bad_genre_and_bad_json(tmp_path, raw, data_home):
    ml = raw.movielens()
    d = raw.recbole(tmp_path, ml)
    p = d / "ml-100k.item"
    lines = p.read_text().splitlines(keepends=True)
    lines[4] = lines[4].rstrip("\n").rsplit("\t", 1)[0] + "\tNoir-ish\n"
    p.write_text("".join(lines))
    with pytest.raises(data.DataError, match=r"ml-100k\.item, line 5: unknown genre"):
        data.load("ml-100k", d)

    am = raw.amazon_data()
    a = raw.amazon(tmp_path, am)
    _replace_line(a / "reviews_Electronics_5.json", 4, '{"reviewerID": "U1", "asin": \n')
    with pytest.raises(data.DataError, match=r"reviews_Electronics_5\.json, line 4: malformed JSON"):
        data.load("amazon-electronics", a)
    a2 = raw.amazon(tmp_path / "b", am)
    _replace_line(a2 / "reviews_Electronics_5.json", 2, '{"reviewerID": "U1", "unixReviewTime": 5}\n')
    with pytest.raises(data.DataError, match=r"line 2: missing field 'asin'"):
        data.load("amazon-electronics", a2)
    assert _no_entry(data_home, "ml-100k") and _no_entry(data_home, "amazon-electronics")


def test_alimama_bad_log_line(tmp_path, raw, data_home):
    al = raw.alimama_data()
    d = raw.alimama(tmp_path, al)
    _replace_line(d / "behavior_log.csv", 30, "1000,notatime,pv,40,300\n")
    with pytest.raises(data.DataError, match=r"behavior_log\.csv, line 30: column 'time_stamp' is not a number"):
        data.load("alimama", d, chunk_rows=7)
    assert _no_entry(data_home, "alimama")
    d2 = raw.alimama(tmp_path / "b", al)
    p = d2 / "behavior_log.csv"
    p.write_text(p.read_text().replace("btag", "action", 1))
    with pytest.raises(data.DataError, match=r"behavior_log\.csv: missing column 'btag'"):
        data.load("alimama", d2)


def test_ml100k_download_failure_is_explained(monkeypatch):
    import subprocess

    from udg_fast.data import movielens

    def fail(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution found for recbole==1.2.1")

    monkeypatch.setattr(movielens.subprocess, "run", fail)
    with pytest.raises(data.DataError) as e:
        data.load("ml-100k")
    msg = str(e.value)
    assert "could not download recbole==1.2.1" in msg and "No matching distribution" in msg
    assert re.search(r"pass path= \(--path\) to GroupLens' ml-100k\.zip", msg)
