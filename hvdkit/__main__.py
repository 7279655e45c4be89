import sys

from hvdkit.cli.main import main

sys.exit(main())
