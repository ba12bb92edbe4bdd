import sys
from pathlib import Path

APPS = Path(__file__).resolve().parent / "apps"
sys.path.insert(0, str(Path(__file__).resolve().parent))
