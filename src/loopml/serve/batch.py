"""Batch scoring, file to file (``loopml predict --input FILE --output FILE [--model VERSION]``).

The input (Parquet or CSV) is read in chunks of ``chunk_rows`` rows
(``ParquetFile.iter_batches`` / ``pyarrow.csv.open_csv``), never whole. For
each chunk:

1. **Features, point in time.** The chunk's entity keys, time and request
   features become a spine in DuckDB and go through the general
   point-in-time join (:func:`loopml.features.join.pit_sql`, the code behind
   ``features build --spine``) over the project's latest snapshot: every view
   as of the row's time, from strictly earlier events (``features.inclusive``
   aside), exactly the offline training-set semantics. Transforms are
   :func:`~loopml.features.transforms.apply_transforms`, as offline and online.
2. **Model input.** :class:`~loopml.serve.service.ModelInput`, the class the
   online service uses: the model's column order and categorical encodings.
3. **Score** with the chosen model version (default: the version the
   champion alias, ``rollout.alias``, points at), and append the chunk, with
   ``score`` and ``model_version`` added to the input's columns, to the output
   (Parquet or CSV, by extension), rows in input order.

The output appears atomically: it is written to a temporary file next to it
and renamed at the end, so a failure leaves no output (and no temporary file).
Memory is bounded by the chunk size; the event history the join reads is the
snapshot, which DuckDB may spill to a scratch folder next to the output.

What a row means, so that a batch score equals the online service's score for
the same request: the row's time is the first timestamp request feature
(``tx_datetime`` in the fraud example; the label source's timestamp for a spec
without one; none at all for a spec with neither a timestamp request feature
nor a feature view, which scores rows without a time); it is a timestamp or date column, ISO-8601 text (an offset is
converted to UTC, naive means UTC) or epoch seconds, as the online service
reads it. Entity keys are converted to the type of the key in the snapshot.
Request features are read like the online service reads them: numbers (or
numeric text), booleans (``true``/``false``/``1``/``0``/``yes``/``no``), text.

Bad input is a one-line :class:`~loopml.errors.DataError` naming the file,
the 1-based data row (header excluded) and the column: a missing time or entity
key column, a missing required request feature column, an empty or unparsable
time, a key that does not convert, an unparsable, empty (when required) or
non-finite request feature.

The point-in-time join and the type checks are DuckDB; the CSV/Parquet
streaming is pyarrow. The chunk loop is hand-written because it ties the
two to the model and to the atomic output, which no library does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from loopml.data.inputs import InputFile
from loopml.errors import LoopmlError
from loopml.features.chunks import ChunkFeatures, csv_types, row_time_column
from loopml.features.definitions import feature_columns
from loopml.features.vector import AssembledBatch
from loopml.registry.base import Registry
from loopml.serve.model_input import ModelInput, load_version
from loopml.spec.model import Spec
from loopml.train.artifact import Predictor

Progress = Callable[[str, float], None]

#: Rows scored per chunk by default: ~100 MB of features at most for a wide model.
DEFAULT_CHUNK_ROWS = 100_000
_INPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LoadedModel:
    """One model version ready to score assembled feature batches, as the online service scores them."""

    version: int
    predictor: Predictor
    inputs: ModelInput

    def matrix(self, assembled: AssembledBatch) -> npt.NDArray[np.float64]:
        return self.inputs.matrix(assembled)

    def score(self, assembled: AssembledBatch, where: str = "") -> npt.NDArray[np.float64]:
        """Scores of the batch's rows; raises naming the version (and ``where``) if the model fails or gives NaN."""
        return self.score_matrix(self.inputs.matrix(assembled), where)

    def score_matrix(self, matrix: npt.NDArray[np.float64], where: str = "") -> npt.NDArray[np.float64]:
        """Scores of a model-input matrix (:meth:`matrix`), checked as :meth:`score` checks them."""
        try:
            scores = np.asarray(self.predictor.predict(matrix), dtype=np.float64)
        except LoopmlError:
            raise
        except Exception as exc:
            raise LoopmlError(f"model version {self.version} failed{where}: {type(exc).__name__}: {exc}") from None
        if scores.shape != (matrix.shape[0],) or not np.all(np.isfinite(scores)):
            raise LoopmlError(f"model version {self.version} returned a non-finite score{where}")
        return scores


def load_model(
    spec: Spec, registry: Registry, columns: list[str], version: int | None = None, alias: str | None = None
) -> LoadedModel:
    """Model ``version``, or the one ``alias`` (default ``rollout.alias``) points at, over assembled ``columns``.

    Same loading as :meth:`loopml.serve.service.PredictionService.reload`: the
    predictor (hash-checked by the registry) and the encodings fitted when the
    version was trained.
    """
    if version is None:
        name = alias or spec.rollout.alias
        record = registry.alias(name)
        if record is None:
            raise LoopmlError(f"registry: alias {name!r} points at no model version; train one or pass --model VERSION")
    else:
        record = registry.get(version)
    predictor, inputs = load_version(spec, registry, record.version, columns)
    return LoadedModel(version=record.version, predictor=predictor, inputs=inputs)


# --------------------------------------------------------------------------- reading the input


def output_format(path: Path) -> str:
    fmt = _INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LoopmlError(f"{path}: cannot tell the output format from the extension {path.suffix!r} (use .parquet or .csv)")
    return fmt


class _Writer:
    """Appends scored chunks to a temporary file; :meth:`commit` renames it to the output."""

    def __init__(self, path: Path, tmp: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = tmp
        self.schema = schema.append(pa.field("score", pa.float64())).append(pa.field("model_version", pa.int64()))
        self.writer: pq.ParquetWriter | pcsv.CSVWriter
        if output_format(path) == "parquet":
            self.writer = pq.ParquetWriter(tmp, self.schema)
        else:
            self.writer = pcsv.CSVWriter(tmp, self.schema)

    def write(self, chunk: pa.RecordBatch, scores: npt.NDArray[np.float64], version: int) -> None:
        arrays = [*chunk.columns, pa.array(scores, pa.float64()), pa.array(np.full(len(scores), version, dtype=np.int64))]
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class BatchResult:
    """A finished batch run; the seconds split the work (reading and writing are the rest of ``seconds``)."""

    input: Path
    output: Path
    rows: int
    chunks: int
    model_version: int
    seconds: float
    feature_seconds: float
    score_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "rows": self.rows,
            "chunks": self.chunks,
            "model_version": self.model_version,
            "seconds": round(self.seconds, 3),
            "feature_seconds": round(self.feature_seconds, 3),
            "score_seconds": round(self.score_seconds, 3),
        }


def predict_file(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    registry: Registry,
    input_path: Path,
    output_path: Path,
    version: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> BatchResult:
    """Score every row of ``input_path`` into ``output_path`` (see the module docstring)."""
    started = time.perf_counter()
    if chunk_rows < 1:
        raise LoopmlError(f"--chunk-rows: must be at least 1, got {chunk_rows}")
    output_format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise LoopmlError(f"{output_path}: the output must not be the input file")
    model = load_model(spec, registry, feature_columns(spec), version)
    source = InputFile(input_path, chunk_rows, csv_types(spec, row_time_column(spec)))
    try:
        return _score_file(spec, snapshot_paths, source, output_path, model, progress, started)
    finally:
        source.close()


def _score_file(
    spec: Spec,
    snapshot_paths: Mapping[str, Path],
    source: InputFile,
    output_path: Path,
    model: LoadedModel,
    progress: Progress | None,
    started: float,
) -> BatchResult:
    input_path = source.path
    output_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".loopml-predict-", dir=output_path.parent))
    tmp = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    rows = n_chunks = 0
    feature_s = score_s = 0.0
    label = f"scoring {input_path.name}"
    try:
        features = ChunkFeatures(spec, snapshot_paths, input_path, source.schema, scratch)
        try:
            writer = _Writer(output_path, tmp, source.schema)
            try:
                if progress is not None:
                    progress(label, 0.0)
                for chunk, fraction in source:
                    t0 = time.perf_counter()
                    assembled = features.assemble(chunk, rows)
                    t1 = time.perf_counter()
                    scores = model.score(assembled, f" on rows {rows + 1:,}-{rows + chunk.num_rows:,} of {input_path}")
                    score_s += time.perf_counter() - t1
                    feature_s += t1 - t0
                    writer.write(chunk, scores, model.version)
                    rows += chunk.num_rows
                    n_chunks += 1
                    if progress is not None:
                        progress(label, fraction)
            finally:
                writer.close()
        finally:
            features.close()
        os.replace(tmp, output_path)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return BatchResult(
        input=input_path,
        output=output_path,
        rows=rows,
        chunks=n_chunks,
        model_version=model.version,
        seconds=time.perf_counter() - started,
        feature_seconds=feature_s,
        score_seconds=score_s,
    )
