"""Drop-in names of the official packages: change one import, nothing else.

==================================================  ==============================================
official                                            finesam
==================================================  ==============================================
``from segment_anything import ...``                ``from finesam import ...`` (or
                                                    ``finesam.compat.segment_anything``)
``from segment_anything_hq import ...``             ``from finesam.compat.segment_anything_hq import ...``
``segment_anything_hq.build_sam_baseline``          ``finesam.compat.segment_anything_hq``
``.sam_model_registry_baseline``                    ``.sam_model_registry_baseline``
==================================================  ==============================================
"""

from .registry import official_registry

__all__ = ["official_registry"]
