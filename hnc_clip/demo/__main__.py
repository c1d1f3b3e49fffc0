import sys

from .run import cli

if __name__ == "__main__":  # also imported (as __mp_main__) by the demo's spawned training processes
    sys.exit(cli())
