"""batchmagic's version: a leaf module, so that what needs it (the bundle's manifest, the image's tag) need
not import the package, whose root imports the API on first use."""

__version__ = "0.1.0"
