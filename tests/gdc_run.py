"""Run Exosite's `gdc` unmodified, resolving *.localhost to loopback as curl does.

The machine's resolver may not know `<connector-id>.localhost`; this wrapper gives the client
its own resolver and nothing else: `python tests/gdc_run.py <gdc arguments>`.
"""

import socket
import sys

_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _resolve

if __name__ == "__main__":
    from murano_client.gdc import main

    sys.argv = ["gdc", *sys.argv[1:]]
    main()
