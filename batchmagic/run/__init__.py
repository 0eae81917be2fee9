"""A submitted cell, from upload to results: the handle, its poll loop, its collection.

``run.py`` (the :class:`~batchmagic.run.run.Run`, the user's handle), ``upload.py`` (what the tasks
read, then their specs), ``driver.py`` (the poll loop: retries, budget, progress), ``monitor.py`` (poll
a backend, tail the logs), ``collect.py`` (outcomes to names, a sweep's results table, the record),
``state.py`` (phases and the snapshot the panel draws), ``cost.py`` (a run's cost and budget),
``sweep.py`` (grids), ``ipynb.py`` (the run's record as a notebook), ``ledger.py`` (every run this
machine started), ``attach.py`` (a run rebuilt from the ledger), ``names.py``, ``ranks.py``,
``upkeep.py``.
"""
