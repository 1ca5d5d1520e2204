import sys

from robustlab.cli import main
from robustlab.distributed import exit_rank, under_torchrun

code = main()
if under_torchrun():  # a rank leaves without interpreter teardown (see exit_rank)
    exit_rank(code)
sys.exit(code)
