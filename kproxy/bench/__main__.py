import sys

from kproxy.bench.run import main

sys.exit(main())
