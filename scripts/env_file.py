"""The checkout's `.env` file, read by `make run`, `make once` and `make env` the way Docker Compose and the
Astro CLI read theirs, so one file configures every way of starting the pipeline.

The syntax is python-dotenv's (already installed with Airflow, and essentially the rules Compose follows):
``NAME=value``, ``export NAME=value``, ``#`` comments, values in single or double quotes (quote a value
with spaces), ``${OTHER}`` expanded. A variable already in the environment wins over the file, so
``POSTGRES_PORT=6543 make once`` does what it says whatever `.env` holds.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from dotenv.main import resolve_variables
from dotenv.parser import parse_stream

from include.settings import PROJECT_ROOT


class EnvFileError(ValueError):
    """A line of the .env file is not ``NAME=value``; the message names the file and the line."""


def read_env_file(path: Path) -> dict[str, str]:
    """NAME -> value of every assignment in ``path``.

    python-dotenv itself only logs a warning for a line it cannot parse and goes on without it: a setting
    the operator believes in force would silently be the default, so such a line stops the start instead.
    """
    pairs = []
    with open(path, encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            text = binding.original.string
            # the binding starts after the previous one, so blank lines before the statement are part of it
            line = binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")
            statement = text.strip().splitlines()[0] if text.strip() else ""
            if binding.error:
                raise EnvFileError(
                    f"{path}, line {line}: cannot read `{statement}`: write NAME=value, and quote a value that "
                    "holds spaces, quotes or # (NAME='a value')"
                )
            if binding.key is None:
                continue  # a comment or blank lines
            if binding.value is None:
                # python-dotenv accepts a bare NAME (no value); here it is far more likely a typo than intended
                raise EnvFileError(f"{path}, line {line}: `{statement}` has no `=`: write {binding.key}=value")
            pairs.append((binding.key, binding.value))
    # ${NAME} is resolved against the environment first, then the lines above: the same precedence as below
    return dict(resolve_variables(pairs, override=False))


def load_env_file(path: Path | str = ".env", environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put the variables of the .env file ``path`` (relative: to the checkout) that ``environ`` (default
    ``os.environ``) lacks into it, and return them. A missing file is no error: `.env` is optional.

    An empty value is left out: for every setting, empty means "the default", and some defaults depend on the
    command (`make run` expects a feed, `make once` does not), which an empty string in the environment would
    hide from code that asks ``environ.get(NAME, default)``.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        return {}
    loaded = {name: value for name, value in read_env_file(path).items() if value and name not in environ}
    environ.update(loaded)
    return loaded
