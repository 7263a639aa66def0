"""The shipped demo weights on a scene they never saw (issue 10).

The weights (``crop2seg_pipeline/data/demo_weights``, made by ``workflows/train-demo-weights.sh``)
were trained on demo scenes of seeds 101-105 and 107-116 (12 to 16, 18, 20, 22, 24, 26, 28 and 30
dates) and validated on seeds 106 and 117 (20 and 17 dates). This scene has another seed and
another date count (21). Its tile, 33UXP, is also the tile of training scene 115 (season 2021/22,
24 dates): a tile only places the scene's grid; the landscape, its fields and the acquisition
dates come from the seed and the season.
"""

from __future__ import annotations

from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.predict import default_demo_weights, predict

#: (seed, tile, year, dates, size): no training or validation scene has this seed or date count.
SCENE = (301, "33UXP", 2021, 21, 320)
#: Measured 0.925 (62 of 67 compared parcels agree); 0.88 leaves room for 3 parcels more to
#: disagree (another platform's float rounding). Earlier demo weights on this scene: 0.925 (5
#: scenes, 120 epochs), 0.731 (30 epochs) and 0.701 (12 epochs), both below it; the single-scene
#: weights (seed 0, 24 dates) 0.075. (Until these weights the scene had 15 dates; a training scene
#: has 15 dates now, so it moved to 21, a count no training or validation scene has.)
THRESHOLD = 0.88


def test_shipped_weights_agree_with_the_parcels_of_an_unseen_scene(tmp_path):
    """The shipped weights on a 320 px, 21-date scene of seed 301 on tile 33UXP, season 2020/21
    (no training scene has this seed or date count): parcel agreement 0.925 measured (62 of 67
    parcels), >= 0.88 asserted; the 30-epoch weights got 0.731 and the single-scene weights 0.075
    here. See the README's generalization table for the larger benchmark scenes."""
    seed, tile, year, dates, size = SCENE
    scene = make_demo_scene(tmp_path / "scene", size=size, n_dates=dates, seed=seed, tile=tile, year=year)
    s = predict(scene.items, default_demo_weights(), tmp_path / "out", parcels=scene.parcels, mapping=scene.mapping,
                progress=lambda m: None)
    assert s.n_dates == dates and s.parcels["n_compared"] >= 30, s.parcels
    assert s.parcels["agreement_share"] >= THRESHOLD, s.parcels
