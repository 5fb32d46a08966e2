import sys

from avtta.cli import main

sys.exit(main())
