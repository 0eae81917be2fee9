import sys

from batchmagic.runner.main import main

sys.exit(main())
