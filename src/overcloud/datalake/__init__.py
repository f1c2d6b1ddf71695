"""The DataLake: SeaweedFS as an OverCloud's object store and as the Tower's Construction DataLake.

A plain library with no knowledge of boxes, namespaces or the database:

- :mod:`overcloud.datalake.seaweed` -- the ``weed`` binary, argv builders for supervisord,
  S3 identities, readiness waits and the cluster status (re-exports the two below, so
  callers can import everything from there);
- :mod:`overcloud.datalake.clients` -- boto3 and filer (httpx) clients, the round-trip check;
- :mod:`overcloud.datalake.archive` -- archive an OverCloud's DataLake into another
  SeaweedFS and restore it back, every copy checked by MD5.

Every HTTP/S3 call is made in-process (no subprocess) from the calling thread, or from
threads it starts, so a caller that has entered a network namespace talks from inside it.
"""
