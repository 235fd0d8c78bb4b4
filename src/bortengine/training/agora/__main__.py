"""`python -m bortengine.training.agora RUN_DIR...`: the summary of Agora runs over seeds (report.main)."""
import sys

from bortengine.training.agora.report import main

sys.exit(main())
