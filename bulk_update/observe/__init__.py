"""Seeing what a run did: the progress tally (progress.py) and its drawing (draw.py), the
monitor that writes metrics and beats the heartbeat (monitor.py, metrics.py), the summary
(summary.py), history and status (history.py), the report page (report.py), logs (logs.py)."""
