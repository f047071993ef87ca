"""Keys arriving together, as from a paste or a fast typist (tmux send-keys sends them in one write)."""

from __future__ import annotations

import asyncio

from textual import events

NAMES = {".": "full_stop", " ": "space", ",": "comma", "/": "slash"}
CHARACTERS = {"tab": "\t", "full_stop": ".", "space": " ", "comma": ",", "slash": "/", "escape": "\x1b",
              "enter": "\r"}


def typed(text: str) -> list[str]:
    """The key names of typing `text`."""
    return [NAMES.get(c, c) for c in text]


async def burst(pilot, *keys: str) -> None:
    """All the keys handed to the app before it handles the first (Pilot.press waits for the app to idle
    after each key, which would hide keys handled out of order)."""
    for key in keys:
        event = events.Key(key, CHARACTERS.get(key, key if len(key) == 1 else None))
        event.set_sender(pilot.app)
        pilot.app._driver.send_message(event)
    handled = asyncio.Event()
    pilot.app.call_later(handled.set)  # queued behind the keys: set once the app has taken each of them
    await handled.wait()
    await pilot.pause()
