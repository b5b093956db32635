"""``python -m tvm_mpq.cli``."""

import sys

from tvm_mpq.cli.main import main

sys.exit(main())
