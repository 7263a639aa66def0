"""The shipped demo weights on a scene they never saw (issue 10).

The weights (``crop2seg_pipeline/data/demo_weights``, made by ``workflows/train-demo-weights.sh``)
were trained on demo scenes of seeds 101-105 (tiles 33UVS/33UVR/33UWR/33UYR/33UUQ, 12, 14, 18,
24 and 30 dates), validated on seed 106 (33UWQ, 20 dates). This scene has another seed, tile,
season and date count.
"""

from __future__ import annotations

from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.predict import default_demo_weights, predict

#: (seed, tile, year, dates, size): none of them used in training or validation.
SCENE = (301, "33UXP", 2021, 15, 320)
#: Measured 0.791 (53 of 67 compared parcels agree); 0.74 leaves room for 3 parcels more to
#: disagree (another platform's float rounding). The same recipe stopped earlier: 0.731 after 30
#: epochs, 0.687 after 12 (both fail here); the weights shipped before (one scene, seed 0, 24
#: dates): 0.104 (7 of 67) on this scene.
THRESHOLD = 0.74


def test_shipped_weights_agree_with_the_parcels_of_an_unseen_scene(tmp_path):
    """The shipped weights on a 320 px, 15-date scene of seed 301 on tile 33UXP, season 2020/21
    (none of them in training): parcel agreement 0.791 measured (53 of 67 parcels), >= 0.74 asserted;
    the previous single-scene weights got 0.104 here. This small scene (67 parcels) scores below
    the larger benchmark scenes of 12 or more dates (88-91 %): see the README's generalization
    table."""
    seed, tile, year, dates, size = SCENE
    scene = make_demo_scene(tmp_path / "scene", size=size, n_dates=dates, seed=seed, tile=tile, year=year)
    s = predict(scene.items, default_demo_weights(), tmp_path / "out", parcels=scene.parcels, mapping=scene.mapping,
                progress=lambda m: None)
    assert s.n_dates == dates and s.parcels["n_compared"] >= 30, s.parcels
    assert s.parcels["agreement_share"] >= THRESHOLD, s.parcels
