"""``bulk-update demo``: the emulator on a free loopback port and a short session against it."""

from __future__ import annotations

import json

import httpx2

from bulk_update.emulator.process import EmulatorProcess

DEMO_KEY = "sk-demo-not-a-real-key"


def run_demo() -> int:
    with EmulatorProcess("--api-key", DEMO_KEY, "--rpm", "600", "--latency-ms", "20") as emu:
        print(f"emulator at {emu.base_url}")
        headers = {"authorization": f"Bearer {DEMO_KEY}"}
        with httpx2.Client(base_url=emu.base_url, headers=headers, timeout=10) as client:
            created = client.post("/conversations", json={"metadata": {"team": "support"}})
            conversation_id = created.json()["id"]
            print(f"created  {conversation_id}: {created.json()['metadata']}")
            updated = client.post(
                f"/conversations/{conversation_id}", json={"metadata": {"priority": "high"}}
            )
            print(f"updated  (merge) -> {updated.json()['metadata']}")
            bad = client.post(
                f"/conversations/{conversation_id}", json={"metadata": {"k": "x" * 513}}
            )
            print(f"rejected {bad.status_code}: {bad.json()['error']['message']}")
            statuses = [
                client.get(f"/conversations/{conversation_id}").status_code for _ in range(14)
            ]
            print(f"burst of 14 at 600 rpm (10 a second) -> {statuses}")
        print("emulator stats:", json.dumps(emu.stats()))
    return 0
