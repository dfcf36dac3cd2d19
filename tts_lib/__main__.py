"""python -m tts_lib ...: see tts_lib/cli.py."""

import sys

from tts_lib.cli import main

sys.exit(main())
