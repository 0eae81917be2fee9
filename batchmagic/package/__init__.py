"""What the cell needs, made shippable: cell text + namespace -> a bundle, and an image to run it in.

``analysis.py`` (the names a cell reads and binds) -> ``capture.py`` (the values, pickled) ->
``bundle.py`` (the zip, its manifest, its hash); ``inputs.py`` (``--input`` / ``--output``);
``environment.py`` and ``image/`` (the training image: spec, tag, build, push, guard).
"""
