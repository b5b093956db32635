"""``python -m tvm_mpq.cli``."""

import sys

from tvm_mpq.cli.app import main

sys.exit(main())
