import sys

from renderfarm.cli import main

sys.exit(main())
