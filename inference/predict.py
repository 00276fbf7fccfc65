"""`carelens predict`: score any table a churn or retaliation model was trained on, its own data included."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Union

import typer

from carelens.data.errors import UsageError
from carelens.data.options import RegistryOption
from carelens.data.spreadsheet import write_csv
from carelens.data.terminal import console, user_errors
from carelens.models.names import TABULAR_MODELS

if TYPE_CHECKING:
    import pandas as pd

    from carelens.models.registry import Registry
    from carelens.models.tabular import RiskModel

PathLike = Union[str, Path]
KEYS = ("customer_id", "contact_id")
OUT_SUFFIXES = (".csv", ".parquet", ".pq")

predict_app = typer.Typer(help="Score a table with a published churn or retaliation model.", no_args_is_help=True)


def table_to_score(path: Path) -> pd.DataFrame:
    """The table as read; one holding every interactions-contract column is typed and validated by the contract."""
    from carelens.data.contracts import INTERACTIONS, ContractError, validated
    from carelens.data.readers import header_lines, read_table
    raw = read_table(path)
    if raw.empty:
        raise ContractError(str(path), "the file has no rows to score")
    if set(INTERACTIONS.required) <= set(raw.columns):
        return validated(raw, INTERACTIONS, str(path), header_rows=header_lines(path))
    return raw


def key_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """customer_id and contact_id where the table has them, else each row's number as in the file (header = row 1)."""
    import numpy as np
    import pandas as pd

    from carelens.data.readers import header_lines
    keys = [k for k in KEYS if k in frame.columns]
    if keys:
        return frame[keys].reset_index(drop=True)
    return pd.DataFrame({"row": np.arange(len(frame)) + header_lines(path) + 1})


def predictions(model: RiskModel, frame: pd.DataFrame) -> pd.DataFrame:
    """risk, flagged (risk at or above the model's threshold) and predicted class per row; for more than two
    classes, each class's probability too."""
    import pandas as pd
    proba = model.predict_proba(frame)
    risk = model.risk_from_proba(proba)
    columns = {"risk": risk, "flagged": risk >= model.threshold_, "predicted": model.predict_from_proba(proba)}
    if len(model.classes_) > 2:
        columns.update({f"p_{c}": proba[:, i] for i, c in enumerate(model.classes_)})
    return pd.DataFrame(columns)


def predict_table(registry: Union[Registry, PathLike, None], name: str, data: PathLike,
                  version: str = "latest") -> pd.DataFrame:
    """One row per row of `data` (CSV or Parquet): its keys, then the published model's risk, flag and prediction.

    Any table works that holds the model's feature columns, contract interactions or the user's own table a model was
    trained on with `carelens train <name> --data FILE --target T`; other columns, the target among them, are ignored.
    """
    import pandas as pd

    from carelens.data.contracts import ContractError
    from carelens.models.tabular import load_tabular
    model, metadata = load_tabular(registry, name, version)
    path = Path(data)
    frame = table_to_score(path)
    missing = [f for f in model.feature_names_in_ if f not in frame.columns]
    if missing:
        raise ContractError(str(path), f"no feature column(s) {', '.join(missing)}, which {name} "
                                       f"{metadata['version']} was trained on; found {', '.join(map(str, frame.columns))}")
    return pd.concat([key_columns(frame, path), predictions(model, frame)], axis=1)


def checked_out(out: Path) -> Path:
    """The output path, or UsageError before any work when it is a folder or its suffix names no table format."""
    from carelens.data.paths import output_file
    if output_file(out).suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(f"--out {out}: unknown file type '{out.suffix}', expected one of {', '.join(OUT_SUFFIXES)}")
    return out


def written(table: pd.DataFrame, out: Path) -> Path:
    """`out`, holding the table as CSV or Parquet by its suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        write_csv(table, out)
    else:
        table.to_parquet(out, index=False)
    return out


def predict_command(name: str):
    """The `carelens predict <name>` command for one tabular model."""
    def predict(
        data: Annotated[Path, typer.Option("--data", help="CSV or Parquet table holding the model's feature "
                                                          "columns (contract interactions or your own table).")],
        out: Annotated[Path, typer.Option("--out", help="File to write: .csv or .parquet.")],
        registry: RegistryOption = None,
        version: Annotated[str, typer.Option("--version", help="Model version, e.g. v3, or latest.")] = "latest",
    ) -> None:
        with user_errors():
            out = checked_out(out)
            predicted = predict_table(registry, name, data, version)
            written(predicted, out)
        console.print(f"{len(predicted):,} rows scored with {name}, {int(predicted['flagged'].sum()):,} flagged; "
                      f"wrote {out}", highlight=False, soft_wrap=True)
    predict.__doc__ = (f"Score every row of a table with the published {name} model: keys, risk, flagged and the "
                       f"predicted class.")
    return predict


for _name in TABULAR_MODELS:
    predict_app.command(_name)(predict_command(_name))
