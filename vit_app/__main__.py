import sys

from vit_app.cli import main

sys.exit(main())
