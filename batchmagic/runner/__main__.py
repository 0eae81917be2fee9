import sys

from batchmagic.runner.node import fork_on_node

# A sweep task on a node whose warm worker serves its job is forked there (before anything heavy is
# imported here); anywhere else the runner runs in this process.
code = fork_on_node(sys.argv[1:])
if code is None:
    from batchmagic.runner.main import main

    code = main()
sys.exit(code)
