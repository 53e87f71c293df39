"""``BatchedNEB``: ASE's NEB with all moving images in one model call per step.

A module of its own, imported only when a batched band is built, so that importing
``ase_nemp`` does not import ``ase.mep``; the class lives at module level (it can be
pickled by reference, subclassed by name and found by documentation tools).
"""

from __future__ import annotations

import numpy as np
from ase.mep import NEB

from .calculator import NEMPCalculator
from .neb import _same_potential

__all__ = ["BatchedNEB"]


class BatchedNEB(NEB):
    """ASE's ``NEB`` whose moving images are evaluated together: one model call per
    band step instead of one per image.

    Parameters
    ----------
    images : list of ase.Atoms
        The band, end points included. The moving images get calculators that share
        ``calculator``'s model (:meth:`NEMPCalculator.sibling`); the end points keep
        theirs (they are evaluated once, as by ``NEB``), get one where they have none,
        and are refused where theirs is another model's (the band would mix two
        potentials).
    calculator : NEMPCalculator
    max_atoms : int
        Atoms per model call at most (see :meth:`NEMPCalculator.calculate_batch`).
    **kwargs
        ``NEB``'s own: ``k``, ``climb``, ``method``, ``remove_rotation_and_translation``...

    Everything else is ASE's: optimizers (``FIRE``, ``BFGS``, ``NEBOptimizer``),
    ``interpolate`` (IDPP), climbing image, tangents and ``NEBTools`` see an ordinary
    band whose images hold current results. The band equals that of ``NEB`` with one
    calculator per image, to round-off.
    """

    def __init__(self, images, calculator, max_atoms: int = 4096, **kwargs) -> None:
        if not isinstance(calculator, NEMPCalculator):
            raise TypeError(f"BatchedNEB needs an NEMPCalculator, not {type(calculator).__name__}")
        if kwargs.get("parallel"):
            raise ValueError("BatchedNEB evaluates the images in one call; it does not take parallel=True")
        k = kwargs.get("k", 0.1)
        if not all(np.isfinite(np.atleast_1d(k))) or not all(np.atleast_1d(k) > 0):
            raise ValueError(f"the spring constant k must be positive and finite (eV/Å^2), got {k!r}")
        for name, end in (("initial", images[0]), ("final", images[-1])):
            if end.calc is None:  # evaluated once, as by NEB, but by this band's model
                end.calc = calculator.sibling()
            elif not _same_potential(calculator, end.calc):
                raise ValueError(
                    f"the {name} image's calculator is not this band's model ({type(end.calc).__name__}); the "
                    "band's energies would mix two potentials. Give the end points calculator.sibling() or no "
                    "calculator (BatchedNEB then gives them one)")
        super().__init__(images, **kwargs)
        self.calculator, self.max_atoms = calculator, max_atoms
        for image in self.images[1:-1]:
            calculator._sibling_for(image)

    def get_forces(self):
        # only images that hold this calculator's siblings: ASE's IDPP interpolation
        # optimises the band with calculators of its own, swapped in for the while
        mine = [im for im in self.images[1:-1] if self.calculator.shares_model_with(im.calc)]
        self.calculator.calculate_batch(mine, ("energy", "forces"), self.max_atoms)
        return super().get_forces()
