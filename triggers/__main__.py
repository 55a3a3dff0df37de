import sys

from triggers.main import main

sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "timer"))
