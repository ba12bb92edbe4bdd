"""Unix listening sockets: clear a stale socket file left by a previous run, never a live one."""
from __future__ import annotations

import os
import socket
import stat


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(17, f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: stale
    else:
        raise OSError(98, f"{path} is in use by another server")
    finally:
        s.close()
