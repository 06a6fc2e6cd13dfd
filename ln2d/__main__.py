import sys

from ln2d.cli import main

sys.exit(main())
