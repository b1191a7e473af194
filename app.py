"""Start the musegen web app: ``python app.py [--checkpoint DIR] [--port 7860] ...``.

Same options as ``musegen app``; see ``python app.py --help``.
"""

import sys

from musegen.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
