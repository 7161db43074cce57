"""`python -m robustag` is the `robustag` command."""

from robustag.cli import main

main()
