"""The ``clsact`` command line: the only place argparse lives; nothing imports it."""
