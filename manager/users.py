"""Which user each app's workers run as (issue 7 fills this in). None: run as ourselves."""
from __future__ import annotations


class UserPolicy:
    @classmethod
    def for_site(cls, site):
        return None
