"""Help screens in the words of a CLI user, not of Python's type hints.

Typer 0.29 labels every parameter with its annotation: `--version <bool>`, `IMAGE <list[str]>`,
`--threads <int range> [x>=1]`, and a usage line `{IMAGE...}...`. The command and group classes
here relabel each parameter once: flags get no label, values a metavar (`N`, `TEXT`, `DIR`,
`a|b`), variadic arguments `IMAGE...` / `[IMAGE...]`. Validation (ranges included) is unchanged.
"""

from __future__ import annotations

from typer.core import TyperArgument, TyperGroup

_TYPE_LABELS = {
    "int": "N",
    "int range": "N",
    "float": "NUM",
    "float range": "NUM",
    "str": "TEXT",
    "path": "PATH",
    "dir": "DIR",
    "file": "FILE",
    "bool": "",
}


def _label(param, ctx) -> str:
    """A metavar for an option's value: the declared one, else one from its type."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return param.metavar
    typed = getattr(type(param), "display_type", None)
    raw = typed(param, ctx).strip("<>") if typed else "value"
    if raw.startswith("list[") and raw.endswith("]"):
        raw = raw[5:-1]
    return _TYPE_LABELS.get(raw, raw if "|" in raw else raw.upper())


def _tidy(param) -> None:
    if getattr(param, "_smolvlm_tidy", False):
        return
    param._smolvlm_tidy = True
    param._get_number_range_help_str = lambda: None  # the range is enforced, not advertised
    if isinstance(param, TyperArgument):
        name = param.metavar or param.name.upper()
        many = "..." if param.nargs != 1 and "..." not in name else ""
        param.display_type_rich = lambda ctx: ""
        param._rich_display_name = lambda: name + many
        param._usage_display_name = lambda: f"{name}{many}" if param.required else f"[{name}{many}]"
    else:
        param.display_type_rich = lambda ctx: _label(param, ctx) or None


class Group(TyperGroup):
    """The root group: relabels its own parameters and those of every subcommand it hands out."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            _tidy(param)
        return params

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            for param in command.get_params(ctx):  # the help option included
                _tidy(param)
        return command
