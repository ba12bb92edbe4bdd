"""Says who its worker runs as (issue 7): ids, groups, the user's environment, its socket."""
import json
import os


def application(environ, start_response):
    data = {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
        "groups": sorted(os.getgroups()), "pid": os.getpid(), "cwd": os.getcwd(),
        "env": {k: os.environ.get(k) for k in ("HOME", "USER", "LOGNAME", "XDG_RUNTIME_DIR",
                                                 "PASSENGER_LITE_SOCKET")},
    }
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
