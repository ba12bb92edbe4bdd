"""An app that crashes while it boots (for `passenger-lite smoke` and error-page tests)."""
import sys

print("boot_crash: loading settings", file=sys.stderr)
raise RuntimeError("boom at boot: DATABASE_URL is not set")
