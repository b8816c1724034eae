import sys

from mlspecqd.cli import main

sys.exit(main())
