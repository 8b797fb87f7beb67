"""The records of a BATCH message's files, read one at a time.

An SDK tap in batch mode writes its records to files (JSON lines, Parquet or Arrow IPC)
and sends only their URLs. The SDK's own reader loads a whole file into a list before the
sink sees a record; here a file is streamed, so a batch of millions of contacts takes no more
memory than one request's worth. Files are opened through fsspec, as the SDK opens them, so
every storage it reaches (``file://`` and any installed fsspec backend) works the same.
"""

from __future__ import annotations

import decimal
import gzip
import importlib
import typing as t
from collections.abc import Iterator, Mapping

import fsspec
import msgspec

#: Longest JSON line of a batch file (one record), as for a line of input.
MAX_RECORD_BYTES = 8 * 1024 * 1024
#: Parquet rows decoded at once: one request's worth.
PARQUET_ROWS = 1000
_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)
_GZIP_MAGIC = b"\x1f\x8b"


class BatchFileError(Exception):
    """A manifest file that cannot be read (missing, unreadable, not in its format)."""


#: A record of a file with its line (JSONL) or row (Parquet) number; a text in place of the
#: record says why that line could not be decoded.
Item = tuple[int, dict[str, t.Any] | str]


def batch_records(url: str, encoding: Mapping[str, t.Any]) -> Iterator[Item]:
    """Every record of one manifest file, in order."""
    form = str(encoding.get("format") or "").lower()
    compression = encoding.get("compression")
    if compression not in (None, "none", "gzip"):
        raise BatchFileError(f"compression '{compression}' is not supported (gzip or none)")
    try:
        with fsspec.open(url, "rb") as f:
            if form == "jsonl":
                yield from _jsonl(_ungzipped(t.cast("t.IO[bytes]", f)))
            elif form == "parquet":  # its "gzip" compresses pages inside the file
                yield from _parquet(t.cast("t.IO[bytes]", f))
            elif form == "arrow":  # singer-sdk 0.55's Arrow IPC files
                yield from _arrow(t.cast("t.IO[bytes]", f))
            else:
                raise BatchFileError(f"format '{form}' is not supported (jsonl, parquet or arrow)")
    except BatchFileError:
        raise
    except (OSError, EOFError, ValueError, ImportError) as exc:
        raise BatchFileError(f"{type(exc).__name__}: {exc}") from None


def _ungzipped(file: t.IO[bytes]) -> t.IO[bytes]:
    """The file's text, gunzipped if it is gzip: known by its first bytes, not by the
    message's ``compression``, which the SDK's own JSONL encoder leaves at "none" while it
    always gzips."""
    magic = file.read(2)
    file.seek(0)
    return t.cast("t.IO[bytes]", gzip.GzipFile(fileobj=file)) if magic == _GZIP_MAGIC else file


def _jsonl(file: t.IO[bytes]) -> Iterator[Item]:
    limit = MAX_RECORD_BYTES + 1
    number = 0
    while line := file.readline(limit):
        number += 1
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := file.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield number, f"is longer than {MAX_RECORD_BYTES:,} bytes"
            continue
        if not line.strip():
            continue
        try:
            record = _DECODER.decode(line)
        except RecursionError:
            yield number, "is nested too deeply to be read"
            continue
        except msgspec.DecodeError as exc:
            yield number, f"is not valid JSON ({exc})"
            continue
        yield (number, record) if type(record) is dict else (number, "is not a JSON object")


def _parquet(file: t.IO[bytes]) -> Iterator[Item]:
    pq = _pyarrow("pyarrow.parquet", "Parquet")
    yield from _rows(pq.ParquetFile(file).iter_batches(batch_size=PARQUET_ROWS))


def _arrow(file: t.IO[bytes]) -> Iterator[Item]:
    """An Arrow IPC file (or stream), a record batch at a time."""
    ipc = _pyarrow("pyarrow.ipc", "Arrow")
    head = file.read(6)
    file.seek(0)
    if head == b"ARROW1":
        reader = ipc.open_file(file)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = iter(ipc.open_stream(file))
    yield from _rows(batches)


def _rows(batches: Iterator[t.Any]) -> Iterator[Item]:
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _pyarrow(module: str, form: str) -> t.Any:
    """pyarrow, which only taps writing Parquet or Arrow batches need."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BatchFileError(
            f"{form} batch files need pyarrow: pip install 'target-dengage[parquet]'"
        ) from None
