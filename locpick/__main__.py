import sys

from locpick.cli.main import main

sys.exit(main())
