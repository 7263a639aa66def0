"""The Dask layer: task bodies, graph-layer builders and the one task runner.

Nothing here reads top to bottom as a pipeline: the drivers (:mod:`crop2seg_pipeline.build`,
:mod:`crop2seg_pipeline.predict`) do, calling these builders. Task bodies run on workers and
call pure kernels (:mod:`crop2seg_pipeline.kernels`) and the block reader
(:mod:`crop2seg_pipeline.blocks`); builders only plan (small payloads, one shared key per big
literal).
"""
