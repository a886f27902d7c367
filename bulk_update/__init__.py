"""bulk_update: bulk-update the metadata of OpenAI conversations from a CSV or Parquet table."""

__version__ = "0.1.0"

__all__ = ["__version__"]
