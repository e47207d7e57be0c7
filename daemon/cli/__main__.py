"""`python -m daemon.cli` is `cabinet`."""

from daemon.cli import main

main()
