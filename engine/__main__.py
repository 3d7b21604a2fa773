import sys

from engine.cli import main

if __name__ == "__main__":  # not when a helper process imports it
    sys.exit(main())
