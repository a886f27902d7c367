"""Knowing the server before writing: read a conversation and judge the row against it
(readfirst.py, check.py) for --backup, revert and validate --check-server; a revert's plan
(revert.py)."""
