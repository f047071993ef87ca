"""The `surgery` command line. Commands are thin: they parse flags, call the library, print.

Each command is a module of this package; the layers above (`trainers`, `evals`, `tui`) add theirs
through the `surgery.commands` entry point group, so this package never imports them. Commands are
loaded only when named, which keeps `surgery --help` fast.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

import click

from surgery import __version__
from surgery.cli.common import parse_size

__all__ = ["main", "parse_size"]

# command name -> "module:attribute"
COMMANDS = {
    "merge": "surgery.cli.merge:merge",
    "inspect": "surgery.cli.inspect:inspect",
    "demo": "surgery.cli.demo:demo",
    "fold": "surgery.cli.fold:fold",
    "extract-lora": "surgery.cli.extract_lora:extract_lora",
    "diff": "surgery.cli.diff:diff",
    "convert": "surgery.cli.convert:convert",
    "slice": "surgery.cli.slice:slice_",
    "rename": "surgery.cli.rename:rename",
    "merge-adapters": "surgery.cli.merge_adapters:merge_adapters",
    "import-gguf": "surgery.cli.import_gguf:import_gguf",
    "moe": "surgery.cli.moe:moe",
    "tokensurgeon": "surgery.cli.tokensurgeon:tokensurgeon",
}


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="surgery.commands")}


class LazyGroup(click.Group):
    """A group whose commands are imported when used, from COMMANDS and the entry points."""

    def _table(self) -> dict[str, str]:
        return {**_plugins(), **COMMANDS}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._table())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self._table().get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(import_module(module), attribute)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="surgery")
def main() -> None:
    """Merge and operate on open-weight causal LM checkpoints."""


if __name__ == "__main__":
    main()
