"""benchmarks/profile.py's table by step: each sample counted once, in the innermost step on
its stack (a step's callee that is a step of its own takes the sample)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.profile import AIOHTTP_REQUEST, read_raw, tables

SITE = "/venv/lib/python3.11/site-packages"
WORKER = "Pipeline._work (/repo/bulk_update/pipeline.py:189)"
SEND = "Sender.send (/repo/bulk_update/send.py:239)"
REQUEST = f"ClientSession._request ({SITE}/aiohttp/client.py:558)"
RECORD = "Journal.record (/repo/bulk_update/store/core.py:961)"
SUBMIT = "SQLiteJournal._submit (/repo/bulk_update/store/sqlite.py:759)"


def test_a_sample_counts_in_the_innermost_step_on_its_stack(tmp_path: Path) -> None:
    raw = tmp_path / "job.raw.txt"
    raw.write_text(
        f"{WORKER};{SEND};{REQUEST};ClientRequest.send ({SITE}/aiohttp/client_reqrep.py:1643) 6\n"
        f"{WORKER};{SEND} 2\n"  # the sender's own code
        f"{WORKER};{RECORD};{SUBMIT} 3\n"
        "<module> (<frozen importlib._bootstrap>:1) 1\n"
        "select (/usr/lib/python3.11/selectors.py:1) 1\n"  # on no step's stack
    )
    profile = read_raw(raw)
    assert profile.samples == 13
    assert profile.steps == {
        AIOHTTP_REQUEST: 6,
        "the sender (Sender.send, _call, _request, _exchange, own)": 2,
        "the journal: a row's record": 3,
        "start-up: imports": 1,
        "elsewhere": 1,
    }
    table = tables(profile, top=5).split("| samples |", 1)[1]
    # Per 100 samples of aiohttp's request: the journal's 3 against its 6.
    assert "|  23.1% |    50 | the journal: a row's record |" in table
