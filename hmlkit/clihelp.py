"""Command help that names each argument as it is typed, for ``hml`` and ``hml policy`` alike.

typer 0.29 writes a required argument as ``{JOB}`` in the usage line and ``JOB <str>`` in the
argument list: braces and a Python type name, neither of which a user types. Commands built
with ``cls=Command`` show ``JOB`` (``[JOB]`` when optional) and the argument's own help. Only
click's own interface is used, so the help reads the same under any typer release.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand


def _name(param: TyperArgument) -> str:
    return param.metavar or (param.name or "").upper()


def _usage(param: TyperArgument) -> str:
    name = _name(param) + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


class Command(TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            pieces += [_usage(param)] if isinstance(param, TyperArgument) else param.get_usage_pieces(ctx)
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                described = (param.help or "") if param.required else record[1]  # not "[required]"
                sections["Arguments"].append((_name(param), described))
            else:
                sections["Options"].append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
