"""What ``airflow providers list`` shows of bulk_update: the ``apache_airflow_provider`` entry
point (pyproject.toml) names ``get_provider_info``.

Airflow loads this while it starts, before it is whole: this module imports nothing of Airflow
(nor the operator, which does), only the package's version.
"""

from __future__ import annotations

from typing import Any

from bulk_update._version import __version__

__all__ = ["get_provider_info"]

OPERATOR_MODULE = "bulk_update.airflow.operator"


def get_provider_info() -> dict[str, Any]:
    """The provider's description, as Airflow's ``provider_info.schema.json`` has it."""
    return {
        "package-name": "bulk-update",
        "name": "bulk_update",
        "description": (
            "Bulk-update the metadata of OpenAI conversations from a table (CSV, TSV, JSON "
            "Lines or Parquet): rate-limited, concurrent, retried, resumable (BulkUpdateOperator)."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "bulk_update",
                "external-doc-url": "https://pypi.org/project/bulk-update/",
                "tags": ["software"],
            }
        ],
        "operators": [{"integration-name": "bulk_update", "python-modules": [OPERATOR_MODULE]}],
    }
