"""The Typer app and command classes every `archivist` command uses: help that names values as users write them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args, get_origin

import typer
from typer.core import TyperArgument, TyperCommand

if TYPE_CHECKING:
    # Typer 0.29 carries its own copy of Click: its Context and HelpFormatter are what these methods receive.
    from typer._click import Context, HelpFormatter

F = TypeVar("F", bound=Callable[..., Any])

#: metavars for options that name none, by their value's type: never a Python type in help
_METAVARS: dict[Any, str] = {int: "N", float: "NUMBER", Path: "PATH"}


def _default_metavar(param: Any) -> str:
    """Return N, NUMBER, PATH or TEXT for an option by the type of its value (of each value, when repeatable)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return _METAVARS.get(annotation, "TEXT")


def _argument_name(argument: TyperArgument) -> str:
    """Return an argument as help shows it: its metavar (or upper-cased name), `...` when it takes several."""
    name = argument.metavar or (argument.name or "").upper()
    return f"{name}..." if argument.nargs != 1 else name


class Command(TyperCommand):
    """A command whose help shows arguments as `PATH...` and option values as `N` or `URL`, never `<list[Path]>`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                continue
            if param.metavar is None and not getattr(param, "is_flag", False):
                param.metavar = _default_metavar(param)

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """Return the usage line's pieces: `[OPTIONS]`, then each argument (`PATH...`, `[RUN]` when optional)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument) and not param.hidden:
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Write the Arguments and Options sections, arguments named without their Python type."""
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class App(typer.Typer):
    """A Typer app (a command group, or the holder of one top-level command) whose commands are `Command`s."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        """Return Typer's command decorator, making a `Command` unless another class is asked for."""
        return super().command(name, cls=cls or Command, **kwargs)
