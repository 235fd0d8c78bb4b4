"""`python -m bortengine ...`: see bortengine.cli."""
from bortengine.cli import main

raise SystemExit(main())
