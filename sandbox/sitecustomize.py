"""Imported by the program's interpreter as it starts (site.main() in worker.py): small compatibility aliases.

Only for the program's own interpreter: the agent runs with -S and never imports it.
"""

import compat

compat.install()
