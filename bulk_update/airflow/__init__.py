"""bulk_update in Airflow: ``from bulk_update.airflow import BulkUpdateOperator``.

Installed with the ``airflow`` extra (``pip install 'bulk-update[airflow]'``). Importing
``bulk_update`` never imports Airflow; importing this package does not either, until the
operator is asked for: Airflow imports ``bulk_update.airflow.provider`` (its provider entry
point) while it starts, and an Airflow imported then would be half-imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulk_update.airflow.operator import BulkUpdateOperator, shards

__all__ = ["BulkUpdateOperator", "shards"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bulk_update.airflow import operator

        return getattr(operator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
