# Hello-world WSGI app of the bench: passenger_wsgi.py for both passenger-lite and Passenger.
# Copied from /work/shared/anchors/apps/wsgi/passenger_wsgi.py. GET /1m returns a 1 MiB body.
HELLO = b"Hello, World!\n"
BIG = b"x" * (1024 * 1024)


def application(environ, start_response):
    body = BIG if environ.get("PATH_INFO") == "/1m" else HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
