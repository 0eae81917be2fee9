"""A matplotlib backend for the runner: ``plt.show()`` and ``fig.show()`` display figures as image/png.

Selected with ``MPLBACKEND=module://batchmagic.runner.mpl_backend`` before the cell runs. Figures are
drawn with Agg; showing one hands it to the cell's :class:`~batchmagic.runner.display.Capture` and
closes it, as IPython's inline backend does. Outside a cell it behaves as Agg (showing does nothing).
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

from batchmagic.runner.display import active

__all__ = ["FigureCanvas", "FigureManager", "show"]


class FigureManager(FigureManagerBase):
    def show(self) -> None:  # fig.show()
        capture = active()
        if capture is not None:
            capture.display(self.canvas.figure)


class FigureCanvas(FigureCanvasAgg):
    manager_class = FigureManager


def show(*args: Any, block: bool | None = None, **kwargs: Any) -> None:
    """``plt.show()``: display every open figure, then close them."""
    capture = active()
    if capture is not None:
        capture.show_figures()
