"""Help screens in the words of a CLI user, not of Python's type hints.

Typer labels every parameter with its type: `--threads <int range> [x>=1]`, `IMAGE <str>`, and a
usage line `{IMAGE...}`. The group class here relabels each parameter once, before any help
or usage is drawn: flags get no label, values a metavar (`N`, `TEXT`, `DIR`, `a|b`), variadic
arguments `IMAGE...` / `[IMAGE...]`. Validation is unchanged: a range is still enforced, and
its error still names it ("0 is not in the range x>=1"); it is only not advertised.
"""

from __future__ import annotations

from typer._click import types
from typer.core import TyperArgument, TyperGroup

_TYPE_LABELS = {
    "int": "N",
    "float": "NUM",
    "str": "TEXT",
    "path": "PATH",
    "directory": "DIR",
    "file": "FILE",
    "integer": "N",
    "number": "NUM",
}
_RANGE_NAMES = {"int range": "integer", "float range": "number"}


class _Unlabelled(types.ParamType):
    """A parameter type that validates as `inner` does (same values, same errors) and shows
    nothing of itself in help: no `<type>` column, no range."""

    def __init__(self, inner: types.ParamType):
        self.inner = inner
        self.name = inner.name
        self.envvar_list_splitter = inner.envvar_list_splitter

    def convert(self, value, param, ctx):
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param, ctx) -> str:
        return ""

    def shell_complete(self, ctx, param, incomplete):
        return self.inner.shell_complete(ctx, param, incomplete)

    def to_info_dict(self):
        return self.inner.to_info_dict()


def _label(param, ctx) -> str:
    """A metavar for an option's value: the declared one, else one from its type."""
    if param.metavar:
        return param.metavar
    inner = param.type.inner if isinstance(param.type, _Unlabelled) else param.type
    raw = (inner.get_metavar(param=param, ctx=ctx) or inner.name).strip("<>[]")
    return _TYPE_LABELS.get(raw, raw if "|" in raw else raw.upper())


def _tidy(param) -> None:
    if getattr(param, "_smolvlm_tidy", False):
        return
    param._smolvlm_tidy = True
    if isinstance(param, TyperArgument):
        name = param.metavar or param.name.upper()
        many = "..." if param.nargs != 1 and "..." not in name else ""
        param.metavar = name + many
        param.type = _Unlabelled(param.type)
        param.make_metavar = lambda ctx, usage=False: (
            param.metavar if not usage or param.required else f"[{param.metavar}]"
        )
    elif not (param.is_flag or param.count):
        if isinstance(param.type, types._NumberRangeBase):
            # its own instance: the name is what "'abc' is not a valid ..." calls it
            param.type.name = _RANGE_NAMES.get(param.type.name, param.type.name)
            param.type = _Unlabelled(param.type)
        param.make_metavar = lambda ctx: _label(param, ctx)


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
