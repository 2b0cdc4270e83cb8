import sys

from dualbladed.main import main

sys.exit(main())
