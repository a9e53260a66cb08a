#!/usr/bin/env python
"""Make the running services match conf.ini: `python controller.py --help`."""

import sys

from modelserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
