"""The Azure Batch backend and the Azure-only facts it needs.

``backend.py`` (:class:`~batchmagic.backends.azure.backend.AzureBackend`), ``poolspec.py`` (a named
pool's request and autoscale formula), ``nodeimages.py`` (the node image), ``vmsizes.py`` (VM sizes),
``prices.py`` and ``prices.json`` (what VMs cost).
"""
