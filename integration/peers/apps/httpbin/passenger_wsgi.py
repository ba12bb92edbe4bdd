# httpbin (the pip package, a Flask app) as a python-wsgi app, for the `requests` suite's run
# through passenger-lite (integration/peers/test_requests_suite.py).
from httpbin import app as application  # noqa: F401
