"""Keys typed at once act in the order typed. Textual hands a key to the focused widget's queue, while a
binding runs as soon as its key reaches the app: a binding that moves the focus, or acts on what a
widget shows, first waits for that widget to handle the keys already queued for it."""

from __future__ import annotations

import asyncio
import contextlib

from textual.widget import Widget

DRAIN_S = 1.0  # the longest a key waits for a widget to handle the keys before it


async def after_queued(widget: Widget) -> None:
    """Return once `widget` has handled the messages in its queue now (at most DRAIN_S later)."""
    handled = asyncio.Event()
    if widget.call_later(handled.set):  # behind what is already in the widget's queue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handled.wait(), DRAIN_S)
