"""``python -m zmqagents.cli``: the command line without the launcher (tests and benches use it)."""

from .app import main

if __name__ == "__main__":
    main()
