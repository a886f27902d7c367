"""Regenerate sample_data/conversations.csv and .parquet (deterministic).

Run: .venv/bin/python sample_data/make_samples.py
300 realistic rows plus a handful of invalid ones that show the validation messages.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import polars as pl

HERE = Path(__file__).parent
TIERS = ["free", "plus", "pro", "enterprise"]
REGIONS = ["emea", "amer", "apac"]
STATES = ["open", "pending", "solved", "closed"]
NOTES = [
    'Asked about invoices, resolved by "billing" team',
    "Prefers email, not chat",
    "Escalated twice; see ticket #4411",
    "Café owner — multi-site account",
    "Called from +44 20 7946 0000\nleft voicemail",
    "",
]


def rows() -> list[dict[str, object]]:
    rng = random.Random(7)
    out: list[dict[str, object]] = []
    for _ in range(300):
        out.append(
            {
                "conversation_id": "conv_"
                + "".join(rng.choice("0123456789abcdef") for _ in range(48)),
                "customer_tier": rng.choice(TIERS),
                "region": rng.choice(REGIONS),
                "ticket_status": rng.choice(STATES),
                "account_id": f"{rng.randrange(10**6):07d}",  # leading zeros must survive
                "csat": rng.choice([None, 3.5, 4.0, 4.25, 5.0]),
                "escalated": rng.random() < 0.1,
                "opened_on": dt.date(2026, 1, 1) + dt.timedelta(days=rng.randrange(300)),
                "agent_note": rng.choice(NOTES) or None,
            }
        )
    # Rows that show the validation messages.
    out[10]["conversation_id"] = "conv_12 34"  # a space
    out[20]["conversation_id"] = "conv_../../admin"  # would change the URL path
    out[30]["conversation_id"] = None  # no ID
    out[40]["conversation_id"] = out[5]["conversation_id"]  # duplicate of row 6
    out[50]["agent_note"] = "é" * 513  # one character over the limit (1026 bytes)
    out[60]["agent_note"] = "é" * 512  # exactly at the limit: valid
    for key in ("customer_tier", "region", "ticket_status", "account_id", "csat", "opened_on"):
        out[70][key] = None
    out[70]["escalated"] = None
    out[70]["agent_note"] = None  # no metadata left
    out[80]["conversation_id"] = "  " + str(out[80]["conversation_id"]) + " "  # trimmed: valid
    return out


def main() -> None:
    frame = pl.DataFrame(rows())
    frame.write_parquet(HERE / "conversations.parquet")
    # The CSV holds the same rows as text, the way an export would.
    text = frame.with_columns(
        pl.col("escalated").cast(pl.String).str.to_lowercase(),
        pl.col("csat").map_elements(lambda v: f"{v:.2f}", return_dtype=pl.String),
        pl.col("opened_on").cast(pl.String),
    )
    text.write_csv(HERE / "conversations.csv")


if __name__ == "__main__":
    main()
