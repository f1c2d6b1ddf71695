"""DataLake work the Tower does from inside a box: ``python -m overcloud.datalake.boxops OP``
with its arguments (keys among them) as JSON on stdin (see ``overcloud.boxes.entry``).

* ``prepare`` (on the Post): the bucket, and the restore of a preserved DataLake;
* ``round-trip`` (on a cluster box): a real S3 and filer write/read/delete over the overlay;
* ``archive`` (on the Post): copy every object and file into the Construction DataLake.
"""

from __future__ import annotations

import sys
from typing import Any


def _filer_auth(args: dict[str, Any]):
    from overcloud.datalake import clients

    return clients.FilerJwt.of(args["security"]) if args.get("security") else None


def prepare(args: dict[str, Any]) -> dict[str, Any]:
    from overcloud.datalake import clients, seaweed

    client = clients.s3_client(args["s3"], args["access"], args["secret"])
    try:
        clients.ensure_buckets(client, (args["bucket"],), 30)
    except clients.S3Error as exc:
        from overcloud.components.datalake import DataLakeError

        raise DataLakeError(f"create bucket {args['bucket']}: {exc}") from exc
    if args.get("restore_from"):
        src = clients.s3_client(args["cdl_s3"], args["cdl_access"], args["cdl_secret"])
        return seaweed.restore(src, args["restore_from"], client, args["filer"], filer_auth=_filer_auth(args))
    return {}


def round_trip(args: dict[str, Any]) -> dict[str, Any]:
    from overcloud.datalake import clients

    return clients.round_trip_check(args["s3"], args["filer"], (args["access"], args["secret"]), args["bucket"],
                                    filer_auth=_filer_auth(args))


def archive(args: dict[str, Any]) -> dict[str, Any]:
    from overcloud.datalake import clients, seaweed

    src = clients.s3_client(args["s3"], args["access"], args["secret"])
    dst = clients.s3_client(args["cdl_s3"], args["cdl_access"], args["cdl_secret"])
    return seaweed.archive(src, args["filer"], dst, args["overcloud_id"], owner=args["owner"],
                           filer_auth=_filer_auth(args))


OPS = {"prepare": prepare, "round-trip": round_trip, "archive": archive}

if __name__ == "__main__":
    from overcloud.boxes.entry import main

    sys.exit(main(OPS))
