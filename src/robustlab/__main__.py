import os
import sys

from robustlab.cli import main

code = main()
# Under torchrun (RANK and WORLD_SIZE set, as distributed.under_torchrun checks) a rank leaves
# without interpreter teardown (see exit_rank). Imported only now: main() must set its
# environment (OMP_WAIT_POLICY, the tcmalloc restart) before anything imports torch.
if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
    from robustlab.distributed import exit_rank

    exit_rank(code)
sys.exit(code)
