"""A small synthetic person re-identification set whose identities differ in several local clues.

Real ReID data sets are large downloads; this module draws a deterministic stand-in with numpy and
``PIL.ImageDraw`` and writes it in the Market-1501 layout, so the whole pipeline (data set parsing,
PK sampling, training, CMC/mAP evaluation) runs anywhere in seconds.

What makes it useful for PMM: every identity is a combination of six *regions*, each carrying
one or a few attributes drawn from small palettes:

=======  ==========================================  ============================================
region   attributes                                  where it appears
=======  ==========================================  ============================================
head     hair colour, hair style                     top ~20 % of the person
skin     skin tone                                   face, hands, shins below shorts
torso    upper-body colour, logo shape, logo colour  shoulders to waist, sleeves
legs     lower-body colour, trousers or shorts       waist to ankles
feet     shoe colour                                 bottom ~6 %
bag      none / hand bag / shoulder bag, bag colour  at the hand or on the hip, strap on the torso
=======  ==========================================  ============================================

:func:`make_identities` chooses the combinations so that (1) every region value, and so every
single attribute value, is worn by at least two identities: no single region identifies anyone;
(2) any two identities differ in at least two regions: hiding one region (which is what PMM's
feature mix does to the most salient blocks) still leaves every pair distinguishable; (3)
identities come in look-alike pairs that differ in exactly two regions, often small ones, so
the most salient region alone does not separate them. A network trained on this set therefore
has to combine several small clues.

Cameras differ in illumination (gain and colour cast), background (colour, floor, texture,
clutter), blur, noise level and where the person stands in the box (shift, scale). Each image adds
its own pose (arm swing, stride, which side the bag hangs on), placement jitter and sensor noise.

Example:
    >>> from pmm_model.data.synthetic import ensure_synthetic
    >>> root = ensure_synthetic("/tmp/pmm-data")  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['bounding_box_test', 'bounding_box_train', 'params.json', 'query']

Modules: :mod:`~pmm_model.data.synthetic.identities` (palettes, regions, the identity
combinatorics), :mod:`~pmm_model.data.synthetic.cameras`, :mod:`~pmm_model.data.synthetic.render`
(one image of a person), :mod:`~pmm_model.data.synthetic.cache` (the set on disk) and
:mod:`~pmm_model.data.synthetic.streams` (the random streams every output is drawn from).
"""

from pmm_model.data.synthetic.cache import default_root, ensure_synthetic
from pmm_model.data.synthetic.cameras import CameraParams, make_cameras
from pmm_model.data.synthetic.identities import REGIONS, IdentityAttributes, make_identities
from pmm_model.data.synthetic.render import render_person

__all__ = [
    "REGIONS",
    "CameraParams",
    "IdentityAttributes",
    "default_root",
    "ensure_synthetic",
    "make_cameras",
    "make_identities",
    "render_person",
]
