#!/usr/bin/env python3
"""The S3 test server: moto's, with conditional writes made atomic as on S3.

moto checks `If-Match` / `If-None-Match` and then writes, in separate steps on a threaded
server: two racing conditional PUTs on one key can both pass the check and both succeed,
which S3 never allows (the lease race test caught two winners in one round of fifty). Every
object write and delete here holds one lock, so a condition is checked and acted on as one
step. Arguments are moto_server's (`-H HOST -p PORT`).
"""

import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_WRITE = threading.Lock()


def _atomic(method):
    def wrapped(self, *args, **kwargs):
        with _WRITE:
            return method(self, *args, **kwargs)

    wrapped.__name__ = method.__name__
    return wrapped


for _name in ("put_object", "delete_object", "complete_multipart_upload", "copy_object"):
    if hasattr(S3Response, _name):
        setattr(S3Response, _name, _atomic(getattr(S3Response, _name)))

if __name__ == "__main__":
    main(sys.argv[1:])
