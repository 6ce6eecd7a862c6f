import sys

from fusemix.cli import main

sys.exit(main())
