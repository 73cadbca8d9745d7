"""`python -m kproxy.cli`: the `kproxy` command (tests and the bench run it so)."""
from kproxy.cli import main

main()
