import sys

from ldrld_kernels.tools.cli import main

sys.exit(main())
