"""Opening the tables a person hands to a command (click logs, customers, scores), with errors
that name the file and say what is wrong with it, instead of pyarrow's bare "ArrowInvalid:
Parquet file size is 0 bytes"."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class InputFileError(ValueError):
    """An input file that is missing, empty or not what its name says (exit 2)."""


def _check(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(2, f"{what} not found", str(path))
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a {what} file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the {what} is an empty file (0 bytes)")


def parquet_file(path: str | Path, what: str, **kw: Any) -> Any:
    """pyarrow.parquet.ParquetFile, or InputFileError naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = Path(path)
    _check(p, what)
    try:
        return pq.ParquetFile(p, **kw)
    except (pa.ArrowException, OSError) as e:
        raise InputFileError(f"{p}: not a readable Parquet file ({what}): {e}") from None


def read_table(path: str | Path, what: str, columns: list[str] | None = None) -> Any:
    """A whole Parquet (.parquet, .pq) or CSV (.csv) table, or an error naming the file."""
    import pyarrow as pa
    p = Path(path)
    _check(p, what)
    try:
        if p.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq
            return pq.read_table(p, columns=columns)
        if p.suffix == ".csv" or p.name.endswith(".csv.gz"):
            import pyarrow.csv as pcsv
            t = pcsv.read_csv(p)
            return t.select(columns) if columns else t
    except (pa.ArrowException, OSError) as e:
        kind = "Parquet" if p.suffix in (".parquet", ".pq") else "CSV"
        raise InputFileError(f"{p}: not a readable {kind} file ({what}): {e}") from None
    except KeyError as e:
        raise InputFileError(f"{p}: the {what} has no column {e}") from None
    raise InputFileError(f"{p}: a {what} must end in .parquet or .csv")
