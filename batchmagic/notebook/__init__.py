"""The notebook side: what the user sees and types, over the plain API of :mod:`batchmagic.api`.

``magics.py`` (flags and traits in, errors out, no logic), ``widget.py`` (the live panel, or its text
form), ``record.py`` (the static record that takes the panel's place when a run ends).
"""
