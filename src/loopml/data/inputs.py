"""Input files read in chunks: Parquet (``ParquetFile.iter_batches``) or CSV (``pyarrow.csv.open_csv``), never whole.

Used by batch scoring (``loopml predict``); CSV column types of the request features are fixed up front (the rest
inferred from the first block), and a value that does not convert is a one-line :class:`~loopml.errors.DataError`
naming the file, the 1-based data row and the column. The chunk loop is hand-written because it re-chunks to an
exact row count and tracks the bytes read for progress, which pyarrow's readers do not do by themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from loopml.data.sources import check_file
from loopml.errors import DataError

#: Bytes of CSV parsed at a time (pyarrow's block; column types are inferred from the first one).
CSV_BLOCK_BYTES = 1 << 20
_INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_CSV_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error to ([^:]+): invalid value '(.*)'", re.DOTALL)


def input_format(path: Path) -> str:
    fmt = _INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r} (batch scoring reads .parquet or .csv)"
        )
    return fmt


class _Counting:
    """A binary file that remembers how far it was read (the CSV progress bar)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.position = 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.position += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _csv_failure(
    path: Path, exc: pa.ArrowInvalid, schema: pa.Schema, forced: Mapping[str, pa.DataType], rows_before: int
) -> DataError:
    """A CSV conversion error as one line naming the row and column (found by a second pass over that column)."""
    match = _CSV_ERROR.search(str(exc))
    if match is None or int(match.group(1)) >= len(schema.names):
        return DataError(f"{path}: cannot be read as CSV after data row {rows_before:,}: {first_line(exc)}")
    column = schema.names[int(match.group(1))]
    wanted, value = match.group(2), match.group(3)
    row = None
    options = pcsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=False)
    seen = 0
    for batch in pcsv.open_csv(path, convert_options=options):
        values = batch.column(0).to_pylist()
        for i in range(max(rows_before - seen, 0), len(values)):
            if values[i] == value:
                row = seen + i + 1
                break
        if row is not None:
            break
        seen += batch.num_rows
    where = f"row {row}" if row is not None else f"after data row {rows_before:,}"
    why = "a number" if column in forced else f"of type {wanted} like the column's first values"
    return DataError(f"{path}: {where}: column {column!r} value {value!r} is not {why}")


class InputFile:
    """The input, read in chunks: ``schema``, ``rows`` (known up front for Parquet), and an iterator of chunks.

    Iterating yields ``(chunk, fraction of the file read)``; :meth:`close` releases the file.
    """

    def __init__(self, path: Path, chunk_rows: int, csv_types: Mapping[str, pa.DataType] | None = None) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self.format = input_format(path)
        check_file(path, " (--input)")
        self.rows: int | None = None
        self._parquet: pq.ParquetFile | None = None
        self._fh: IO[bytes] | None = None
        if self.format == "parquet":
            try:
                self._parquet = pq.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
            self.rows = self._parquet.metadata.num_rows
            return
        try:
            names = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot be read as CSV: {first_line(exc)}") from None
        self._forced = {name: t for name, t in (csv_types or {}).items() if name in names}
        self._size = max(path.stat().st_size, 1)
        self._fh = path.open("rb")
        self._counting = _Counting(self._fh)
        try:
            self._csv = pcsv.open_csv(
                self._counting,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pcsv.ConvertOptions(column_types=self._forced),
            )
        except pa.ArrowInvalid as exc:
            self.close()
            header = pa.schema([(n, pa.string()) for n in names])
            raise _csv_failure(path, exc, header, self._forced, 0) from None
        self.schema = self._csv.schema

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._fh is not None:
            self._fh.close()

    def _batches(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        done = 0
        if self._parquet is not None:
            total = max(self.rows or 0, 1)
            try:
                for batch in self._parquet.iter_batches(batch_size=self.chunk_rows):
                    done += batch.num_rows
                    yield batch, done / total
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{self.path}: not a readable Parquet file after row {done:,} ({first_line(exc)})") from None
            return
        while True:
            try:
                batch = self._csv.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise _csv_failure(self.path, exc, self.schema, self._forced, done) from None
            done += batch.num_rows
            yield batch, min(self._counting.position / self._size, 1.0)

    def __iter__(self) -> Iterator[tuple[pa.RecordBatch, float]]:
        return _rechunk(self._batches(), self.chunk_rows)


def _rechunk(batches: Iterator[tuple[pa.RecordBatch, float]], rows: int) -> Iterator[tuple[pa.RecordBatch, float]]:
    """Batches of exactly ``rows`` rows (the last may be shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    count = 0
    fraction = 0.0
    for batch, fraction in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            head = table.slice(0, rows).combine_chunks().to_batches()
            yield (head[0] if head else pa.RecordBatch.from_pylist([], schema=table.schema)), fraction
            rest = table.slice(rows)
            pending = rest.combine_chunks().to_batches() if rest.num_rows else []
            count = rest.num_rows
    if count:
        table = pa.Table.from_batches(pending).combine_chunks()
        yield table.to_batches()[0], fraction
