import sys
from pathlib import Path

# The multi-rank helpers in tests/ are imported by name, in this process and in the forked ranks.
sys.path.insert(0, str(Path(__file__).parent))
