"""The Azure Batch backend, deciding apart from doing.

``requests.py`` (the pool, job and task requests, built from plain data), ``status.py`` (where a run
is, decided from what Batch said), ``calls.py`` (every call: retries, errors translated; the
clients), ``named_pools.py`` (named pools: create, read, list, resize, delete), ``backend.py`` (the
facade: :class:`~batchmagic.backends.azure.backend.AzureBackend`). The Azure-only facts beside them:
``poolspec.py`` (a named pool's request and autoscale formula), ``nodeimages.py`` (the node image),
``vmsizes.py`` (the client's one VM-size table), ``prices.py`` and ``prices.json`` (what VMs cost).
"""
