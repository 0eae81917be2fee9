"""The notebook side: what the user sees and types, over the plain API of :mod:`batchmagic.api`.

``magics.py`` (flags and traits in, errors out, no logic; ``traits.py`` the settings as traits),
``widget.py`` (the live panel, or its text form), ``view.py`` (what the panel and the record draw: pure
functions of the run's state), ``pump.py`` (the kernel pump that lets a blocking cell handle the
panel's clicks), ``record.py`` (the static record that takes the panel's place when a run ends).
"""
