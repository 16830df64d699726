import sys

from ldrld_kernels.cli import main

sys.exit(main())
