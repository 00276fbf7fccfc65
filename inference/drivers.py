"""Call-driver report: per driver tonight, its volume against the training period's, the share of its customers flagged, their mean risk and mood, and which drivers grew."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from carelens.models.conversation_features import DRIVER
from carelens.models.drivers import DriverModel
from carelens.models.satisfaction import INFERRED_CSAT

#: A driver grew when its share of tonight's conversations is at least this many times its training share...
GROWTH_RATIO = 1.5
#: ...and the rise is beyond chance: this many binomial standard errors of the training share at tonight's volume.
GROWTH_Z = 3.0


def grew(share: float, trained: float, conversations: int) -> bool:
    """Whether a driver's share tonight rose past GROWTH_RATIO times its training share by more than GROWTH_Z
    standard errors (a new driver, unseen at training, grows whenever it appears)."""
    if trained <= 0:
        return share > 0
    error = math.sqrt(trained * (1 - trained) / max(conversations, 1))
    return share >= GROWTH_RATIO * trained and (share - trained) > GROWTH_Z * error


def driver_report(contacts: pd.DataFrame, flagged_customers: Iterable[str] = (),
                  drivers: Optional[DriverModel] = None) -> pd.DataFrame:
    """One row per driver of tonight's contacts (per-contact predictions with DRIVER), largest first: contacts, share
    of the night's conversations and of the training period's (`drivers`), whether it grew (`grew`), the share of its
    customers flagged, their mean risk (the larger of churn and retaliation), mean mood and inferred satisfaction (when
    predicted); empty without drivers."""
    present = contacts[DRIVER].notna().to_numpy() if DRIVER in contacts.columns else np.zeros(len(contacts), bool)
    # Checked before the rows are selected: without a drivers model no contact has one, and selecting none of a
    # request's contacts still copied every column.
    if not present.any():
        return pd.DataFrame(columns=[DRIVER, "contacts", "share"])
    named = contacts[present]
    groups = named.groupby(DRIVER)
    flagged = named["customer_id"].isin(pd.Index(flagged_customers)).astype(float)
    report = pd.DataFrame({"contacts": groups.size(), "share": groups.size() / len(named),
                           "flagged_share": flagged.groupby(named[DRIVER]).mean(),
                           "mean_risk": np.maximum(named["churn_risk"], named["retaliation_risk"]).groupby(
                               named[DRIVER]).mean()})
    for column, name in (("customer_sentiment_mean", "sentiment"), (INFERRED_CSAT, INFERRED_CSAT)):
        if column in named.columns and named[column].notna().any():
            report[name] = groups[column].mean()
    if drivers is not None:
        trained = dict(zip(drivers.names, drivers.training_share))
        report["training_share"] = [trained.get(name, 0.0) for name in report.index]
        report["grew"] = [grew(share, trained.get(name, 0.0), len(named))
                          for name, share in zip(report.index, report["share"])]
    return report.sort_values("contacts", ascending=False, kind="stable").rename_axis(DRIVER).reset_index()


