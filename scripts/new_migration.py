"""Write the next revision of the analytics schema (`make migration`; docs/schema.md).

    python -m scripts.new_migration                         # the revision the contract file's new columns need
    python -m scripts.new_migration --name "what it does"   # a revision whose SQL you write

It prints the file it wrote into include/storage/migrations/versions/. Review it (write its SQL), commit it: the
next start, or `make migrate`, applies it.
"""

from __future__ import annotations

import argparse
import sys

from include.settings import PROJECT_ROOT
from include.storage.migrations import SchemaError
from include.storage.migrations.authoring import write_contract_revision, write_revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="what the revision does, in a few words (its file name and docstring)")
    args = parser.parse_args(argv)
    try:
        written = write_revision(args.name) if args.name else write_contract_revision()
    except SchemaError as error:
        raise SystemExit(f"[migration] {error}") from None
    if written is None:
        print("[migration] every column of include/contract/contract.yaml has its revision: nothing to write. "
              'A schema change of your own: make migration NAME="what it does"')
        return 0
    shown = written.relative_to(PROJECT_ROOT) if written.is_relative_to(PROJECT_ROOT) else written
    what = "write its SQL" if args.name else "review the SQL written from include/contract/contract.yaml"
    print(f"[migration] wrote {shown}: {what}, commit it; the next start or `make migrate` applies it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
