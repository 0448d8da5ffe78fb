"""The prepared-data cache: ``$UDG_FAST_DATA`` or ``~/.cache/udg_fast``.

Layout::

    <root>/<dataset>/<key>.npz     the split columns (+ vocabularies): an uncompressed .npz, no
                                   pickle; np.load reads it; members are 64-byte aligned so that
                                   :func:`read_npz` memory-maps them instead of copying
    <root>/<dataset>/<key>.json    schema, statistics, options, source hashes
    <root>/downloads/               fetched source files (the recbole wheel for ml-100k)
    <root>/file-hashes.json         sha256 memo for source files over 64 MiB

``key`` is a hash of the dataset name, the sha256 of every source file, the options and
:data:`PREPROCESS_VERSION`. Both files are written under a temporary name in the same folder and
renamed into place (npz first, json last); an entry counts only when its json exists and its npz
has the recorded size and loads, so an interrupted run never leaves an entry a later run trusts.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .core import SPLITS, Dataset, Schema, Split

#: Bump when preprocessing changes what a prepared dataset contains: old entries stop matching.
PREPROCESS_VERSION = "1"

_MEMO_MIN_BYTES = 64 << 20


def cache_root() -> Path:
    """``$UDG_FAST_DATA`` if set, else ``~/.cache/udg_fast``."""
    env = os.environ.get("UDG_FAST_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "udg_fast"


def entry_key(name: str, sources: Mapping[str, str], options: Mapping) -> str:
    blob = json.dumps(
        {"name": name, "version": PREPROCESS_VERSION, "sources": dict(sources), "options": dict(options)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def entry_paths(name: str, key: str) -> tuple[Path, Path]:
    d = cache_root() / name
    return d / f"{key}.npz", d / f"{key}.json"


def atomic_write_bytes(path: Path, write: Callable) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def file_sha256(path: Path, progress: Callable | None = None) -> str:
    """sha256 of a file; files over 64 MiB are memoised by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    memo_key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    memo_path = cache_root() / "file-hashes.json"
    big = st.st_size >= _MEMO_MIN_BYTES
    memo = {}
    if big:
        try:
            memo = json.loads(memo_path.read_text())
            if memo_key in memo:
                return memo[memo_key]
        except (OSError, ValueError):
            memo = {}
    h = hashlib.sha256()
    bar = None
    if progress is not None and big:
        bar = progress(total=st.st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}")
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 22)
            if not b:
                break
            h.update(b)
            if bar is not None:
                bar.update(len(b))
    if bar is not None:
        bar.close()
    digest = h.hexdigest()
    if big:
        memo[memo_key] = digest
        try:
            atomic_write_bytes(memo_path, lambda f: f.write(json.dumps(memo, indent=0).encode()))
        except OSError:
            pass
    return digest


_ALIGN = 64


def _npy_header(arr: np.ndarray, data_start: int) -> bytes:
    """A .npy (format 1.0) header for ``arr`` padded so that the array data begins at a
    multiple of 64 bytes *in the file* (numpy only aligns within the zip member)."""
    d = np.lib.format.header_data_from_array_1_0(arr)
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (d["descr"], tuple(arr.shape))
    prefix = 10  # magic (6) + version (2) + header length (2)
    hlen = len(text) + 1
    hlen += (-(data_start + prefix + hlen)) % _ALIGN
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + text.encode("latin1") + b" " * (hlen - len(text) - 1) + b"\n"


def write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` (``np.load`` reads it as usual) whose array
    data are 64-byte aligned in the file, so :func:`read_npz` can memory-map them."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype.hasobject:
                raise TypeError(f"{name}: object arrays are not cached (no pickle)")
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as out:
                out.write(_npy_header(arr, zf.fp.tell()))  # the local header is already written
                if arr.size:
                    out.write(memoryview(arr.reshape(-1)).cast("B"))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``. Members stored aligned and uncompressed (as :func:`write_npz`
    writes them) are views of one copy-on-write memory map of the file: loading costs no copy,
    pages come from the page cache as they are used, and writing to an array changes only this
    process's copy. Other members are read with ``np.load``."""
    out: dict[str, np.ndarray] = {}
    fallback = []
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                f.seek(info.header_offset)
                local = f.read(30)
                if info.compress_type != zipfile.ZIP_STORED or local[:4] != b"PK\x03\x04":
                    fallback.append(name)
                    continue
                n, e = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + n + e
                f.seek(start)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                offset = f.tell()
                count = int(np.prod(shape, dtype=np.int64))
                if (fortran or dtype.hasobject or offset % _ALIGN
                        or offset + count * dtype.itemsize > start + info.file_size):
                    fallback.append(name)
                    continue
                out[name] = np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(shape)
    if fallback:
        with np.load(path, allow_pickle=False) as z:
            for name in fallback:
                out[name] = z[name]
    return out


def save(dataset: Dataset, key: str) -> Path:
    """Write ``dataset`` under ``key`` atomically; returns the npz path."""
    npz, js = entry_paths(dataset.name, key)
    arrays = {f"{s}.{k}": a for s in SPLITS for k, a in dataset[s].arrays.items()}
    for k, v in dataset.vocab.items():
        if v.dtype == object:
            v = v.astype(str)
        arrays[f"vocab.{k}"] = v
    atomic_write_bytes(npz, lambda f: write_npz(f, arrays))
    meta = dict(dataset.meta)
    meta.pop("from_cache", None)
    meta.update(npz_bytes=npz.stat().st_size, written_at=time.strftime("%Y-%m-%dT%H:%M:%S"), cache_path=str(npz))
    doc = {
        "name": dataset.name,
        "key": key,
        "version": PREPROCESS_VERSION,
        "schema": dataset.schema.to_dict(),
        "stats": dataset.stats,
        "meta": meta,
        "fields": {s: list(dataset[s].fields) for s in SPLITS},
        "vocab": list(dataset.vocab),
    }
    atomic_write_bytes(js, lambda f: f.write(json.dumps(doc, indent=1, default=_json_default).encode()))
    return npz


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o)} in the cache json")


def read_meta(name: str, key: str) -> dict | None:
    """The json document of a complete entry, or None."""
    npz, js = entry_paths(name, key)
    try:
        doc = json.loads(js.read_text())
    except (OSError, ValueError):
        return None
    try:
        if doc.get("version") != PREPROCESS_VERSION or npz.stat().st_size != doc["meta"]["npz_bytes"]:
            return None
    except (OSError, KeyError, TypeError):
        return None
    return doc


def load(name: str, key: str) -> Dataset | None:
    """The cached dataset, or None when there is no complete, readable entry."""
    doc = read_meta(name, key)
    if doc is None:
        return None
    npz, _ = entry_paths(name, key)
    try:
        z = read_npz(npz)
        splits = {s: Split(s, {k: z[f"{s}.{k}"] for k in doc["fields"][s]}) for s in SPLITS}
        vocab = {k: z[f"vocab.{k}"] for k in doc.get("vocab", [])}
    except Exception:  # a damaged entry is treated as absent and will be rewritten
        return None
    meta = dict(doc["meta"])
    meta.update(from_cache=True, cache_path=str(npz), key=key)
    return Dataset(
        name=name,
        schema=Schema.from_dict(doc["schema"]),
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        stats=doc["stats"],
        meta=meta,
        vocab=vocab,
    )


def entries(name: str) -> list[dict]:
    """Complete entries of a dataset, newest first."""
    d = cache_root() / name
    out = []
    if d.is_dir():
        for js in d.glob("*.json"):
            doc = read_meta(name, js.stem)
            if doc is not None:
                out.append(doc)
    out.sort(key=lambda doc: doc["meta"].get("written_at", ""), reverse=True)
    return out


def remove(name: str, key: str) -> None:
    for p in entry_paths(name, key):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
