import sys

from locpick.cli import main

sys.exit(main())
