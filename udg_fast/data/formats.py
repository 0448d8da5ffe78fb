"""Reading raw files: zip members, folders, gzip; tables with errors that name file and line."""
from __future__ import annotations

import csv
import gzip
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .core import DataError


@dataclass(frozen=True)
class Member:
    """One raw file: on disk, inside a zip, or gzip-compressed on disk."""

    label: str  # how error messages name it
    path: Path  # the file on disk (the zip itself for a member)
    member: str | None = None  # name inside the zip

    def open(self):
        if self.member is not None:
            # the member stream keeps the archive's file handle open after zf.close()
            with zipfile.ZipFile(self.path) as zf:
                return zf.open(self.member)
        if self.path.suffix == ".gz":
            return gzip.open(self.path, "rb")
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()


def find_in_zip(zpath: Path, basename: str) -> str | None:
    """The shortest member path of ``zpath`` whose file name is ``basename``."""
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == basename]
    except zipfile.BadZipFile as e:
        raise DataError(f"{zpath}: not a readable zip file ({e})") from None
    return min(names, key=len) if names else None


def resolve_members(path: str | Path, names: Sequence[str], dataset: str, hint: str) -> dict[str, Member]:
    """Find the raw files ``names`` at ``path`` (a zip, a folder, or a folder holding one
    sub-folder with them). ``.gz`` variants of a name are accepted in folders."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{dataset}: path {str(p)!r} does not exist ({hint})")
    out: dict[str, Member] = {}
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise DataError(f"{dataset}: {p} is neither a zip file nor a folder ({hint})")
        for n in names:
            m = find_in_zip(p, n)
            if m is None:
                raise DataError(f"{dataset}: {p} has no member {n!r} ({hint})")
            out[n] = Member(f"{p.name}:{m}", p, m)
        return out
    for n in names:
        cands = [p / n, p / (n + ".gz")]
        cands += [c / n for c in sorted(p.iterdir()) if c.is_dir()]
        cands += [c / (n + ".gz") for c in sorted(p.iterdir()) if c.is_dir()]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            raise DataError(f"{dataset}: missing file {str(p / n)!r} ({hint})")
        out[n] = Member(str(hit), hit)
    return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_LINE_RE = re.compile(r"line (\d+)")


def _parser_error(label: str, e: Exception, line_offset: int = 0) -> DataError:
    msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
    m = _LINE_RE.search(msg)
    if m:
        return DataError(f"{label}, line {int(m.group(1)) + line_offset}: malformed line ({msg})")
    return DataError(f"{label}: malformed file ({msg})")


def line_of_row(member: Member, row: int, header_lines: int, encoding: str) -> int:
    """The 1-based line number of data row ``row`` (pandas skips blank lines)."""
    with member.open() as f:
        text = io.TextIOWrapper(f, encoding=encoding, errors="replace", newline="")
        k = -1
        for lineno, line in enumerate(text, start=1):
            if lineno <= header_lines:
                continue
            if line.strip("\r\n") == "":
                continue
            k += 1
            if k == row:
                return lineno
    return header_lines + row + 1


def first_line_with_fields(member: Member, n_fields: int, sep: str, header_lines: int, encoding: str):
    with member.open() as f:
        text = io.TextIOWrapper(f, encoding=encoding, errors="replace", newline="")
        for lineno, line in enumerate(text, start=1):
            if lineno <= header_lines:
                continue
            s = line.rstrip("\r\n")
            if s == "":
                continue
            k = len(s.split(sep))
            if k != n_fields:
                return lineno, k
    return None, None


def _short_or_long_line(member: Member, columns: Sequence[str], sep: str, encoding: str) -> DataError | None:
    """The DataError naming the first line of a header-less file whose field count is not
    len(columns), or None when every line has it."""
    line, k = first_line_with_fields(member, len(columns), sep, 0, encoding)
    if line is None:
        return None
    return DataError(f"{member.label}, line {line}: expected {len(columns)} fields separated by {sep!r}, found {k}")


def read_table(
    member: Member,
    *,
    sep: str,
    columns: Sequence[str] | None = None,
    header: bool = True,
    required: Sequence[str] | None = None,
    nullable: Sequence[str] = (),
    numeric: Mapping[str, str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_NONE,
    header_parser: Callable[[str], str] | None = None,
    usecols: Sequence[str] | None = None,
    data: bytes | None = None,
) -> pd.DataFrame:
    """Read a delimited table and validate it; every problem raises :class:`DataError` naming the
    file and, for a bad line, its line number.

    Args:
        columns: for header-less files, the expected column names (the field count is checked).
        header: whether the first line is a header.
        required: columns that must be present (header files) and hold no empty value (default:
            every column of a header-less file, none of a header file).
        nullable: columns exempt from the empty-value check.
        numeric: ``{column: "int" | "float"}`` columns that must parse as numbers.
        header_parser: maps a raw header name to the column name (e.g. ``"rating:float" ->
            "rating"``); names are always stripped of surrounding white space.
        data: the file's bytes if already read (multi-character separators are rewritten into
            one character before parsing).
    """
    numeric = dict(numeric or {})
    raw_sep = sep
    if len(sep) > 1:  # pandas' C parser takes one character; "::" -> "\x1f"
        if data is None:
            data = member.read_bytes()
        data = data.replace(sep.encode(encoding), b"\x1f")
        sep = "\x1f"
    src = io.BytesIO(data) if data is not None else member.open()
    kw = dict(sep=sep, encoding=encoding, quoting=quoting, skipinitialspace=False, low_memory=False)
    try:
        with src:
            if header:
                df = pd.read_csv(src, header=0, **kw)
            else:
                df = pd.read_csv(src, header=None, **kw)
    except pd.errors.EmptyDataError:
        raise DataError(f"{member.label}: file is empty") from None
    except pd.errors.ParserError as e:
        # pandas counts the fields from the first line: the bad line may be that one
        bad = _short_or_long_line(member, columns, raw_sep, encoding) if not header and columns is not None else None
        raise (bad or _parser_error(member.label, e)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{member.label}: cannot decode as {encoding} ({e})") from None

    header_lines = 1 if header else 0
    if header:
        names = [str(c).strip() for c in df.columns]
        if header_parser is not None:
            names = [header_parser(c) for c in names]
        df.columns = names
        missing = [c for c in (required or ()) if c not in df.columns]
        if missing:
            raise DataError(
                f"{member.label}: missing column {missing[0]!r} (found columns: {', '.join(names)})"
            )
        if usecols is not None:
            df = df[list(usecols)]
    else:
        assert columns is not None
        if df.shape[1] != len(columns):
            raise _short_or_long_line(member, columns, raw_sep, encoding) or DataError(
                f"{member.label}: expected {len(columns)} fields separated by {raw_sep!r}, found {df.shape[1]}")
        df.columns = list(columns)
        # pandas fills a short line's last columns with NaN, which the required-column check below
        # does not see when they are optional (ml-1m's users.dat line "3::35::3::12345", its gender
        # missing, read as gender 35, age 3, occupation 12345): where an optional column has a
        # missing value, find a line with too few fields (a pass over the file, only then).
        optional = [c for c in columns if c not in (required or columns) or c in nullable]
        if optional and df[optional].isna().to_numpy().any():
            bad = _short_or_long_line(member, columns, raw_sep, encoding)
            if bad:
                raise bad
        if usecols is not None:
            df = df[list(usecols)]

    check = list(required) if required is not None else (list(columns) if not header else [])
    for c in check:
        if c in nullable:
            continue
        if c in df.columns and df[c].isna().any():
            row = int(np.flatnonzero(df[c].isna().to_numpy())[0])
            line = line_of_row(member, row, header_lines, encoding)
            raise DataError(f"{member.label}, line {line}: missing value in column {c!r}")

    for c, kind in numeric.items():
        if c not in df.columns:
            continue
        col = df[c]
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            conv = pd.to_numeric(col, errors="coerce")
            bad = conv.isna().to_numpy() & col.notna().to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                line = line_of_row(member, row, header_lines, encoding)
                raise DataError(f"{member.label}, line {line}: column {c!r} is not a number: {col.iloc[row]!r}")
            col = conv
        if kind == "int":
            vals = col.to_numpy(dtype=np.float64, na_value=np.nan) if col.dtype.kind == "f" else None
            if vals is not None:
                fin = ~np.isnan(vals)
                frac = fin & (vals != np.floor(vals))
                if frac.any():
                    row = int(np.flatnonzero(frac)[0])
                    line = line_of_row(member, row, header_lines, encoding)
                    raise DataError(f"{member.label}, line {line}: column {c!r} is not an integer: {vals[row]!r}")
        df[c] = col
    return df
