import sys

from pyfc.cli import main

sys.exit(main())
