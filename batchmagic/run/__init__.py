"""A submitted cell, from launch to results: the handle, its poll loop, its collection.

``run.py`` (the :class:`~batchmagic.run.run.Run`), ``monitor.py`` (poll a backend, tail the logs),
``state.py`` (phases and the snapshot the panel draws), ``cost.py`` (a run's cost and budget),
``sweep.py`` (grids and their results table), ``ipynb.py`` (the run's record as a notebook),
``ledger.py`` (every run this machine started).
"""
