"""``python -m clsact`` entry point (guarded: loader workers are spawned and re-import it)."""

from clsact.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
